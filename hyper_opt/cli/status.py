"""``hyper-opt status``: trials by state, best trial and progress of a study."""

from __future__ import annotations

import argparse
import time

from hyper_opt.cli.common import EXIT_OK, add_common_arguments, load_from_args, setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, model="none")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    from hyper_opt.status import print_status

    config, _ = load_from_args(args)
    setup_logging("WARNING", debug=args.debug)
    while True:
        print_status(config)
        if not args.watch:
            return EXIT_OK
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK
        print()
