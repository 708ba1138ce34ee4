"""Benchmark "distributed": what a 2-rank trial costs beside a 1-rank trial of the same work.

``python -m hyper_opt optimize HYPER MODEL --local`` with one worker, the study in its embedded
sqlite file, and an objective that does no work: it notes the wall clock when ``train`` is
entered, calls ``self.report(trial, value, step)`` (``trial.report`` + ``trial.should_prune``)
for ``STEPS`` steps in a row, and notes the clock again when it returns. The same search runs
with ``local: gpus_per_trial: 1`` (``train`` in the worker, as always) and ``2`` (two rank
processes per trial, hyper_opt.distributed), and for each once with a bare objective file and
once with one that imports torch at the top, as a DDP objective does. Measured per trial:

* **start-up**: the trial's ``datetime_start`` in the study (the worker has claimed it) to the
  moment ``train`` is entered on the last rank. With 1 rank that is suggesting the parameters and
  patching the config; with 2 it adds starting two Python processes, importing hyper_opt and the
  objective file (torch too, in the torch variant), reading the configs and constructing the
  objective on every rank;
* **per step**: the time of one ``report`` + ``should_prune``, in the worker (1 rank) or over
  the channel (2 ranks: rank 0 asks the worker, which writes the value and asks the pruner; rank
  1 waits for rank 0's decision at the same step). The pruner is a MedianPruner that never prunes
  here (``n_startup_trials`` larger than the study), so it reads the study at every step, as it
  does in a real search;
* **end**: ``train`` returned on the last rank to the trial recorded (``datetime_complete``): the
  ranks' results, their exit, then ``tell`` and the CSV, as with one rank.

    python -m benchmarks.distributed [--trials N] [--steps N]   # prints the table
    python -m benchmarks --quick --only distributed             # the same through the runner

Everything runs on this machine; no database server, Slurm or GPU is needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common

STEPS = 200
RANKS = (1, 2)
VARIANTS = ("bare", "import torch")

OBJECTIVE = textwrap.dedent('''
    """Written by benchmarks/distributed.py: no work, only the clock around STEPS reports."""
    import json, os, time
    from pathlib import Path
    {torch_import}
    from hyper_opt import BaseObjective


    class Objective(BaseObjective):
        def train(self, trial, conf):
            entered = time.time()
            steps = int(conf["bench"]["steps"])
            first = time.perf_counter()
            for step in range(steps):
                self.report(trial, float(conf["model"]["x"]), step)
            per_step = (time.perf_counter() - first) / steps if steps else None
            rank = int(os.environ.get("RANK", "0"))
            out = Path(conf["bench"]["timing_dir"]) / f"trial_{{trial.number}}_rank_{{rank}}.json"
            out.write_text(json.dumps({{"trial": trial.number, "rank": rank, "entered": entered,
                                       "per_step_s": per_step, "returned": time.time()}}))
            return {{"val_loss": float(conf["model"]["x"]) ** 2}}
''')


def write_search(folder: Path, *, ranks: int, variant: str, trials: int, steps: int) -> Path:
    """hyper.yml, model.yml and objective.py of one run; the folder for the rank timing files."""
    folder.mkdir(parents=True, exist_ok=True)
    timing_dir = folder / "timing"
    timing_dir.mkdir(exist_ok=True)
    torch_import = "import torch  # noqa: F401 - what a DDP objective pays on every rank" if variant != "bare" else ""
    (folder / "objective.py").write_text(OBJECTIVE.format(torch_import=torch_import))
    hyper = {
        "save_path": "results",
        "local": {"workers": 1, "gpus_per_trial": ranks},
        "optuna": {
            "study_name": "bench-distributed", "objective": "objective.py", "metric": "val_loss",
            "direction": "minimize", "n_trials": trials,
            "sampler": {"type": "RandomSampler", "seed": 1},
            "pruner": {"type": "MedianPruner", "n_startup_trials": 1000},  # asks the study, never prunes
            "parameters": {"model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}}},
        },
    }
    model = {"model": {"x": 0.0}, "bench": {"steps": steps, "timing_dir": str(timing_dir)}}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(model, sort_keys=False))
    return timing_dir


def run_search(*, ranks: int, variant: str, trials: int, steps: int, keep: bool = False) -> dict[str, Any]:
    """One ``optimize --local`` run; the per-trial figures from the study and the timing files."""
    import optuna

    with common.scratch(f"distributed-{ranks}", keep=keep) as folder:
        timing_dir = write_search(folder, ranks=ranks, variant=variant, trials=trials, steps=steps)
        load = common.load_average()[0]
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml", "--local"],
                              cwd=folder, capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise common.RunFailed(f"optimize exited {proc.returncode}:\n{proc.stderr[-3000:]}\n"
                                   + common.tail(folder / "results" / "logs" / "worker_0.log"))
        study = optuna.load_study(study_name="bench-distributed",
                                  storage=f"sqlite:///{folder / 'results' / 'hyper_opt.db'}")
        records: dict[int, list[dict[str, Any]]] = {}
        for path in timing_dir.glob("*.json"):
            record = json.loads(path.read_text())
            records.setdefault(record["trial"], []).append(record)
        per_trial = [_trial_figures(t, records.get(t.number, []), ranks) for t in study.trials]
    states = sorted({t.state.name for t in study.trials})
    return {"ranks": ranks, "variant": variant, "trials": trials, "steps": steps, "wall_s": wall,
            "load_before": load, "states": states, "per_trial": per_trial}


def _trial_figures(trial: Any, records: list[dict[str, Any]], ranks: int) -> dict[str, Any]:
    if len(records) != ranks or trial.datetime_start is None or trial.datetime_complete is None:
        return {"number": trial.number, "state": trial.state.name, "complete": False}
    start, end = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
    by_rank = {r["rank"]: r for r in records}
    return {
        "number": trial.number, "state": trial.state.name, "complete": True,
        "startup_s": max(r["entered"] for r in records) - start,
        "per_step_rank0_s": by_rank[0]["per_step_s"],
        "per_step_max_s": max(r["per_step_s"] for r in records),
        "end_s": end - max(r["returned"] for r in records),
        "trial_s": end - start,
    }


def run(*, quick: bool, trials: int | None = None, steps: int = STEPS) -> dict[str, Any]:
    """Every (variant, ranks) pair, 1 rank before 2 within a variant, one run each."""
    trials = trials or (4 if quick else 10)
    load_start = common.load_average()
    runs = []
    for variant in VARIANTS:
        for ranks in RANKS:
            t = time.monotonic()
            result = run_search(ranks=ranks, variant=variant, trials=trials, steps=steps)
            runs.append(result)
            row = summarise_run(result)
            print(f"  {variant:<12} ranks={ranks} start-up {common.fmt_s(row['startup_s'], ms=True)} ms  per step "
                  f"{common.fmt_s(row['per_step_rank0_s'], ms=True, digits=2)} ms  end "
                  f"{common.fmt_s(row['end_s'], ms=True)} ms  load {result['load_before']:.2f}  "
                  f"({time.monotonic() - t:.0f} s)", file=sys.stderr)
    return {"runs": runs, "trials": trials, "steps": steps,
            "load": {"start": load_start, "end": common.load_average()}}


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise_run(result: dict[str, Any]) -> dict[str, Any]:
    done = [t for t in result["per_trial"] if t.get("complete")]
    return {
        "variant": result["variant"], "ranks": result["ranks"], "timed": len(done), "trials": result["trials"],
        "states": result["states"], "wall_s": result["wall_s"], "load_before": result["load_before"],
        **{key: _median([t[key] for t in done]) for key in
           ("startup_s", "per_step_rank0_s", "per_step_max_s", "end_s", "trial_s")},
    }


def _extra_ms(row: dict[str, Any], base: dict[str, Any] | None, key: str, digits: int = 0) -> str:
    """How much longer than with 1 rank, in ms ("-" for the 1-rank rows)."""
    if base is None or row[key] is None or base[key] is None:
        return "-"
    return f"{(row[key] - base[key]) * 1000:+.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    rows = [summarise_run(r) for r in data["runs"]]
    one = {r["variant"]: r for r in rows if r["ranks"] == 1}
    table = []
    for r in rows:
        base = one.get(r["variant"]) if r["ranks"] > 1 else None
        extra = functools.partial(_extra_ms, r, base)
        table.append([
            r["variant"], r["ranks"], f"{r['timed']}/{r['trials']}", ", ".join(r["states"]),
            common.fmt_s(r["startup_s"], ms=True, digits=0), extra("startup_s"),
            common.fmt_s(r["per_step_rank0_s"], ms=True, digits=2),
            common.fmt_s(r["per_step_max_s"], ms=True, digits=2), extra("per_step_rank0_s", digits=2),
            common.fmt_s(r["end_s"], ms=True, digits=0), extra("end_s"),
            common.fmt_s(r["trial_s"], digits=2), f"{r['wall_s']:.1f}", f"{r['load_before']:.2f}",
        ])
    header = ["objective file", "ranks", "timed", "states", "start-up ms", "vs 1 rank",
              "per step ms (rank 0)", "per step ms (slowest rank)", "vs 1 rank", "end ms", "vs 1 rank",
              "trial s", "run wall s", "load before"]
    return (f"One local worker, {data['trials']} trials per row, {data['steps']} `report` + `should_prune` "
            "steps per trial with no work between them, sqlite storage; medians over the trials.\n\n"
            + common.markdown_table(header, table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per row (default 4)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"reports per trial (default {STEPS})")
    args = parser.parse_args(argv)
    before = common.load_average()[0]
    data = run(quick=True, trials=args.trials, steps=args.steps)
    print(markdown(data))
    print(f"\nload average {before:.2f} before, {common.load_average()[0]:.2f} after "
          f"({common.machine()['cpus']} cores); hyper_opt at {common.code_version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
