"""``python -m hyper_opt.cli``."""

from hyper_opt.cli.main import main

raise SystemExit(main())
