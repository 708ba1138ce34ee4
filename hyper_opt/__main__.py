"""``python -m hyper_opt COMMAND ...`` is ``hyper-opt COMMAND ...``."""

from hyper_opt.cli import main

raise SystemExit(main())
