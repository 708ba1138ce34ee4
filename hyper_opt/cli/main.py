"""The ``hyper-opt`` parser and entry point: each command lives in its own module.

A command module has ``add_arguments(parser)`` and ``run(args) -> int`` and imports nothing heavy
at module level. A :class:`HyperOptError` is printed as one message with exit code 2; ``--debug``
shows its traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from hyper_opt.cli.common import EXIT_USAGE
from hyper_opt.exceptions import HyperOptError

logger = logging.getLogger("hyper_opt")

COMMANDS = (
    ("optimize", "hyper_opt.cli.optimize", "create or continue the study and run its workers"),
    ("run", "hyper_opt.cli.run", "run one worker loop (what each job and local worker runs)"),
    ("status", "hyper_opt.cli.status", "trials by state, best trial and progress of a study"),
    ("cancel", "hyper_opt.launch.cancel", "cancel the study's Slurm or PBS jobs; their running trials are retried"),
    ("report", "hyper_opt.report", "write trials.csv, best.yml, plots and a summary under save_path/report"),
    ("rerun", "hyper_opt.rerun", "run the objective once with one trial's parameters, outside the study"),
    ("test", "hyper_opt.metric_learning.evaluate", "evaluate a metric-learning trial on the held-out test classes"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, a command's module is imported (and its arguments added)
    for that command alone: a worker (``hyper-opt run``) or ``optimize`` does not pay for
    importing the report, plots and metric-learning modules at every start."""
    parser = argparse.ArgumentParser(prog="hyper-opt", description="Hyperparameter searches with optuna, "
                                     "on one machine or as Slurm or PBS jobs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None, *, default_command: str | None = None) -> int:
    """Entry point of ``hyper-opt`` and ``python optimize.py`` (which defaults to ``optimize``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from hyper_opt.config import CWD_ENV

    commands = {"optimize", "run", "status", "cancel", "report", "test", "rerun", "-h", "--help"}
    if default_command and (not argv or argv[0] not in commands):
        argv.insert(0, default_command)
    parser = build_parser(argv[0] if argv and argv[0] in {name for name, _, _ in COMMANDS} else None)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    # Relative paths of the predecessors' files are read from where the search was started:
    # the workers and jobs started from here inherit that directory through the environment.
    set_cwd = CWD_ENV not in os.environ
    if set_cwd:
        os.environ[CWD_ENV] = os.getcwd()
    set_backend = "KERAS_BACKEND" not in os.environ and _keras_needs_torch_backend()
    if set_backend:  # Keras 3 defaults to TensorFlow; without it, run Keras files on torch
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
        return code
    except BrokenPipeError:
        return _reader_went_away()
    except HyperOptError as err:
        if args.debug:
            logger.exception("error")
        print(f"hyper-opt {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"hyper-opt {args.command}: interrupted" + ("; continue the search with the same command and "
              "--reload" if args.command == "optimize" else ""), file=sys.stderr)
        return 130
    finally:
        if set_cwd:
            os.environ.pop(CWD_ENV, None)
        if set_backend:
            os.environ.pop("KERAS_BACKEND", None)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a C tool killed by the closed pipe reports


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (``hyper-opt status ... | head -3``): stop quietly, with
    the exit status a shell expects of a writer whose reader left; output still buffered goes to
    /dev/null so that the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _keras_needs_torch_backend() -> bool:
    """True when Keras would look for TensorFlow, which is not installed, while torch is."""
    import importlib.util

    return importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("torch") is not None
