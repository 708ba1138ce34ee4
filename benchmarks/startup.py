"""Start-up, W=1 on PostgreSQL: from launching the command to the first trial RUNNING (issue 24,
item 4), hyper_opt beside plain optuna, started and timed the same way.

    python -m benchmarks.startup [--repeats 3]

* ``optuna``: ``python benchmarks/workloads/plain_worker.py --create ...``: what a user writes
  without hyper_opt (``create_study(load_if_exists=True)``, ``study.optimize`` with a
  ``MaxTrialsCallback``), RandomSampler;
* ``hyper-opt optimize --local``: ``python -m hyper_opt optimize HYPER MODEL --local --workers 1``:
  the command a user types; it validates both files, creates the study, checks the database's
  connections and starts one worker process, which opens the study and claims the first trial;
* ``hyper_opt.run``: the worker alone (``python -m hyper_opt.run HYPER MODEL``) on a study that
  ``optimize`` has created: what a Slurm or PBS job runs.

Each run uses a new study with one instant trial (n_trials 1). *to RUNNING* is the first trial's
``datetime_start`` (written by the client for optuna, by the server for hyper_opt's claim: the same
clock here) minus the moment the process was launched; *exit* the process's whole run. Best and
median of the repeats, the systems taking turns.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

SYSTEMS = ("optuna", "hyper-opt optimize --local", "hyper_opt.run")


def _first_running(url: str, study: str) -> float | None:
    """The epoch time of trial 0's start, or None."""
    import optuna

    trials = optuna.load_study(study_name=study, storage=url).trials
    return trials[0].datetime_start.timestamp() if trials and trials[0].datetime_start else None


def run_once(system: str, *, url: str, folder: Path) -> dict[str, Any]:
    import optuna

    study = common.new_study_name("startup")
    py = sys.executable
    hyper, model = common.write_hyper_opt_search(folder / study, url=url, study=study, n_trials=1, sleep=0.0,
                                                 timing_dir=folder / study / "timing", sampler="RandomSampler",
                                                 optuna_extra={"reload": 0})
    if system == "optuna":
        cmd = [py, str(common.WORKLOADS / "plain_worker.py"), "--storage", url, "--study", study, "--create",
               "--n-trials", "1", "--sampler", "RandomSampler"]
    elif system == "hyper-opt optimize --local":
        cmd = [py, "-m", "hyper_opt", "optimize", str(hyper), str(model), "--local", "--workers", "1"]
    else:
        done = subprocess.run([py, "-m", "hyper_opt", "optimize", str(hyper), str(model), "--dry-run"],
                              capture_output=True, text=True, cwd=common.REPO)
        if done.returncode not in (0,):
            raise common.RunFailed(f"optimize --dry-run: {done.stderr[-1500:]}")
        # the study as optimize leaves it for its jobs: created, nothing run
        from hyper_opt.config import load_config
        from hyper_opt.study import open_study

        config, _ = load_config(hyper, model)
        open_study(config, create=True, check_reload=True).lock.close()
        cmd = [py, "-m", "hyper_opt.run", str(hyper), str(model)]
    load_before = common.load_average()[0]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
    t_end = time.time()
    try:
        if proc.returncode != 0:
            raise common.RunFailed(f"{system} exited {proc.returncode}: {proc.stderr[-1500:]}")
        started = _first_running(url, study)
    finally:
        common.delete_study(url, study)
    del optuna
    return {"system": system, "to_running_s": None if started is None else started - t0,
            "exit_s": t_end - t0, "load_before": load_before}


def run(*, repeats: int = 3, systems: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
    url = common.ensure_pg_env()
    rows: list[dict[str, Any]] = []
    load_start = common.load_average()
    with common.scratch("startup") as folder:
        for _ in range(repeats):
            for system in systems:
                rows.append(run_once(system, url=url, folder=folder))
                print(f"  start-up {system}: {rows[-1]['to_running_s']:.2f} s to RUNNING", file=sys.stderr)
    return {"rows": rows, "repeats": repeats, "code": common.code_version(),
            "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    table = []
    for system in dict.fromkeys(r["system"] for r in data["rows"]):
        runs = [r for r in data["rows"] if r["system"] == system]
        to_run = [r["to_running_s"] for r in runs if r["to_running_s"] is not None]
        exits = [r["exit_s"] for r in runs]
        table.append([system, f"{min(to_run):.2f}", f"{statistics.median(to_run):.2f}",
                      f"{min(exits):.2f}", f"{statistics.median(exits):.2f}"])
    return (f"W=1 on PostgreSQL, one instant trial, {data['repeats']} runs each taking turns; load average "
            f"{data['load']['start'][0]:.2f} before, {data['load']['end'][0]:.2f} after; hyper_opt at {data['code']}.\n\n"
            + common.markdown_table(["system", "to RUNNING best s", "to RUNNING median s", "exit best s",
                                     "exit median s"], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    args = parser.parse_args(argv)
    systems = tuple(s.strip() for s in args.systems.split(",")) if args.systems else SYSTEMS
    print(markdown(run(repeats=args.repeats, systems=systems)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
