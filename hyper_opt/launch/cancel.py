"""Placeholder: this command is being written."""

from __future__ import annotations

import argparse

from hyper_opt.cli import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="optional")


def run(args: argparse.Namespace) -> int:
    print(f"hyper-opt {args.command}: not implemented yet")
    return 2
