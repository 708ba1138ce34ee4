"""Where a hyper_opt worker spends its time per trial, beside plain optuna: phases and SQL queries.

    python -m benchmarks.profile_worker [--trials 40] [--prefill 0] [--sampler TPESampler] [--no-heartbeat]
                                        [--old-claim]

Both run in this process on a fresh PostgreSQL study with the instant benchmark objective:
hyper_opt's ``Worker.run`` (with timers wrapped around its phases) and plain
``study.optimize``. Every SQL statement is counted and timed, and attributed to the innermost
wrapped phase it ran in. Times are inclusive (``_claim`` contains ``ask``); the ``SQL`` columns
are exclusive to the phase. Use ``--prefill`` to see how the phases grow with the study size,
``--old-claim`` for the claim as it was before issue 13 (benchmarks/lock_hold.py emulates it).
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

# (module, attribute path) of what to time; missing ones are skipped (the code may have moved).
PHASES = (
    ("hyper_opt.worker", "Worker._claim"),
    ("hyper_opt.storage", "BudgetLock.acquire"),
    ("hyper_opt.storage", "BudgetLock.release"),
    ("hyper_opt.claim", "fail_stale_trials"),
    ("hyper_opt.study", "ask"),
    ("hyper_opt.claim", "Claimer._start_bookkeeping"),
    ("hyper_opt.claim", "Claimer._scan_stale"),
    ("hyper_opt.claim", "start_trial"),
    ("hyper_opt.claim", "first_heartbeat"),
    ("hyper_opt.claim", "make_trial"),
    ("hyper_opt.claim", "counts"),
    ("benchmarks.lock_hold", "_old_claim"),
    ("hyper_opt.heartbeat", "Heartbeat.__enter__"),
    ("hyper_opt.heartbeat", "Heartbeat.__exit__"),
    ("hyper_opt.objective", "BaseObjective.update_config"),
    ("hyper_opt.objective", "BaseObjective.__call__"),
    ("hyper_opt.worker", "Worker._record"),
    ("hyper_opt.results", "write_trial_csv"),
    ("optuna.trial", "Trial._suggest"),  # sampling (private: timing only)
    ("optuna.trial", "Trial.set_user_attr"),
    ("optuna.study", "Study.ask"),
    ("optuna.study", "Study.tell"),
    ("optuna.study._tell", "_tell_with_warning"),  # what study.optimize calls (private: timing only)
    ("optuna.storages", "fail_stale_trials"),
    ("optuna.storages", "RDBStorage.get_all_trials"),
    ("optuna.storages", "RDBStorage.get_trial"),
)


class Profiler:
    def __init__(self) -> None:
        self.time: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.sql_n: collections.Counter[str] = collections.Counter()
        self.sql_t: collections.Counter[str] = collections.Counter()
        self.stack: list[str] = []
        self._sql_start = 0.0
        self._undo: list[tuple[Any, str, Any]] = []

    def reset(self) -> None:
        for c in (self.time, self.calls, self.sql_n, self.sql_t):
            c.clear()

    def wrap(self, module_name: str, path: str) -> None:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            return
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
            if owner is None:
                return
        raw = vars(owner).get(parts[-1]) if isinstance(owner, type) else None
        original = getattr(owner, parts[-1], None)
        if original is None:
            return
        if isinstance(raw, (staticmethod, classmethod)):
            original = raw.__func__
        label = path
        prof = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            prof.stack.append(label)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                prof.time[label] += time.perf_counter() - start
                prof.calls[label] += 1
                prof.stack.pop()

        self._undo.append((owner, parts[-1], raw if raw is not None else original))
        setattr(owner, parts[-1], type(raw)(timed) if isinstance(raw, (staticmethod, classmethod)) else timed)

    def install_sql(self) -> None:
        import sqlalchemy
        from sqlalchemy import event

        @event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
        def before(*args: Any) -> None:
            self._sql_start = time.perf_counter()

        @event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
        def after(*args: Any) -> None:
            where = self.stack[-1] if self.stack else "(other)"
            self.sql_n[where] += 1
            self.sql_t[where] += time.perf_counter() - self._sql_start

    def undo(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def table(self, n: int, total_s: float) -> str:
        labels = sorted(set(self.time) | set(self.sql_n), key=lambda k: -self.time.get(k, 0.0))
        rows = []
        for label in labels:
            rows.append([label, f"{self.calls[label] / n:.2f}", common.fmt_s(self.time.get(label, 0.0) / n, ms=True),
                         f"{self.sql_n[label] / n:.1f}", common.fmt_s(self.sql_t[label] / n, ms=True)])
        rows.append(["**whole trial**", "1", common.fmt_s(total_s / n, ms=True),
                     f"{sum(self.sql_n.values()) / n:.1f}", common.fmt_s(sum(self.sql_t.values()) / n, ms=True)])
        return common.markdown_table(["phase", "calls/trial", "ms/trial (inclusive)", "SQL queries/trial",
                                      "SQL ms/trial"], rows)


def prefill(url: str, name: str, n: int) -> None:
    """Add ``n`` COMPLETE trials of the benchmark's search space to the study."""
    if n <= 0:
        return
    from benchmarks.scaling import fill_study

    fill_study(url, name, n)


def profile_hyper_opt(url: str, *, trials: int, prefill_n: int, sampler: str, heartbeat: bool,
                      prof: Profiler, old_claim: bool = False) -> dict[str, Any]:
    import optuna

    from hyper_opt.config import load_config
    from hyper_opt.worker import Worker

    name = common.new_study_name("prof-hyperopt")
    optuna.create_study(study_name=name, storage=url)
    try:
        prefill(url, name, prefill_n)
        with common.scratch("profile") as folder:
            hyper, model = common.write_hyper_opt_search(folder, url=url, study=name, n_trials=prefill_n + 3,
                                                         sleep=0.0, timing_dir=folder / "timing",
                                                         sampler=sampler, heartbeat=heartbeat)
            config, m = load_config(hyper, model)
            Worker(config, m).run()  # warm up: imports, connections, 3 trials
            config, m = load_config(hyper, model, overrides=[f"optuna:n_trials={prefill_n + 3 + trials}"])
            worker = Worker(config, m)
            if old_claim:
                from benchmarks import lock_hold

                worker._claim = lambda opened: lock_hold._old_claim(worker, opened)  # type: ignore[method-assign]
            prof.reset()
            start = time.perf_counter()
            worker.run()
            total = time.perf_counter() - start
        return {"total_s": total, "table": prof.table(trials, total)}
    finally:
        common.delete_study(url, name)


def profile_optuna(url: str, *, trials: int, prefill_n: int, sampler: str, prof: Profiler) -> dict[str, Any]:
    import optuna

    name = common.new_study_name("prof-optuna")
    optuna.create_study(study_name=name, storage=url)
    try:
        prefill(url, name, prefill_n)
        study = optuna.load_study(study_name=name, storage=url,
                                  sampler=getattr(optuna.samplers, sampler)(seed=1))

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -5.0, 5.0)
            y = trial.suggest_int("y", 0, 10)
            return (x - 2.0) ** 2 + (y - 3) ** 2

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(objective, n_trials=3)
        prof.reset()
        start = time.perf_counter()
        study.optimize(objective, n_trials=trials,
                       callbacks=[optuna.study.MaxTrialsCallback(prefill_n + 3 + trials, states=states)])
        total = time.perf_counter() - start
        return {"total_s": total, "table": prof.table(trials, total)}
    finally:
        common.delete_study(url, name)


def run(*, quick: bool, trials: int | None = None, prefill_n: int = 0, sampler: str = "TPESampler",
        heartbeat: bool = True) -> dict[str, Any]:
    """For ``python -m benchmarks --only profile``: both tables, as Markdown."""
    import logging

    logging.getLogger("hyper_opt").setLevel(logging.WARNING)
    url = common.ensure_pg_env()
    trials = trials or (20 if quick else 60)
    prof = Profiler()
    for module, path in PHASES:
        prof.wrap(module, path)
    prof.install_sql()
    load_start = common.load_average()
    try:
        h = common.retrying(lambda: profile_hyper_opt(url, trials=trials, prefill_n=prefill_n, sampler=sampler,
                                                      heartbeat=heartbeat, prof=prof), url=url, what="profile hyper_opt")
        o = common.retrying(lambda: profile_optuna(url, trials=trials, prefill_n=prefill_n, sampler=sampler, prof=prof),
                            url=url, what="profile optuna")
    finally:
        prof.undo()
    return {"trials": trials, "prefill": prefill_n, "sampler": sampler, "heartbeat": heartbeat,
            "hyper_opt": h, "optuna": o, "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    n = data["trials"]
    return (f"{n} instant trials in one process each, {data['sampler']}, study pre-filled with "
            f"{data['prefill']} trials, heartbeat {'on' if data['heartbeat'] else 'off'}.\n\n"
            f"hyper_opt worker (`Worker.run`): **{data['hyper_opt']['total_s'] / n * 1000:.0f} ms/trial**\n\n"
            f"{data['hyper_opt']['table']}\n\nplain optuna (`study.optimize`): "
            f"**{data['optuna']['total_s'] / n * 1000:.0f} ms/trial**\n\n{data['optuna']['table']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--prefill", type=int, default=0, help="COMPLETE trials added to the study first")
    parser.add_argument("--sampler", default="TPESampler")
    parser.add_argument("--no-heartbeat", action="store_true", help="optuna:heartbeat_interval: null")
    parser.add_argument("--old-claim", action="store_true", help="the claim as it was before issue 13")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyper_opt").setLevel(logging.WARNING)
    url = common.ensure_pg_env()
    prof = Profiler()
    for module, path in PHASES:
        prof.wrap(module, path)
    prof.install_sql()
    load_before = common.load_average()
    try:
        h = profile_hyper_opt(url, trials=args.trials, prefill_n=args.prefill, sampler=args.sampler,
                              heartbeat=not args.no_heartbeat, prof=prof, old_claim=args.old_claim)
        o = profile_optuna(url, trials=args.trials, prefill_n=args.prefill, sampler=args.sampler, prof=prof)
    finally:
        prof.undo()
    load_after = common.load_average()
    text = (f"{'old claim; ' if args.old_claim else ''}{args.trials} instant trials, {args.sampler}, "
            f"study pre-filled with {args.prefill} trials, "
            f"heartbeat {'off' if args.no_heartbeat else 'on'}; load average {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after.\n\n"
            f"hyper_opt worker: {h['total_s'] / args.trials * 1000:.1f} ms/trial\n\n{h['table']}\n\n"
            f"plain optuna: {o['total_s'] / args.trials * 1000:.1f} ms/trial\n\n{o['table']}\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
