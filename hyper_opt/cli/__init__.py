"""The command line: ``hyper-opt optimize|run|status|cancel|report|rerun|test`` (and ``python optimize.py``).

:mod:`hyper_opt.cli.main` builds the parser and runs a command; each command is one small module
(:mod:`~hyper_opt.cli.optimize`, :mod:`~hyper_opt.cli.run`, :mod:`~hyper_opt.cli.status`, and
the commands owned by their own packages: ``launch.cancel``, ``report``, ``rerun``,
``metric_learning.evaluate``); :mod:`hyper_opt.cli.common` holds what they share.
"""

from hyper_opt.cli.common import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_common_arguments, load_from_args,
                                  setup_logging)
from hyper_opt.cli.main import build_parser, main

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "add_common_arguments", "build_parser", "load_from_args",
           "main", "setup_logging"]
