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


# --------------------------------------------------------------------------- the "report" section of run.py

# Plain optuna's equivalents, run as a user would type them (a new process, imports included):
# "report" = load_study, trials_dataframe to CSV, then optuna.visualization.matplotlib's plots of
# the figures hyper_opt's report draws; "status" = load_study, count the trials by state, best_trial.
# Each plot is drawn from the trials loaded once (a study whose get_trials answers that list), as
# hyper_opt's report does, so that the plot times are drawing only.
OPTUNA_SCRIPT = textwrap.dedent('''
    import json, os, sys, time, warnings
    started = time.perf_counter()
    import matplotlib
    matplotlib.use("Agg")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    mode, url, name, out = sys.argv[1:5]
    plots = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else []
    times = {}
    t0 = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    times["read trials"] = time.perf_counter() - t0
    if mode == "status":
        counts = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        print(counts, study.best_trial.number, study.best_trial.params, file=sys.stderr)
    else:
        t0 = time.perf_counter()
        study.trials_dataframe().to_csv(os.path.join(out, "trials.csv"))
        times["trials.csv"] = time.perf_counter() - t0
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as vm
        study.get_trials = lambda deepcopy=True, states=None: [t for t in trials if states is None or t.state in states]
        functions = {"optimization_history.png": vm.plot_optimization_history,
                     "intermediate_values.png": vm.plot_intermediate_values,
                     "param_importances.png": vm.plot_param_importances,
                     "parallel_coordinate.png": vm.plot_parallel_coordinate, "slice.png": vm.plot_slice}
        for filename in plots:
            t0 = time.perf_counter()
            ax = functions[filename](study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.savefig(os.path.join(out, filename))
            plt.close(figure)
            times[filename] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - started
    print(json.dumps(times))
''')
OPTUNA_PLOTS = ("optimization_history.png", "intermediate_values.png", "param_importances.png",
                "parallel_coordinate.png", "slice.png")


def _timed_process(argv: list[str], *, cwd: Path, timeout: float | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of a command; raises with its output when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def _optuna(mode: str, url: str, name: str, out: Path, plots: list[str], *, timeout: float | None = None
            ) -> dict[str, float] | None:
    """Plain optuna's timings (JSON from OPTUNA_SCRIPT), with the process's wall clock; None on timeout."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        wall, stdout = _timed_process([sys.executable, "-c", OPTUNA_SCRIPT, mode, url, name, str(out), ",".join(plots)],
                                      cwd=out, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return {**json.loads(stdout.strip().splitlines()[-1]), "process": wall}


def compare_plots(trials: list[Any], out: Path, *, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per figure, hyper_opt's plot and optuna.visualization.matplotlib's taking turns
    (so that a change in the machine's load hits both), from the same trials in this process.
    optuna's learning-curve plot is left out: it draws every curve (minutes at 5,000 trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm

    from hyper_opt import plots
    from hyper_opt.trials import _listed_study, param_importances

    out.mkdir(parents=True, exist_ok=True)
    study = _listed_study(trials, ["minimize"])
    importances, what = param_importances(trials, ["minimize"], notes=[])
    order = list(importances or {})
    kw: dict[str, Any] = {"directions": ["minimize"], "names": ["val_loss"]}
    ours = {"optimization_history.png": lambda p: plots.optimization_history(trials, p, **kw),
            "intermediate_values.png": lambda p: plots.intermediate_values(trials, p, direction="minimize",
                                                                           name="val_loss"),
            "param_importances.png": lambda p: plots.param_importances(importances or {}, p, what=what),
            "parallel_coordinate.png": lambda p: plots.parallel_coordinate(trials, p, param_order=order, **kw),
            "slice.png": lambda p: plots.slice_plot(trials, p, param_order=order, **kw)}
    theirs = {"optimization_history.png": vm.plot_optimization_history,
              "param_importances.png": vm.plot_param_importances,
              "parallel_coordinate.png": vm.plot_parallel_coordinate, "slice.png": vm.plot_slice}

    def optuna_plot(fn: Any, path: Path) -> None:
        ax = fn(study)
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        figure.savefig(path)
        plt.close(figure)

    import warnings

    result: dict[str, dict[str, list[float]]] = {name: {"hyper_opt": [], "optuna": []} for name in ours}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for name, draw in ours.items():
                t0 = time.perf_counter()
                draw(out / name)
                result[name]["hyper_opt"].append(time.perf_counter() - t0)
                if name in theirs:
                    t0 = time.perf_counter()
                    optuna_plot(theirs[name], out / f"optuna_{name}")
                    result[name]["optuna"].append(time.perf_counter() - t0)
    return result


def run(quick: bool) -> dict[str, Any]:
    """hyper_opt's report and status against plain optuna's equivalents on one PostgreSQL study."""
    import optuna

    from hyper_opt.config import load_config
    from hyper_opt.report import write_report
    from hyper_opt.report.reading import read_trials
    from hyper_opt.study import open_study, read_study

    url = os.environ.get("HYPER_OPT_TEST_PG_URL", "")
    if not url:
        raise RuntimeError("the report benchmark needs HYPER_OPT_TEST_PG_URL (scripts/local_cluster.sh env)")
    n_trials, steps = 5000, 20
    repeats = 2 if quick else 3
    intermediate_timeout = 60.0 if quick else 600.0
    folder = Path(tempfile.mkdtemp(prefix="bench_report_"))
    hyper = write_search(folder, url, objectives=1)
    config, model = load_config(hyper, folder / "model.yml")
    opened = open_study(config, create=True)
    opened.lock.close()
    name = config.optuna.study_name
    data: dict[str, Any] = {"trials": n_trials, "steps": steps, "storage": "postgresql", "repeats": repeats}
    try:
        trials = synthetic_trials(n_trials, steps=steps, objectives=1)
        bulk_insert(url, opened.study_id, trials)
        try:
            check_read_back(opened.storage, opened.study_id, trials)
        except SystemExit as err:  # one failed section must not end the other benchmarks
            raise RuntimeError(str(err)) from None
        data["states"] = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        cli = [sys.executable, "-m", "hyper_opt"]
        report_s = [_timed_process([*cli, "report", str(hyper), str(folder / "model.yml")], cwd=folder)[0]
                    for _ in range(repeats)]
        status_s = [_timed_process([*cli, "status", str(hyper)], cwd=folder)[0] for _ in range(repeats)]
        # in this process: the phases, with the plots drawn one after the other (processes=0),
        # scikit-learn imported beforehand (plain optuna's importance plot pays that import)
        import optuna.importance  # noqa: F401

        serial = write_report(config, model, out=folder / "serial", processes=0)
        reader = read_study(config)
        t0 = time.perf_counter()
        loaded = read_trials(reader.storage, reader.study_id)
        bulk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reader.storage.get_all_trials(reader.study_id, deepcopy=False)
        optuna_read_s = time.perf_counter() - t0
        reader.storage.engine.dispose()
        data["plots"] = compare_plots(loaded, folder / "plots", repeats=repeats)
        data["hyper_opt"] = {"report_cli_s": report_s, "status_cli_s": status_s, "bulk_read_s": bulk_s,
                             "serial_phases": {k: round(v, 3) for k, v in serial.timings.items()}}
        others = [p for p in OPTUNA_PLOTS if p != "intermediate_values.png"]
        plain_report = [_optuna("report", url, name, folder / "optuna", others) for _ in range(repeats)]
        plain_status = [_optuna("status", url, name, folder / "optuna", []) for _ in range(repeats)]
        intermediate = _optuna("report", url, name, folder / "optuna_iv", ["intermediate_values.png"],
                               timeout=intermediate_timeout)
        data["optuna"] = {"report": plain_report, "status": plain_status, "get_all_trials_s": optuna_read_s,
                          "intermediate": intermediate, "intermediate_timeout_s": intermediate_timeout}
    finally:
        optuna.delete_study(study_name=name, storage=opened.storage)
        opened.storage.engine.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    return data


def markdown(data: dict[str, Any]) -> str:
    from benchmarks import common

    ho, op = data["hyper_opt"], data["optuna"]
    best = min
    plain_reports = [r for r in op["report"] if r]
    iv = op.get("intermediate")
    iv_s = iv.get("intermediate_values.png") if iv else None
    iv_text = common.fmt_s(iv_s, digits=2) if iv_s is not None else f"> {op['intermediate_timeout_s']:.0f} (stopped)"
    plain_report_s = best(r["process"] for r in plain_reports)
    with_iv = f"{plain_report_s + iv_s:.1f}" if iv_s is not None else f"> {plain_report_s + op['intermediate_timeout_s']:.0f}"
    phases = ho["serial_phases"]
    rows = [
        ["`report` as typed (new process, imports included)",
         f"{plain_report_s:.1f} without its intermediate-values plot, {with_iv} with it",
         f"**{best(ho['report_cli_s']):.1f}**"],
        ["`status` as typed", f"{best(r['process'] for r in op['status'] if r):.1f}",
         f"**{best(ho['status_cli_s']):.1f}**"],
        ["reading the trials (in-process)", f"{op['get_all_trials_s']:.2f} (get_all_trials)",
         f"{ho['bulk_read_s']:.2f} (bulk SELECTs)"],
        ["trials.csv", f"{best(r['trials.csv'] for r in plain_reports):.2f} (trials_dataframe)",
         f"{phases.get('trials.csv', 0):.2f}"],
    ]
    rows.append(["importances (PED-ANOVA)", "in its plot's time", f"{phases.get('importances', 0):.2f}"])
    for filename in OPTUNA_PLOTS:
        turns = data.get("plots", {}).get(filename, {})
        plain = iv_text if filename == "intermediate_values.png" else \
            (f"{best(turns['optuna']):.2f}" if turns.get("optuna") else "-")
        mine = f"{best(turns['hyper_opt']):.2f}" if turns.get("hyper_opt") else "-"
        rows.append([filename, plain, mine])
    states = ", ".join(f"{k} {v}" for k, v in data.get("states", {}).items())
    head = (f"{data['trials']:,} trials x {data['steps']} reported steps ({states}) on PostgreSQL; seconds, best of "
            f"{data['repeats']}. Plain optuna: `optuna.load_study(...)`, `trials_dataframe().to_csv(...)` and "
            "`optuna.visualization.matplotlib`'s plots of the same figures (each from the trials read once); "
            "its status: `load_study`, the trials counted by state, `best_trial`. The plot rows: each figure "
            "drawn and saved in one process from the same trials, hyper_opt's and optuna's taking turns "
            "(`hyper-opt report` itself draws its plots in parallel worker processes); optuna's importance "
            "plot includes computing the importances, hyper_opt's importances are the row above it.\n\n")
    return head + common.markdown_table(["5,000-trial study", "plain optuna", "hyper_opt"], rows)


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
