"""One plain-optuna worker: ``study.optimize`` with a ``MaxTrialsCallback`` on a shared study.

This is what a user writes without hyper_opt: the same search space (x float in [-5, 5], y int
in [0, 10]), the same toy loss and sleep, the same sampler with its seed offset by the worker
index (as hyper_opt does, so that workers do not repeat each other's random start-up trials).
The study must exist (the benchmark creates it before starting the workers), unless ``--create``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import RECORDER, toy_loss  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="global budget of finished trials")
    parser.add_argument("--sampler", default="TPESampler")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=int, default=0, help="RDBStorage heartbeat_interval (0: off)")
    parser.add_argument("--timing-dir")
    parser.add_argument("--create", action="store_true", help="create the study (load it if it exists) instead of loading it")
    args = parser.parse_args()

    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    RECORDER.configure(args.timing_dir, "optuna")
    storage: object = args.storage
    if args.heartbeat:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = optuna.storages.RDBStorage(
                args.storage, heartbeat_interval=args.heartbeat, grace_period=2 * args.heartbeat,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    sampler = getattr(optuna.samplers, args.sampler)(seed=args.seed + args.worker_index)
    if args.create:
        study = optuna.create_study(study_name=args.study, storage=storage, sampler=sampler, load_if_exists=True)
    else:
        study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_int("y", 0, 10)
        with RECORDER.span():
            loss = toy_loss(x, y)
            if args.sleep:
                time.sleep(args.sleep)
        return loss

    study.optimize(objective, n_trials=None,
                   callbacks=[MaxTrialsCallback(args.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
