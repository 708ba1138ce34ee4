"""How long a worker holds the study's budget lock per claim, per sampler and per claim path.

    python -m benchmarks.lock_hold [--prefill 300] [--trials 20] [--samplers Random,TPE,...]
                                   [--modes transaction,server]

One worker in this process on a PostgreSQL study pre-filled with COMPLETE trials, the instant
benchmark objective, heartbeat on. Modes (claim paths):

* ``before``: the claim before issue 13 (emulated here): the session-level advisory lock on a
  connection of its own, then, under it, optuna's stale-trial scan and the scan for trials
  without a heartbeat, the count, ``study.ask()``, the trial-id and system-attribute reads, the
  first heartbeat and one INSERT per run-context attribute;
* ``transaction``: the claim of issue 13, still used where hyper_opt may not create its server-side
  function: one transaction on the worker's connection (``pg_advisory_xact_lock``, the count,
  create, first heartbeat, the run context in one statement, COMMIT), several client round trips
  while the lock is held; timed from the lock granted to the COMMIT's return;
* ``server``: the claim of issue 24, one statement (``hyper_opt.server_side``): the lock is taken
  and released inside the server; the hold is timed by the function itself, from the lock
  granted to its end (the commit follows; with ``synchronous_commit = on`` it includes the WAL
  flush). *round trip* is the client's time for the whole statement.

The lock hold comes from the worker's opt-in timing hook (``HYPER_OPT_CLAIM_TIMING``), not from
logs. The per-trial time is the worker's whole run (start-up included) divided by the trials.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from benchmarks import common

SAMPLERS: dict[str, dict[str, Any]] = {
    "RandomSampler": {"type": "RandomSampler"},
    "TPESampler": {"type": "TPESampler"},
    "TPE multivariate+liar": {"type": "TPESampler", "multivariate": True, "constant_liar": True},
    "CmaEsSampler": {"type": "CmaEsSampler"},
    "GPSampler": {"type": "GPSampler"},
}


def _old_claim(worker: Any, opened: Any) -> Any:
    """hyper_opt's claim before issue 13 (commit a16391e), timed like the new one."""
    import optuna

    from hyper_opt import failpoints
    from hyper_opt.storage import with_db_retry
    from hyper_opt.study import ask, counts, fail_silent_trials, fail_stale_trials
    from hyper_opt.worker import Claimed, Stop, run_context

    spec = worker.config.optuna

    def attempt() -> Any:
        TS = optuna.trial.TrialState
        started = time.perf_counter()
        opened.lock.acquire()
        locked = time.perf_counter()
        try:
            failpoints.hit("holding_budget_lock")
            if spec.heartbeat_interval:
                fail_stale_trials(opened.study)
                fail_silent_trials(opened, grace_period=spec.grace_period or 2 * spec.heartbeat_interval)
            c = counts(opened)
            finished = c[TS.COMPLETE.name] + c[TS.PRUNED.name]
            if finished >= spec.n_trials:
                return Stop.BUDGET
            if finished + c[TS.RUNNING.name] >= spec.n_trials:
                return None if spec.heartbeat_interval else Stop.BUDGET
            trial = ask(opened.study)
            trial_id = opened.storage.get_trial_id_from_study_id_trial_number(opened.study_id, trial.number)
            if spec.heartbeat_interval:
                opened.storage.record_heartbeat(trial_id)
            origin = opened.storage.get_trial_system_attrs(trial_id).get("failed_trial")
            attrs: dict[str, Any] = dict(run_context())
            if origin is not None:
                attrs["retry_of"] = origin
            for key, value in attrs.items():
                if value != "":
                    trial.set_user_attr(key, value)
            return Claimed(trial, trial_id, origin)
        finally:
            opened.lock.release()
            if worker.timing is not None:
                worker.timing.append({"lock_s": time.perf_counter() - locked, "wait_s": locked - started})

    return with_db_retry(attempt, seconds=spec.db_retry_seconds, what="starting a trial")


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return {"n": len(values), "median_ms": statistics.median(values) * 1000, "p90_ms": p90 * 1000,
            "max_ms": values[-1] * 1000}


MODES = ("before", "transaction", "server")


def measure(url: str, *, sampler: dict[str, Any], mode: str, prefill: int, trials: int) -> dict[str, Any]:
    import optuna

    from benchmarks.scaling import fill_study
    from hyper_opt.claim import NO_SERVER_ENV
    from hyper_opt.config import load_config
    from hyper_opt.worker import TIMING_ENV, Worker

    name = common.new_study_name(f"lock-{mode}")
    optuna.create_study(study_name=name, storage=url)
    try:
        fill_study(url, name, prefill)
        with common.scratch("lock") as folder:
            hyper, model = common.write_hyper_opt_search(
                folder, url=url, study=name, n_trials=prefill + trials, sleep=0.0, timing_dir=folder / "timing",
                optuna_extra={"sampler": {**sampler, "seed": 1}, "heartbeat_interval": 10})
            config, m = load_config(hyper, model)
            os.environ[TIMING_ENV] = "1"
            try:
                worker = Worker(config, m)
            finally:
                os.environ.pop(TIMING_ENV, None)
            if mode == "before":
                worker._claim = lambda opened: _old_claim(worker, opened)  # type: ignore[method-assign]
            if mode != "server":
                os.environ[NO_SERVER_ENV] = "1"
            try:
                start = time.perf_counter()
                report = worker.run()
                total = time.perf_counter() - start
            finally:
                os.environ.pop(NO_SERVER_ENV, None)
        timing = worker.timing or []
        return {"trials": len(report.trials), "per_trial_ms": total / max(1, len(report.trials)) * 1000,
                "lock": _summary([t["lock_s"] for t in timing]),
                "round_trip": _summary([t["call_s"] for t in timing if "call_s" in t]),
                "trial_built": _summary([t["trial_built_s"] for t in timing if "trial_built_s" in t])}
    finally:
        common.delete_study(url, name)


def _available(spec: dict[str, Any]) -> str | None:
    """Why a sampler cannot run here (a package it needs is missing), or None."""
    import importlib.util

    needs = {"CmaEsSampler": ("cmaes",), "GPSampler": ("torch", "scipy")}.get(spec["type"], ())
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    return f"{spec['type']} needs {', '.join(missing)}, not installed" if missing else None


def run(*, quick: bool, prefill: int | None = None, trials: int | None = None,
        samplers: list[str] | None = None, modes: list[str] | None = None) -> dict[str, Any]:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyper_opt").setLevel(logging.WARNING)
    url = common.ensure_pg_env()
    prefill = prefill if prefill is not None else (300 if quick else 500)
    trials = trials or (12 if quick else 40)
    rows: dict[str, Any] = {}
    load_start = common.load_average()
    for label in samplers or list(SAMPLERS):
        spec = SAMPLERS[label]
        why = _available(spec)
        if why:
            rows[label] = {"skipped": why}
            continue
        rows[label] = {}
        for mode in modes or ("transaction", "server"):
            print(f"  lock hold: {label}, {mode}", file=sys.stderr)
            rows[label][mode] = common.retrying(
                lambda: measure(url, sampler=spec, mode=mode, prefill=prefill, trials=trials),
                url=url, what=f"lock hold {label} {mode}")
    return {"prefill": prefill, "trials": trials, "rows": rows, "modes": list(modes or ("transaction", "server")),
            "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    table = []
    modes = data.get("modes") or ["before", "after"]
    for label, row in data["rows"].items():
        if "skipped" in row:
            table.append([label, "-", "-", "-", "-", "-", row["skipped"]])
            continue
        for i, mode in enumerate(m for m in modes if m in row):
            r = row[mode]
            lock, trip = r["lock"], r.get("round_trip") or {}
            table.append([label if i == 0 else "", mode, f"{lock.get('median_ms', 0):.2f}",
                          f"{lock.get('p90_ms', 0):.2f}", f"{lock.get('max_ms', 0):.1f}",
                          f"{trip['median_ms']:.2f}" if trip else "-", f"{r['per_trial_ms']:.0f}"])
    return (f"Budget-lock hold per claim (ms) and whole time per trial (ms), one worker, instant objective, "
            f"PostgreSQL study pre-filled with {data['prefill']} COMPLETE trials, {data['trials']} trials "
            f"per row; load average {data['load']['start'][0]:.2f} before, {data['load']['end'][0]:.2f} after.\n\n"
            + common.markdown_table(["sampler", "claim", "lock median", "lock p90", "lock max",
                                     "round trip median", "ms/trial"], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lock_hold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill", type=int, default=300)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samplers", help=f"comma-separated, of: {', '.join(SAMPLERS)}")
    parser.add_argument("--modes", default="transaction,server", help=f"comma-separated, of: {', '.join(MODES)}")
    args = parser.parse_args(argv)
    samplers = [s.strip() for s in args.samplers.split(",")] if args.samplers else None
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    print(markdown(run(quick=True, prefill=args.prefill, trials=args.trials, samplers=samplers, modes=modes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
