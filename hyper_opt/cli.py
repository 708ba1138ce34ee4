"""The command line: ``hyper-opt optimize|run|status|...`` (and ``python optimize.py``).

Each subcommand is a small function: parse, load the config (which validates everything),
then hand over to the module that owns the work. A :class:`HyperOptError` is printed as one
message with exit code 2; ``--debug`` shows its traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hyper_opt.exceptions import HyperOptError

logger = logging.getLogger("hyper_opt")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SCHEDULERS = ("slurm", "pbs")
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyper-opt", description="Hyperparameter searches with optuna, "
                                     "on one machine or as Slurm or PBS jobs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("optimize", help="create or continue the study and run its workers")
    add_common_arguments(p)
    p.add_argument("--local", action="store_true", help="run on this machine even if a slurm or pbs section exists")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="which section submits when the file has both slurm and pbs (default: the one "
                        "whose submit command, sbatch or qsub, is on PATH)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (local:workers)")
    p.add_argument("--reload", action="store_true", help="continue an existing study (optuna:reload: 1)")
    p.add_argument("--replace", action="store_true",
                   help="delete an existing study of the same name first (refused while trials run)")
    p.add_argument("--strict", action="store_true",
                   help="refuse parameters whose key is not a path of the model config")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; submit nothing")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("run", help="run one worker loop (what each job and local worker runs)")
    add_common_arguments(p)
    p.add_argument("--worker-index", type=int, default=0, help="index of this worker (offsets a sampler seed)")
    p.add_argument("--deadline", type=float, metavar="EPOCH_S",
                   help="exit before this time (seconds since the epoch); in a Slurm job the job's end time")
    p.add_argument("--max-trials", type=int, metavar="N", help="run at most N trials in this worker")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="trials by state, best trial and progress of a study")
    add_common_arguments(p, model="none")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_status)

    # Commands owned by their own modules: each has add_arguments(parser) and run(args) -> int,
    # and imports nothing heavy at module level.
    for name, module, help_text in _MODULE_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


_MODULE_COMMANDS = (
    ("cancel", "hyper_opt.launch.cancel", "cancel the study's Slurm or PBS jobs; their running trials are retried"),
    ("report", "hyper_opt.report", "write trials.csv, best.yml, plots and a summary under save_path/report"),
    ("rerun", "hyper_opt.rerun", "run the objective once with one trial's parameters, outside the study"),
    ("test", "hyper_opt.metric_learning.evaluate", "evaluate a metric-learning trial on the held-out test classes"),
)


def load_from_args(args: argparse.Namespace, *, strict: bool = False):  # type: ignore[no-untyped-def]
    from hyper_opt.config import load_config

    model = getattr(args, "model", None)
    flag = getattr(args, "model_flag", None)
    if flag is not None and model is not None and Path(flag) != Path(model):
        from hyper_opt.exceptions import ConfigError

        raise ConfigError([f"two model configs given: {model} and -m {flag}; give one"], source="the command line")
    return load_config(args.hyper, flag if flag is not None else model, overrides=args.overrides,
                       strict=strict)


def cmd_optimize(args: argparse.Namespace) -> int:
    from hyper_opt.config import check_objective_config, missing_model_paths
    from hyper_opt.results import write_trials_csv
    from hyper_opt.storage import describe, with_db_retry
    from hyper_opt.study import best_summary, counts, n_finished, open_study

    if args.reload:
        args.overrides.append("optuna:reload=1")
    if args.workers is not None:
        args.overrides.append(f"local:workers={args.workers}")
    config, model = load_from_args(args, strict=args.strict)
    check_objective_config(config, model)
    setup_logging(config.log_level, debug=args.debug, log_file=None if args.dry_run else config.log_file)
    from hyper_opt import compat

    if compat.used():  # the objective was imported (and checked) before logging was set up
        logger.info("%s: %s", config.optuna.objective.describe(), compat.migration_hint(compat.used()))
    missing = missing_model_paths(config, model or {})
    if missing:
        logger.info("parameters that are not key paths of %s (suggested for custom_updates only): %s",
                    config.model_path.name if config.model_path else "the model config", ", ".join(missing))
    scheduler = choose_scheduler(config, local=args.local, wanted=args.scheduler, dry_run=args.dry_run)
    use_scheduler = scheduler is not None
    spec = config.optuna
    if args.dry_run:
        print(f"study      {spec.study_name} in {describe(spec.storage)}")
        print(f"objective  {spec.objective.describe()}  metric {list(spec.metrics)} {list(spec.directions)}")
        print(f"budget     {spec.n_trials} finished trials; {len(spec.parameters)} parameters")
        if scheduler == "pbs":
            from hyper_opt.launch.pbs import dry_run as pbs_dry_run

            pbs_dry_run(config)
        elif scheduler == "slurm":
            from hyper_opt.launch.slurm import dry_run

            dry_run(config)
        else:
            print(f"launch     {config.local_workers} local worker process(es)")
        return EXIT_OK
    if scheduler == "pbs":
        from hyper_opt.launch.pbs import directives

        directives(config)  # refuse malformed qsub options before the study exists
    elif scheduler == "slurm":
        from hyper_opt.launch.slurm import sbatch_parameters

        sbatch_parameters(config)  # refuse malformed sbatch options before the study exists
    opened = open_study(config, create=True, check_reload=True, replace=args.replace)
    if use_scheduler or spec.heartbeat_interval:
        from hyper_opt.study import fail_stale_trials

        fail_stale_trials(opened.study)  # a resumed study first re-queues dead trials
    from hyper_opt.launch.cancel import fail_trials_of_ended_jobs

    retried = fail_trials_of_ended_jobs(opened, max_retry=spec.max_retry)  # also without a heartbeat (journal storage)
    if retried:
        logger.warning("trial(s) %s were RUNNING in Slurm/PBS jobs that have ended: marked FAIL and re-queued",
                       retried)
    c = counts(opened)
    if n_finished(c) >= spec.n_trials:
        print(f"study {spec.study_name!r} already holds {n_finished(c)} finished trials (n_trials "
              f"{spec.n_trials}); raise optuna:n_trials to run more.")
        return EXIT_OK
    if use_scheduler:
        if scheduler == "pbs":
            from hyper_opt.launch.pbs import submit
        else:
            from hyper_opt.launch.slurm import submit

        submit(config, opened, remaining=spec.n_trials - n_finished(c) - c["RUNNING"])
        opened.lock.close()
        return EXIT_OK
    from hyper_opt.launch.local import run_local

    print(f"study {spec.study_name!r} in {describe(spec.storage)}: {n_finished(c)}/{spec.n_trials} "
          f"finished; starting {config.local_workers} worker(s)", file=sys.stderr)
    started = time.monotonic()
    run_local(config, opened, workers=config.local_workers, debug=args.debug)
    trials = with_db_retry(lambda: opened.storage.get_all_trials(opened.study_id),
                           seconds=spec.db_retry_seconds, what="reading the trials")
    merged = write_trials_csv(config.save_path / "trials.csv", trials,
                              param_names=[p.name for p in spec.parameters],
                              metric_names=list(spec.metrics), n_values=len(spec.directions))
    c = counts(opened)
    summary = ", ".join(f"{k} {v}" for k, v in c.items() if v)
    print(f"{n_finished(c)}/{spec.n_trials} finished in {time.monotonic() - started:.0f} s ({summary}); "
          f"{best_summary(opened.study)}", file=sys.stderr)
    if not spec.multi_objective:
        try:
            print(f"best parameters: {opened.study.best_trial.params}", file=sys.stderr)
        except ValueError:
            pass
    print(f"results: {merged} and {config.trials_dir}/", file=sys.stderr)
    return EXIT_OK if n_finished(c) >= spec.n_trials else EXIT_FAILED


def choose_scheduler(config, *, local: bool, wanted: str | None, dry_run: bool) -> str | None:  # type: ignore[no-untyped-def]
    """Which scheduler submits the jobs: None to run here (``--local``, or no slurm/pbs section).

    Never the login node by accident: a file with a slurm (pbs) section is refused when sbatch
    (qsub) is not on PATH, unless ``--local`` asks for this machine. A file with both sections
    takes ``--scheduler``; without it, the one whose submit command is on PATH, and when both or
    neither are, it asks. ``--dry-run`` needs no submit command.
    """
    import shutil

    from hyper_opt.exceptions import SubmissionError

    present = [name for name in SCHEDULERS if getattr(config, name) is not None]
    if local or not present:
        if wanted:
            raise SubmissionError(f"--scheduler {wanted} and --local contradict each other" if local else
                                  f"--scheduler {wanted}: the file has no {wanted} section")
        return None
    if wanted:
        if wanted not in present:
            raise SubmissionError(f"--scheduler {wanted}: {config.hyper_path} has no {wanted} section "
                                  f"(it has: {', '.join(present)})")
        chosen = wanted
    elif len(present) == 1:
        chosen = present[0]
    else:
        on_path = [name for name in present if shutil.which(SUBMIT_COMMANDS[name])]
        if len(on_path) != 1:
            found = "both sbatch and qsub are" if on_path else "neither sbatch nor qsub is"
            raise SubmissionError(f"{config.hyper_path} has both a slurm and a pbs section and {found} on "
                                  "PATH: pass --scheduler slurm or --scheduler pbs (or --local to run here)")
        chosen = on_path[0]
        logger.info("both slurm and pbs sections: using %s (%s is on PATH)", chosen, SUBMIT_COMMANDS[chosen])
    command = SUBMIT_COMMANDS[chosen]
    if not dry_run and shutil.which(command) is None:
        raise SubmissionError(f"the {chosen} section asks for {chosen} jobs, but {command} is not on PATH: "
                              f"run this on a {chosen.upper() if chosen == 'pbs' else 'Slurm'} login node, "
                              "or pass --local to run the search on this machine")
    return chosen


def cmd_run(args: argparse.Namespace) -> int:
    from hyper_opt.secrets import take_from_env
    from hyper_opt.worker import Stop, Worker

    args.overrides = take_from_env(args.overrides)  # a password travels in the environment, not argv
    config, model = load_from_args(args)
    setup_logging(config.log_level, debug=args.debug)
    deadline = args.deadline
    if deadline is None:
        from hyper_opt.launch.slurm_env import job_deadline

        deadline = job_deadline()
    report = Worker(config, model or {}, worker_index=args.worker_index, deadline=deadline,
                    max_trials=args.max_trials).run()
    if report.stop is Stop.FAILURES:
        return EXIT_FAILED
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None, *, default_command: str | None = None) -> int:
    """Entry point of ``hyper-opt`` and ``python optimize.py`` (which defaults to ``optimize``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from hyper_opt.config import CWD_ENV

    parser = build_parser()
    commands = {"optimize", "run", "status", "cancel", "report", "test", "rerun", "-h", "--help"}
    if default_command and (not argv or argv[0] not in commands):
        argv.insert(0, default_command)
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
        return func(args)
    except HyperOptError as err:
        if args.debug:
            logger.exception("error")
        print(f"hyper-opt {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"hyper-opt {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if set_cwd:
            os.environ.pop(CWD_ENV, None)
        if set_backend:
            os.environ.pop("KERAS_BACKEND", None)


def _keras_needs_torch_backend() -> bool:
    """True when Keras would look for TensorFlow, which is not installed, while torch is."""
    import importlib.util

    return importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("torch") is not None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
