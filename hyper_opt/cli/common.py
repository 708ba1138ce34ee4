"""What every command shares: the file arguments, loading both files, and logging."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def setup_logging(level: str = "INFO", *, debug: bool = False, log_file: Path | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, level))
    import optuna  # configures its own logger on import: route it through ours instead

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        for noisy in ("sqlalchemy", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common_arguments(parser: argparse.ArgumentParser, *, model: str = "required") -> None:
    parser.add_argument("hyper", type=Path, help="the hyperparameter YAML (log/slurm/optuna sections)")
    if model == "required":
        parser.add_argument("model", type=Path, help="the model config YAML the parameters patch")
    elif model == "optional":
        parser.add_argument("model", type=Path, nargs="?", help="the model config YAML (optional)")
        # echo-opt's echo-report took the model file as -m/--model: the same file, by flag.
        parser.add_argument("-m", "--model", dest="model_flag", type=Path, metavar="MODEL",
                            help="the model config YAML, as echo-report's -m/--model took it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY:PATH=VALUE",
                        help="override a key of either file (value parsed as YAML), e.g. "
                             "--set optuna:n_trials=50 --set optimizer:lr=0.01; repeatable")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")


def load_from_args(args: argparse.Namespace, *, strict: bool = False):  # type: ignore[no-untyped-def]
    from hyper_opt.loader import load_config

    model = getattr(args, "model", None)
    flag = getattr(args, "model_flag", None)
    if flag is not None and model is not None and Path(flag) != Path(model):
        from hyper_opt.exceptions import ConfigError

        raise ConfigError([f"two model configs given: {model} and -m {flag}; give one"], source="the command line")
    return load_config(args.hyper, flag if flag is not None else model, overrides=args.overrides,
                       strict=strict)
