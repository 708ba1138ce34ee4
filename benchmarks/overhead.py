"""Benchmark 1: orchestration overhead per trial, hyper_opt against plain optuna and echo-opt.

One toy objective (an instant one, and one that sleeps 1 s), N trials, W worker processes on
the same PostgreSQL study, the same sampler (TPE, seed 1, offset by the worker index where the
tool does that):

* ``optuna``: ``study.optimize`` in W processes with ``MaxTrialsCallback(N)``
  (benchmarks/workloads/plain_worker.py), no heartbeat (optuna's default);
* ``optuna+hb``: the same with ``RDBStorage(heartbeat_interval=60)`` (full runs only);
* ``hyper_opt``: W x ``python -m hyper_opt.run HYPER.yml MODEL.yml --worker-index i`` with the
  default config (heartbeat every 60 s, per-trial CSV, budget lock, exact count);
* ``hyper_opt-nohb``: the same with ``optuna: heartbeat_interval: null``;
* ``hyper-opt optimize``: ``hyper-opt optimize HYPER.yml MODEL.yml --workers W``, the command a
  user types (it starts the W workers and shows progress from the study every second; full runs);
* ``echo``: W x ``echo-run HYPER.yml MODEL.yml -n i`` (echo-opt 1.3.1 in benchmarks/.venv-echo);
* ``optimize --local``: ``python -m hyper_opt optimize HYPER.yml MODEL.yml --local --workers 1``, the
  "end to end" row (W=1, 200 instant trials, RandomSampler) beside plain optuna's process, both
  timed from process start to exit (quick runs too).

Every worker is started at the same moment by this script; the study is created before.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

SYSTEMS = ("optuna", "optuna+hb", "hyper_opt", "hyper_opt-nohb", "hyper-opt optimize", "echo")
E2E_SYSTEM = "optimize --local"  # the command a user types, launcher + workers + progress, end to end
# The end-to-end row of issue 13, in quick runs too: W=1, 200 instant trials, RandomSampler, plain
# optuna's process (start-up included) against ``hyper-opt optimize HYPER MODEL --local``.
E2E = ("instant, end to end", 0.0, 200, 1, "RandomSampler")


def worker_commands(system: str, *, url: str, study: str, n: int, sleep: float, workers: int,
                    folder: Path, timing_dir: Path, sampler: str = "TPESampler") -> list[list[str]]:
    py = sys.executable
    if system in ("optuna", "optuna+hb"):
        base = [py, str(common.WORKLOADS / "plain_worker.py"), "--storage", url, "--study", study,
                "--n-trials", str(n), "--sleep", str(sleep), "--sampler", sampler,
                "--timing-dir", str(timing_dir)]
        if system == "optuna+hb":
            base += ["--heartbeat", "60"]
        return [base + ["--worker-index", str(i)] for i in range(workers)]
    if system == E2E_SYSTEM:
        hyper, model = common.write_hyper_opt_search(folder, url=url, study=study, n_trials=n, sleep=sleep,
                                                     timing_dir=timing_dir, sampler=sampler)
        return [[py, "-m", "hyper_opt", "optimize", str(hyper), str(model), "--local", "--workers", str(workers)]]
    if system == "hyper-opt optimize":
        hyper, model = common.write_hyper_opt_search(folder, url=url, study=study, n_trials=n, sleep=sleep,
                                                     timing_dir=timing_dir, sampler=sampler)
        return [[py, "-m", "hyper_opt", "optimize", str(hyper), str(model), "--workers", str(workers)]]
    if system in ("hyper_opt", "hyper_opt-nohb"):
        hyper, model = common.write_hyper_opt_search(folder, url=url, study=study, n_trials=n, sleep=sleep,
                                                     timing_dir=timing_dir, sampler=sampler,
                                                     heartbeat=system == "hyper_opt")
        return [[py, "-m", "hyper_opt.run", str(hyper), str(model), "--worker-index", str(i)]
                for i in range(workers)]
    if system == "echo":
        echo = common.echo_python()
        if echo is None:
            raise RuntimeError("echo-opt is not installed (python -m benchmarks --install-echo)")
        hyper, model = common.write_echo_search(folder, url=url, study=study, n_trials=n, sleep=sleep,
                                                timing_dir=timing_dir, sampler=sampler)
        run = str(echo.parent / "echo-run")
        return [[run, str(hyper), str(model), "-n", str(i)] for i in range(workers)]
    raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")


def run_workers(system: str, *, url: str, study: str, n: int, sleep: float, workers: int,
                sampler: str = "TPESampler", keep: bool = False) -> dict[str, Any]:
    """Start W workers of ``system`` at once on an existing study (budget: ``n`` finished trials
    in the study), wait for them and analyse their train spans."""
    with common.scratch(f"workers-{system}", keep=keep) as folder:
        timing_dir = folder / "timing"
        cmds = worker_commands(system, url=url, study=study, n=n, sleep=sleep, workers=workers,
                               folder=folder / "search", timing_dir=timing_dir, sampler=sampler)
        before = common.study_counts(url, study)
        load_before = common.load_average()[0]
        launch = common.run_processes(cmds, cwd=folder, log_dir=folder / "logs")
        counts = common.study_counts(url, study)
        common.raise_if_failed(launch, system)
        finished = sum(counts.get(s, 0) - before.get(s, 0) for s in ("COMPLETE", "PRUNED"))
        spans = common.read_spans(timing_dir)
        timing = common.analyse(spans, t0=launch.t0, wall_s=launch.wall_s, workers=workers, finished=finished)
        flat = [s for proc in spans for s in proc]
        steady = None
        if len(flat) > 1:
            first = min(s for s, _ in flat)
            last = max(e for _, e in flat)
            steady = (len(flat) - 1) / (last - first) if last > first else None
        return {
            "system": system, "workers": workers, "n_target": n, "sleep": sleep, "sampler": sampler,
            "wall_s": launch.wall_s, "finished": finished, "counts": counts,
            "trials_per_s": finished / launch.wall_s if launch.wall_s else None, "steady_trials_per_s": steady,
            "timing": dataclasses.asdict(timing), "returncodes": launch.returncodes, "load_before": load_before,
        }


def run_one(system: str, *, url: str, n: int, sleep: float, workers: int,
            sampler: str = "TPESampler", keep: bool = False) -> dict[str, Any]:
    """One run on a fresh study: create it, start W workers at once, wait, analyse, delete it."""
    import optuna

    study = common.new_study_name("".join(c for c in system if c.isalnum()))
    optuna.create_study(study_name=study, storage=url, direction="minimize")
    try:
        return run_workers(system, url=url, study=study, n=n, sleep=sleep, workers=workers,
                           sampler=sampler, keep=keep)
    finally:
        common.delete_study(url, study)


def run(*, quick: bool, repeats: int | None = None, systems: Sequence[str] | None = None,
        workers_list: Sequence[int] = (1, 4, 8)) -> dict[str, Any]:
    url = common.ensure_pg_env()
    repeats = repeats or (1 if quick else 2)
    if systems is None:
        systems = ("optuna", "hyper_opt") if quick else SYSTEMS
    if "echo" in systems and common.echo_python() is None:
        print("echo-opt is not installed: skipping it (python -m benchmarks --install-echo)", file=sys.stderr)
        systems = [s for s in systems if s != "echo"]
    # (label, seconds in train, N, W values); --quick leaves out the instant objective's W=8, where
    # 8 processes starting at once on 2 cores take most of a minute.
    objectives = [("instant", 0.0, 30 if quick else 100, (1, 4) if quick else tuple(workers_list)),
                  ("sleep 1 s", 1.0, 16, tuple(workers_list))]
    runs: list[dict[str, Any]] = []
    load_start = common.load_average()
    for label, sleep, n, w_values in objectives:
        for workers in w_values:
            for rep in range(repeats):
                for system in systems:
                    t = time.monotonic()
                    result = common.retrying(
                        lambda: run_one(system, url=url, n=n, sleep=sleep, workers=workers),
                        url=url, what=f"{system} W={workers} {label}")
                    result.update(objective=label, repeat=rep)
                    runs.append(result)
                    tm = result["timing"]
                    print(f"  {label:<9} W={workers} {system:<15} {result['finished']:>3} finished in "
                          f"{result['wall_s']:6.1f} s  {result['trials_per_s']:6.2f} trials/s  overhead "
                          f"median {common.fmt_s(tm['overhead_median_s'], ms=True)} ms  all-in "
                          f"{common.fmt_s(tm['overhead_all_in_s'], ms=True)} ms  startup "
                          f"{common.fmt_s(tm['startup_s'])} s  load {result['load_before']:.2f}  "
                          f"({time.monotonic() - t:.0f} s)", file=sys.stderr)
    label, sleep, n, workers, sampler = E2E
    for rep in range(repeats):
        for system in ("optuna", E2E_SYSTEM):
            t = time.monotonic()
            result = common.retrying(
                lambda: run_one(system, url=url, n=n, sleep=sleep, workers=workers, sampler=sampler),
                url=url, what=f"{system} {label}")
            result.update(objective=label, repeat=rep)
            runs.append(result)
            print(f"  {label} W={workers} {system:<17} {result['finished']:>3} finished in {result['wall_s']:6.1f} s "
                  f"(process start to exit)  load {result['load_before']:.2f}  ({time.monotonic() - t:.0f} s)",
                  file=sys.stderr)
    return {"runs": runs, "systems": [*systems, E2E_SYSTEM],
            "load": {"start": load_start, "end": common.load_average()}}


# --------------------------------------------------------------------------- markdown


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (objective, W, system): medians over repeats."""
    rows: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in data["runs"]:
        rows.setdefault((r["objective"], r["workers"], r["system"]), []).append(r)
    out = []
    for (objective, workers, system), rs in rows.items():
        tm = [r["timing"] for r in rs]
        out.append({
            "objective": objective, "workers": workers, "system": system, "repeats": len(rs),
            "n_target": rs[0]["n_target"],
            "finished": _median([r["finished"] for r in rs]),
            "wall_s": _median([r["wall_s"] for r in rs]),
            "trials_per_s": _median([r["trials_per_s"] for r in rs]),
            "steady_trials_per_s": _median([r["steady_trials_per_s"] for r in rs]),
            "overhead_median_s": _median([t["overhead_median_s"] for t in tm]),
            "overhead_p90_s": _median([t["overhead_p90_s"] for t in tm]),
            "overhead_all_in_s": _median([t["overhead_all_in_s"] for t in tm]),
            "startup_s": _median([t["startup_s"] for t in tm]),
        })
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = summarise(data)
    base = {(r["objective"], r["workers"]): r for r in rows if r["system"] == "optuna"}
    table = []
    for r in rows:
        ref = base.get((r["objective"], r["workers"]))
        ratio_tps = ratio_ovh = "-"
        if ref and r["system"] != "optuna":
            if ref["trials_per_s"] and r["trials_per_s"]:
                ratio_tps = f"{r['trials_per_s'] / ref['trials_per_s']:.2f}"
            if ref["overhead_median_s"] and r["overhead_median_s"]:
                ratio_ovh = f"{r['overhead_median_s'] / ref['overhead_median_s']:.2f}"
        table.append([
            r["objective"], r["workers"], r["system"], f"{r['finished']:.0f}/{r['n_target']}",
            common.fmt_s(r["wall_s"]), f"{r['trials_per_s']:.2f}",
            f"{r['steady_trials_per_s']:.2f}" if r["steady_trials_per_s"] else "-",
            common.fmt_s(r["overhead_median_s"], ms=True), common.fmt_s(r["overhead_p90_s"], ms=True),
            common.fmt_s(r["overhead_all_in_s"], ms=True), common.fmt_s(r["startup_s"], digits=2),
            ratio_tps, ratio_ovh,
        ])
    header = ["objective", "W", "system", "finished/N", "wall s", "trials/s", "steady trials/s",
              "overhead median ms", "overhead p90 ms", "all-in overhead ms", "start-up s",
              "trials/s vs optuna", "overhead vs optuna"]
    text = common.markdown_table(header, table)
    e2e = {r["system"]: r for r in rows if r["objective"] == E2E[0]}
    if "optuna" in e2e and E2E_SYSTEM in e2e and e2e["optuna"]["wall_s"]:
        ratio = e2e[E2E_SYSTEM]["wall_s"] / e2e["optuna"]["wall_s"]
        text += (f"\n\nEnd to end (W=1, {E2E[2]} instant trials, {E2E[4]}, process start to exit): plain optuna "
                 f"{e2e['optuna']['wall_s']:.1f} s, `hyper-opt optimize --local` {e2e[E2E_SYSTEM]['wall_s']:.1f} s "
                 f"(**{ratio:.2f}x**).")
    return text
