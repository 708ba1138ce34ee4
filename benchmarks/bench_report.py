"""How long ``hyper-opt report`` takes on a big study.

    python benchmarks/bench_report.py                         # 5,000 trials in a temporary sqlite file
    python benchmarks/bench_report.py --storage postgres      # in $HYPER_OPT_TEST_PG_URL (PGPASSWORD)
    python benchmarks/bench_report.py --storage URL --trials 20000 --objectives 2

It creates a study of N synthetic trials (COMPLETE, PRUNED with shorter learning curves, FAIL with
tracebacks, a few RUNNING; each with the metrics and run context a worker records), then times
the report twice: in this process phase by phase (``write_report``) and as the command a user
types (``python -m hyper_opt report``, imports included). The study is deleted afterwards unless
``--keep``.

Creating trials: optuna's ``study.add_trials`` costs about 60 database round trips per trial with
20 reported steps (about 0.1 s per trial on PostgreSQL, so 8 minutes for 5,000). The default
``--create bulk`` therefore inserts the rows of optuna's tables directly with SQLAlchemy (a few
seconds), then reads the study back through optuna's public API and checks sample trials
against what was meant, so a schema change fails loudly instead of timing a wrong study.
``--create add_trials`` uses optuna's API only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTIVE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            raise RuntimeError("the benchmark study is synthetic; nothing trains")
''')

PARAMETERS = {
    "optimizer:lr": {"type": "loguniform", "settings": {"name": "lr", "low": 1e-5, "high": 1e-1}},
    "optimizer:weight_decay": {"type": "float", "settings": {"name": "weight_decay", "low": 0.0, "high": 0.1}},
    "model:dropout": {"type": "float", "settings": {"name": "dropout", "low": 0.0, "high": 0.6}},
    "model:units": {"type": "int", "settings": {"name": "units", "low": 16, "high": 1024, "log": True}},
    "model:layers": {"type": "int", "settings": {"name": "layers", "low": 1, "high": 6}},
    "model:activation": {"type": "categorical", "settings": {"name": "activation",
                                                            "choices": ["relu", "gelu", "tanh", "silu"]}},
}
MODEL = {"optimizer": {"lr": 0.001, "weight_decay": 0.0},
         "model": {"dropout": 0.1, "units": 128, "layers": 2, "activation": "relu"},
         "train": {"epochs": 20, "batch_size": 64}}
ERRORS = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {:.2f} GiB",
          "ValueError: loss is nan at step {:.0f}",
          "RuntimeError: DataLoader worker (pid {:.0f}) is killed by signal: Killed."]


def distributions() -> dict[str, Any]:
    import optuna.distributions as d

    return {"lr": d.FloatDistribution(1e-5, 1e-1, log=True), "weight_decay": d.FloatDistribution(0.0, 0.1),
            "dropout": d.FloatDistribution(0.0, 0.6), "units": d.IntDistribution(16, 1024, log=True),
            "layers": d.IntDistribution(1, 6),
            "activation": d.CategoricalDistribution(["relu", "gelu", "tanh", "silu"])}


def synthetic_trials(n: int, *, steps: int, objectives: int, seed: int = 0) -> list[Any]:
    """N FrozenTrials that look like a real search's: learning curves, metrics, run context."""
    import optuna
    from optuna.trial import TrialState

    rng = random.Random(seed)
    dists = distributions()
    start = dt.datetime(2025, 1, 1, 8, 0, 0)
    out = []
    for number in range(n):
        p: dict[str, Any] = {
            "lr": 10 ** rng.uniform(-5, -1), "weight_decay": rng.uniform(0, 0.1), "dropout": rng.uniform(0, 0.6),
            "units": int(round(2 ** rng.uniform(4, 10))), "layers": rng.randint(1, 6),
            "activation": rng.choice(["relu", "gelu", "tanh", "silu"])}
        final = (abs(p["lr"] ** 0.5 - 0.05) * 8 + p["dropout"] * 0.3 + 0.05 * abs(p["layers"] - 3)
                 + (0.05 if p["activation"] == "tanh" else 0.0) + rng.gauss(0, 0.02) + 0.1)
        state = (TrialState.RUNNING if number >= n - max(1, n // 100) else
                 rng.choices([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL], [0.6, 0.32, 0.08])[0])
        n_steps = {TrialState.COMPLETE: steps, TrialState.PRUNED: rng.randint(1, max(1, steps // 2)),
                   TrialState.FAIL: rng.randint(0, steps - 1), TrialState.RUNNING: rng.randint(0, steps - 1)}[state]
        curve = {s: final + 2.0 / (s + 1) + rng.gauss(0, 0.01) for s in range(n_steps)}
        began = start + dt.timedelta(minutes=2 * number / 8)
        seconds = 60 * (n_steps + 1) * (1 + p["layers"] / 6)
        latency = p["units"] * p["layers"] / 100 + rng.gauss(0, 0.1)
        values: list[float] | None = None
        if state == TrialState.COMPLETE:
            values = [final, latency][:objectives]
        elif state == TrialState.PRUNED and n_steps and objectives == 1:
            values = [curve[n_steps - 1]]
        user_attrs: dict[str, Any] = {"hostname": f"node{number % 16:02d}", "slurm_job_id": f"{1000 + number // 8}",
                                      "cuda_visible_devices": str(number % 4), "worker_pid": str(4000 + number % 8)}
        if state == TrialState.COMPLETE:
            user_attrs["metrics"] = {"val_loss": final, "latency": latency, "train_loss": final * 0.8,
                                     "accuracy": 1 / (1 + final)}
        system_attrs: dict[str, Any] = {}
        if state == TrialState.FAIL:
            error = rng.choice(ERRORS).format(rng.uniform(1, 4000))
            user_attrs["error"] = ("Traceback (most recent call last):\n  File \"objective.py\", line 42, in train\n"
                                   f"    loss = model(batch)\n{error}\n")
        elif number > 0 and rng.random() < 0.02:
            system_attrs["failed_trial"] = number - 1
        out.append(optuna.trial.create_trial(
            state=state, values=values, params=p, distributions=dists,
            intermediate_values=curve if objectives == 1 else {}, user_attrs=user_attrs,
            system_attrs=system_attrs))
        out[-1].number = number
        out[-1].datetime_start = began
        out[-1].datetime_complete = None if state == TrialState.RUNNING else began + dt.timedelta(seconds=seconds)
    return out


def bulk_insert(url: str, study_id: int, trials: list[Any]) -> None:
    """Insert ``trials`` into optuna's tables directly (a handful of statements)."""
    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=["trials", "trial_params", "trial_values", "trial_intermediate_values",
                               "trial_user_attributes", "trial_system_attributes"])
    tables = meta.tables
    with engine.begin() as conn:
        conn.execute(tables["trials"].insert(), [
            {"number": t.number, "study_id": study_id, "state": t.state.name,
             "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete} for t in trials])
        ids = dict(conn.execute(sa.select(tables["trials"].c.number, tables["trials"].c.trial_id)
                                .where(tables["trials"].c.study_id == study_id)).all())
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
        for t in trials:
            tid = ids[t.number]
            for name, value in t.params.items():
                dist = t.distributions[name]
                rows["trial_params"].append({"trial_id": tid, "param_name": name,
                                             "param_value": dist.to_internal_repr(value),
                                             "distribution_json": distribution_to_json(dist)})
            for k, v in enumerate(t.values or ()):
                rows["trial_values"].append({"trial_id": tid, "objective": k, "value": v, "value_type": "FINITE"})
            for step, v in t.intermediate_values.items():
                rows["trial_intermediate_values"].append({"trial_id": tid, "step": step, "intermediate_value": v,
                                                          "intermediate_value_type": "FINITE"})
            for key, v in t.user_attrs.items():
                rows["trial_user_attributes"].append({"trial_id": tid, "key": key, "value_json": json.dumps(v)})
            for key, v in t.system_attrs.items():
                rows["trial_system_attributes"].append({"trial_id": tid, "key": key, "value_json": json.dumps(v)})
        for name, batch in rows.items():
            if batch:
                conn.execute(tables[name].insert(), batch)
    engine.dispose()


def check_read_back(storage: Any, study_id: int, meant: list[Any]) -> None:
    """Read the study through optuna and compare sample trials with what was inserted."""
    got = {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}
    if len(got) != len(meant):
        raise SystemExit(f"bulk insert: optuna reads {len(got)} trials, {len(meant)} were written; "
                         "use --create add_trials")
    for t in meant[:: max(1, len(meant) // 50)]:
        g = got[t.number]
        same = (g.state == t.state and g.params == t.params and g.values == t.values
                and g.intermediate_values == t.intermediate_values and g.user_attrs == t.user_attrs
                and g.system_attrs == t.system_attrs and g.datetime_start == t.datetime_start)
        if not same:
            raise SystemExit(f"bulk insert: trial {t.number} reads back differently from what was written "
                             f"(optuna's schema changed?); use --create add_trials\nwritten {t}\nread {g}")


def write_search(folder: Path, storage_url: str, *, objectives: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "objective.py").write_text(OBJECTIVE)
    opt: dict[str, Any] = {"study_name": f"bench-report-{uuid.uuid4().hex[:8]}", "objective": "objective.py",
                           "metric": ["val_loss", "latency"][:objectives],
                           "direction": ["minimize", "minimize"][:objectives],
                           "n_trials": 100000, "parameters": PARAMETERS, "storage": storage_url}
    (folder / "hyper.yml").write_text(yaml.safe_dump({"save_path": str(folder / "results"), "optuna": opt},
                                                     sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(MODEL, sort_keys=False))
    return folder / "hyper.yml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5000, help="trials in the study (default 5000)")
    parser.add_argument("--steps", type=int, default=20, help="reported steps of a completed trial (default 20)")
    parser.add_argument("--objectives", type=int, choices=(1, 2), default=1)
    parser.add_argument("--storage", default="sqlite", metavar="URL|sqlite|postgres",
                        help="a database URL; 'sqlite' (default): a temporary file; 'postgres': "
                             "$HYPER_OPT_TEST_PG_URL (password from PGPASSWORD)")
    parser.add_argument("--create", choices=("bulk", "add_trials"), default="bulk",
                        help="how to create the trials (see the module docstring)")
    parser.add_argument("--repeat", type=int, default=2, help="time the in-process report this many times")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the command in a new process")
    parser.add_argument("--keep", action="store_true", help="keep the study and the folder (printed)")
    args = parser.parse_args(argv)

    import optuna

    from hyper_opt.config import load_config, mask_url
    from hyper_opt.report import write_report
    from hyper_opt.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="bench_report_"))
    if args.storage == "sqlite":
        url = f"sqlite:///{folder / 'results' / 'bench.db'}"
    elif args.storage == "postgres":
        url = os.environ.get("HYPER_OPT_TEST_PG_URL", "")
        if not url:
            raise SystemExit("--storage postgres: set HYPER_OPT_TEST_PG_URL (and PGPASSWORD)")
    else:
        url = args.storage
    hyper = write_search(folder, url, objectives=args.objectives)
    config, model = load_config(hyper, folder / "model.yml")
    opened = open_study(config, create=True)
    opened.lock.close()
    try:
        t0 = time.perf_counter()
        trials = synthetic_trials(args.trials, steps=args.steps, objectives=args.objectives)
        made_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.create == "bulk":
            bulk_insert(config.optuna.storage.url or "", opened.study_id, trials)
            create_s = time.perf_counter() - t0
            check_read_back(opened.storage, opened.study_id, trials)
        else:
            opened.study.add_trials(trials)
            create_s = time.perf_counter() - t0
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        print(f"storage        {mask_url(url)}")
        print(f"study          {args.trials} trials ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
              f"{args.steps} steps per completed trial, {len(PARAMETERS)} parameters, {args.objectives} objective(s)")
        print(f"create         {create_s:.1f} s ({args.create}; building the trials in memory {made_s:.1f} s)")
        for i in range(args.repeat):
            cpu = time.process_time()
            report = write_report(config, model)
            cpu = time.process_time() - cpu
            phases = ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items() if k != "total")
            print(f"report #{i + 1}      {report.timings['total']:.2f} s in-process, {cpu:.2f} s CPU ({phases})")
        if not args.no_cli:
            t0 = time.perf_counter()
            before = os.times()
            proc = subprocess.run([sys.executable, "-m", "hyper_opt", "report", str(hyper), str(folder / "model.yml")],
                                  capture_output=True, text=True, cwd=folder,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            cli_s = time.perf_counter() - t0
            after = os.times()
            cli_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            if proc.returncode != 0:
                raise SystemExit(f"hyper-opt report failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            print(f"report CLI     {cli_s:.2f} s wall clock, {cli_cpu:.2f} s CPU "
                  "(python -m hyper_opt report, imports included)")
        if args.repeat:
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in report.files)
            print(f"files          {sizes}")
            for note in report.notes:
                print(f"note           {note}")
    finally:
        if args.keep:
            print(f"kept           study {config.optuna.study_name!r} and {folder}")
        else:
            optuna.delete_study(study_name=config.optuna.study_name, storage=opened.storage)
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
