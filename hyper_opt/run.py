"""``python -m hyper_opt.run HYPER.yml MODEL.yml``: one worker loop (what every job runs)."""

from __future__ import annotations

import sys

from hyper_opt.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
