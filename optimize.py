"""``python optimize.py HYPER.yml MODEL.yml`` is ``hyper-opt optimize HYPER.yml MODEL.yml``."""

from hyper_opt.cli import main

if __name__ == "__main__":
    raise SystemExit(main(default_command="optimize"))
