"""Benchmark 2: per-trial overhead and command times as the study grows (0, 2,000, 10,000 trials).

For each sampler (TPE, random) one study grows through the sizes. At each size, K instant
trials are run by one plain-optuna worker and then by one hyper_opt worker (W=1, so that the
figures are the cost of one trial, not contention), and ``hyper-opt status`` and
``hyper-opt report`` are timed as a user types them (a new process each, imports included;
``python -m hyper_opt --help`` is timed too, as the floor every command pays).

Pre-filling: ``--fill add_trials`` uses optuna's ``study.add_trials([create_trial(...)])``
(about 17 ms a trial here: 3 minutes for 10,000). The default ``--fill bulk`` writes the same
COMPLETE trials (two parameters, one value) into optuna's tables with three INSERT ... SELECT
statements (PostgreSQL; about a second) and then checks through optuna's public API that the
study reads back as meant, so that a schema change fails loudly instead of timing a wrong study.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common, overhead


def _distributions() -> dict[str, Any]:
    from optuna.distributions import FloatDistribution, IntDistribution

    return {"x": FloatDistribution(-5.0, 5.0), "y": IntDistribution(0, 10)}


def fill_study(url: str, name: str, n: int, *, method: str = "bulk", seed: int = 0) -> float:
    """Add ``n`` COMPLETE trials (x, y and the toy loss) to the study; return the seconds taken."""
    import optuna

    start = time.perf_counter()
    if n <= 0:
        return 0.0
    if method == "add_trials":
        rng = random.Random(seed)
        trials = []
        for _ in range(n):
            x, y = rng.uniform(-5.0, 5.0), rng.randint(0, 10)
            trials.append(optuna.trial.create_trial(params={"x": x, "y": y}, distributions=_distributions(),
                                                    value=(x - 2.0) ** 2 + (y - 3) ** 2))
        study = optuna.load_study(study_name=name, storage=url)
        study.add_trials(trials)
        return time.perf_counter() - start
    if method != "bulk":
        raise ValueError(f"fill method must be 'bulk' or 'add_trials', got {method!r}")
    if not url.startswith("postgresql"):
        raise ValueError("the bulk fill is written for PostgreSQL; use --fill add_trials")
    _bulk_fill(url, name, n, seed=seed)
    _check_fill(url, name)
    return time.perf_counter() - start


def _bulk_fill(url: str, name: str, n: int, *, seed: int) -> None:
    import optuna
    import sqlalchemy
    from optuna.distributions import distribution_to_json

    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(name)
    offset = storage.get_n_trials(study_id)
    storage.remove_session()
    dists = _distributions()
    # Start times a day ago, one second apart; each trial lasts one second (naive UTC, as optuna stores).
    t0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=1)
    engine = sqlalchemy.create_engine(url)
    text = sqlalchemy.text
    with engine.begin() as conn:
        conn.execute(text("SELECT setseed(:s)"), {"s": (seed % 1000) / 1000.0})
        conn.execute(text(
            "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
            "SELECT :offset + g, :sid, 'COMPLETE', :t0 + g * interval '1 second', "
            "       :t0 + (g + 1) * interval '1 second' FROM generate_series(0, :n - 1) AS g"),
            {"offset": offset, "sid": study_id, "t0": t0, "n": n})
        new = "FROM trials WHERE study_id = :sid AND number >= :offset"
        conn.execute(text(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
            f"SELECT trial_id, 'x', random() * 10.0 - 5.0, :dx {new}"),
            {"sid": study_id, "offset": offset, "dx": distribution_to_json(dists["x"])})
        conn.execute(text(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
            f"SELECT trial_id, 'y', floor(random() * 11.0), :dy {new}"),
            {"sid": study_id, "offset": offset, "dy": distribution_to_json(dists["y"])})
        conn.execute(text(
            "INSERT INTO trial_values (trial_id, objective, value, value_type) "
            "SELECT t.trial_id, 0, power(px.param_value - 2.0, 2) + power(py.param_value - 3.0, 2), 'FINITE' "
            "FROM trials t JOIN trial_params px ON px.trial_id = t.trial_id AND px.param_name = 'x' "
            "JOIN trial_params py ON py.trial_id = t.trial_id AND py.param_name = 'y' "
            "WHERE t.study_id = :sid AND t.number >= :offset"),
            {"sid": study_id, "offset": offset})
    engine.dispose()


def _check_fill(url: str, name: str) -> None:
    """Read the study back through optuna's public storage API: numbers 0..n-1, params, values."""
    import optuna
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(name)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        n, lo, hi = conn.execute(sqlalchemy.text(
            "SELECT count(*), min(number), max(number) FROM trials WHERE study_id = :sid"), {"sid": study_id}).one()
    engine.dispose()
    if n and (lo, hi) != (0, n - 1):
        raise RuntimeError("bulk fill: trial numbers are not 0..n-1; optuna's schema may have changed "
                           "(use --fill add_trials)")
    for number in (0, n // 2, n - 1):
        t = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
        x, y = t.params.get("x"), t.params.get("y")
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs:
            continue  # a trial a benchmark worker ran, not a filled one
        if (t.state != optuna.trial.TrialState.COMPLETE or not isinstance(y, int) or x is None
                or t.value is None or abs(t.value - ((x - 2.0) ** 2 + (y - 3) ** 2)) > 1e-6 or t.duration is None):
            raise RuntimeError(f"bulk fill: trial {t.number} reads back wrong ({t}); optuna's schema may "
                               "have changed (use --fill add_trials)")
    storage.remove_session()


def time_command(args: Sequence[str], *, cwd: Path, repeats: int) -> dict[str, Any]:
    """Median wall time of a command run ``repeats`` times (a new process each)."""
    times = []
    rc = 0
    out = ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        rc = rc or proc.returncode
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr)[-2000:]
    if rc:
        print(f"  {' '.join(args[:4])} ... exited {rc}:\n{out}", file=sys.stderr)
    return {"median_s": statistics.median(times), "times": times, "returncode": rc}


def command_times(url: str, study: str, *, size: int, folder: Path, repeats: int,
                  report: bool, no_plots: bool = True) -> dict[str, Any]:
    """``hyper-opt status`` and ``hyper-opt report`` on the study, as a user runs them."""
    py = sys.executable
    hyper, model = common.write_hyper_opt_search(folder, url=url, study=study, n_trials=max(size, 1),
                                                 sleep=0.0, timing_dir=folder / "timing")
    result = {"status": time_command([py, "-m", "hyper_opt", "status", str(hyper)], cwd=folder, repeats=repeats)}
    if report and _report_available():
        result["report"] = time_command([py, "-m", "hyper_opt", "report", str(hyper), str(model), "--out",
                                         str(folder / "report")], cwd=folder, repeats=repeats)
    if report and no_plots and _report_available():
        result["report_no_plots"] = time_command(
            [py, "-m", "hyper_opt", "report", str(hyper), str(model), "--no-plots", "--out",
             str(folder / "report_np")], cwd=folder, repeats=repeats)
    return result


def _report_available() -> bool:
    try:
        import hyper_opt.report as report
    except Exception:  # noqa: BLE001 - being written; time what exists
        return False
    return hasattr(report, "run") and hasattr(report, "add_arguments")


def run(*, quick: bool, sizes: Sequence[int] = (0, 2000, 10000), samplers: Sequence[str] | None = None,
        k: int | None = None, fill: str = "bulk", systems: Sequence[str] = ("optuna", "hyper_opt")) -> dict[str, Any]:
    import optuna

    url = common.ensure_pg_env()
    samplers = samplers or ("TPESampler", "RandomSampler")
    k = k or (10 if quick else 30)
    repeats = 1 if quick else 3
    py = sys.executable
    load_start = common.load_average()
    floor = time_command([py, "-m", "hyper_opt", "--help"], cwd=common.REPO, repeats=repeats)
    rows: list[dict[str, Any]] = []
    commands: list[dict[str, Any]] = []
    for si, sampler in enumerate(samplers):
        study = common.new_study_name(f"scale-{sampler[:3].lower()}")
        optuna.create_study(study_name=study, storage=url, direction="minimize")
        try:
            filled = 0
            for size in sizes:
                current = sum(common.study_counts(url, study).get(s, 0) for s in ("COMPLETE", "PRUNED"))
                add = max(0, size - filled)
                fill_s = common.retrying(lambda: fill_study(url, study, add, method=fill, seed=size + si),
                                         url=url, what=f"filling {add} trials")
                filled = size
                current += add
                if add:
                    print(f"  filled {add} trials in {fill_s:.1f} s ({fill})", file=sys.stderr)
                for system in systems:
                    def one() -> dict[str, Any]:
                        done = sum(common.study_counts(url, study).get(s, 0) for s in ("COMPLETE", "PRUNED"))
                        return overhead.run_workers(system, url=url, study=study, n=done + k, sleep=0.0,
                                                    workers=1, sampler=sampler)

                    r = common.retrying(one, url=url, what=f"scaling {sampler} {size} {system}")
                    current = sum(r["counts"].get(s, 0) for s in ("COMPLETE", "PRUNED"))
                    tm = r["timing"]
                    rows.append({"sampler": sampler, "size": size, "system": system, "k": k,
                                 "finished": r["finished"], "wall_s": r["wall_s"],
                                 "overhead_median_s": tm["overhead_median_s"], "overhead_p90_s": tm["overhead_p90_s"],
                                 "startup_s": tm["startup_s"], "load_before": r["load_before"]})
                    print(f"  {sampler:<13} size {size:>6} {system:<10} {r['finished']} trials, overhead median "
                          f"{common.fmt_s(tm['overhead_median_s'], ms=True)} ms, start-up "
                          f"{common.fmt_s(tm['startup_s'], digits=2)} s, load {r['load_before']:.2f}", file=sys.stderr)
                if si == 0:
                    with common.scratch("scaling-cmd") as folder:
                        times = command_times(url, study, size=size, folder=folder, repeats=repeats,
                                              report=not quick or size == max(sizes), no_plots=not quick)
                    commands.append({"size": size, **times})
                    print(f"  status at {size}: {times['status']['median_s']:.2f} s"
                          + (f", report {times['report']['median_s']:.2f} s" if "report" in times else ""),
                          file=sys.stderr)
        finally:
            common.delete_study(url, study)
    return {"rows": rows, "commands": commands, "floor": floor, "k": k, "fill": fill,
            "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    by = {(r["sampler"], r["size"], r["system"]): r for r in rows}
    table = []
    for r in rows:
        if r["system"] == "optuna":
            continue
        ref = by.get((r["sampler"], r["size"], "optuna"))
        ratio = "-"
        if ref and ref["overhead_median_s"] and r["overhead_median_s"]:
            ratio = f"{r['overhead_median_s'] / ref['overhead_median_s']:.2f}"
        table.append([r["sampler"], f"{r['size']:,}",
                      common.fmt_s(ref["overhead_median_s"] if ref else None, ms=True),
                      common.fmt_s(r["overhead_median_s"], ms=True), ratio,
                      common.fmt_s(ref["startup_s"] if ref else None, digits=2),
                      common.fmt_s(r["startup_s"], digits=2)])
    text = common.markdown_table(
        ["sampler", "trials in study", "optuna overhead ms/trial", "hyper_opt overhead ms/trial",
         "hyper_opt / optuna", "optuna start-up s", "hyper_opt start-up s"], table)
    cmd_rows = []
    for c in data["commands"]:
        cmd_rows.append([f"{c['size']:,}", f"{c['status']['median_s']:.2f}",
                         f"{c['report']['median_s']:.2f}" if "report" in c else
                         ("-" if _report_available() else "not implemented"),
                         f"{c['report_no_plots']['median_s']:.2f}" if "report_no_plots" in c else "-"])
    text += ("\n\nCommand times (a new process each, median of "
             f"{len(data['floor']['times'])}; `python -m hyper_opt --help` takes "
             f"{data['floor']['median_s']:.2f} s, the floor every command pays):\n\n")
    text += common.markdown_table(["trials in study", "hyper-opt status s", "hyper-opt report s",
                                   "report --no-plots s"], cmd_rows)
    return text
