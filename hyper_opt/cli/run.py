"""``hyper-opt run``: one worker loop (what each job and local worker runs)."""

from __future__ import annotations

import argparse
from typing import Any

from hyper_opt.cli.common import EXIT_FAILED, EXIT_OK, add_common_arguments, load_from_args, setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--worker-index", type=int, default=0, help="index of this worker (offsets a sampler seed)")
    p.add_argument("--deadline", type=float, metavar="EPOCH_S",
                   help="exit before this time (seconds since the epoch); in a Slurm job the job's end time")
    p.add_argument("--max-trials", type=int, metavar="N", help="run at most N trials in this worker")
    p.add_argument("--gpus-per-trial", type=int, default=1, metavar="G",
                   help="ranks per trial on each node, one GPU each (the launcher passes gpus_per_trial)")
    p.add_argument("--nodes-per-trial", type=int, default=1, metavar="K", help="nodes per trial (Slurm/PBS jobs)")
    p.add_argument("--schema-checked", action="store_true",
                   help="the launcher has just created or checked optuna's tables: do not again (set by optimize)")
    p.add_argument("--wait-for-go", action="store_true",
                   help="load everything, then wait for a line 'go' on stdin before opening the study; exit "
                        "quietly on anything else (set by optimize for its local workers)")


def run(args: argparse.Namespace) -> int:
    from hyper_opt.distributed import TrialSize
    from hyper_opt.secrets import take_from_env
    from hyper_opt.worker import Stop, Worker

    args.overrides = take_from_env(args.overrides)  # a password travels in the environment, not argv
    config, model = load_from_args(args)
    setup_logging(config.log_level, debug=args.debug)
    if args.wait_for_go:
        import sys

        _load_ahead(config)
        if sys.stdin.readline().strip() != "go":  # the launcher stopped before starting the search
            return EXIT_OK
    deadline = args.deadline
    if deadline is None:
        from hyper_opt.launch.slurm_env import job_deadline

        deadline = job_deadline()
    report = Worker(config, model or {}, worker_index=args.worker_index, deadline=deadline,
                    max_trials=args.max_trials,
                    size=TrialSize(max(1, args.gpus_per_trial), max(1, args.nodes_per_trial)),
                    schema_checked=args.schema_checked).run()
    if report.stop is Stop.FAILURES:
        return EXIT_FAILED
    return EXIT_OK


def _load_ahead(config: Any) -> None:
    """What a worker started ahead of the launcher's checks does while it waits for ``go``: it
    imports what opening the storage needs (hyper_opt.storage.preload), the user's objective
    module (often torch with it: seconds) and picks its device, touching neither the study nor
    the database. A module that fails to import is imported again after ``go``, where its error is
    reported as it always is (the launcher refusing first, if it does)."""
    import logging

    from hyper_opt.exceptions import ObjectiveError
    from hyper_opt.loader import load_module
    from hyper_opt.objective import trial_device
    from hyper_opt.storage import preload

    preload(config.optuna)
    try:
        load_module(config.optuna.objective)
    except ObjectiveError as err:
        logging.getLogger(__name__).debug("importing the objective ahead failed: %s", err)
    trial_device(config.optuna.gpu)
