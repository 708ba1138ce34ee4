"""Benchmark 4: search efficiency on the metric-learning example, over seeds.

The example of examples/torch/metric_learning (pytorch-metric-learning on the built-in glyphs
dataset: ~240 characters drawn from matplotlib's fonts, class-disjoint folds and test classes),
shrunk so that one trial costs a few CPU-seconds (:data:`BENCH_MODEL`), searched five ways at the
same budget of trials, for several sampler seeds each:

* ``random``: ``RandomSampler``, no pruner;
* ``TPE``: ``TPESampler``, no pruner;
* ``TPE + Median``: ``MedianPruner`` after each epoch (``fold_schedule: interleaved``);
* ``TPE + Hyperband``: ``HyperbandPruner`` over the epochs (interleaved);
* ``TPE + Wilcoxon``: optuna's ``WilcoxonPruner`` across the CV folds (``fold_schedule:
  sequential``, so that a step is one fold's epoch and the pruner compares the folds' values with
  the best trial's, pairwise).

Pruned searches run on for :data:`PRUNED_EXTRA` times the budget of trials (their first N trials
are the same-budget search), so that their curves reach the compute the unpruned searches spend.

Each search is ``hyper-opt optimize`` with one local worker on its own SQLite file, one torch thread
per trial; two searches run side by side. The objective is the built-in one with the CPU time of
each trial recorded (benchmarks/workloads/ml_objective.py). Then ``hyper-opt test`` scores each
search's best trial on the held-out characters. The result: the best validation MAP@R against
cumulative CPU-seconds (median and range over seeds), the CPU-seconds each strategy needs to reach
random search's final best (median over seeds), and the test MAP@R of each strategy's best trial.

    python -m benchmarks.search_efficiency --quick        # 5 seeds, 6 trials of 3 epochs: ~28 CPU-minutes
    python -m benchmarks.search_efficiency                # 5 seeds, 16 trials
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common

EXAMPLE = common.REPO / "examples" / "torch" / "metric_learning"
STRATEGIES: dict[str, dict[str, Any]] = {
    "random": {"sampler": "RandomSampler", "pruner": None},
    "TPE": {"sampler": "TPESampler", "pruner": None},
    "TPE + Median": {"sampler": "TPESampler",
                     "pruner": {"type": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}},
    "TPE + Hyperband": {"sampler": "TPESampler",
                        "pruner": {"type": "HyperbandPruner", "min_resource": 1, "reduction_factor": 3}},
    "TPE + Wilcoxon": {"sampler": "TPESampler", "pruner": {"type": "WilcoxonPruner", "p_threshold": 0.1,
                                                           "n_startup_steps": 2},
                       "model": {"fold_schedule": "sequential"}},
}
# The example's model, shrunk so that a trial costs a few CPU-seconds (3 conv layers of 16-32
# channels, 4 epochs of 12 batches of 32 per fold) and still learns (validation MAP@R ~0.15 after
# 4 epochs, above the raw pixels' ~0.08).
BENCH_MODEL: dict[str, Any] = {"max_epochs": 4, "iterations_per_epoch": 12, "batch_size": 32,
                               "models": {"trunk": {"CNN": {"channels": [16, 32, 32], "output_size": 64}}}}
QUICK_MODEL: dict[str, Any] = {"max_epochs": 3, "iterations_per_epoch": 10}  # --quick: ~6 CPU-s a trial
# The pruned search runs this many times the budget of trials, so that its curve also reaches the
# compute the unpruned searches spend; its first ``n_trials`` trials are exactly the search with
# the common budget (same seed, same history, seeded training), which the table reports.
PRUNED_EXTRA = 1.5
MAP = "mean_average_precision_at_r"


def available() -> str | None:
    """None when the example and the objective can run; otherwise why not."""
    for name in ("hyperparameters.yml", "model_config.yml"):
        if not (EXAMPLE / name).exists():
            return f"{EXAMPLE / name} does not exist yet"
    try:
        from hyper_opt.metric_learning.objective import Objective  # noqa: F401
    except Exception as err:  # noqa: BLE001 - being written by someone else
        return f"hyper_opt.metric_learning.objective does not import: {err}"
    return None


def write_search(folder: Path, *, strategy: str, seed: int, n_trials: int,
                 model_overrides: dict[str, Any] | None = None,
                 optuna_overrides: dict[str, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """The example's two files, changed only in sampler, pruner, seed, budget and storage."""
    folder.mkdir(parents=True, exist_ok=True)
    hyper = yaml.safe_load((EXAMPLE / "hyperparameters.yml").read_text())
    model = yaml.safe_load((EXAMPLE / "model_config.yml").read_text())
    spec = STRATEGIES[strategy]
    max_epochs = int((model_overrides or {}).get("max_epochs", model.get("max_epochs", 10)))
    opt = hyper["optuna"]
    opt["study_name"] = common.new_study_name("ml")
    opt["storage"] = "study.db"
    opt["reload"] = 0
    opt["objective"] = str(common.WORKLOADS / "ml_objective.py")
    opt["n_trials"] = n_trials
    sampler = dict(opt.get("sampler") or {})
    if spec["sampler"] == "TPESampler":
        sampler["type"] = "TPESampler"
    else:
        sampler = {"type": spec["sampler"]}
    sampler["seed"] = seed
    opt["sampler"] = sampler
    if not spec["pruner"]:
        opt.pop("pruner", None)
    else:
        opt["pruner"] = dict(spec["pruner"])
        if opt["pruner"]["type"] == "HyperbandPruner":
            opt["pruner"]["max_resource"] = max_epochs  # interleaved: a step is an epoch
    for key, values in (optuna_overrides or {}).items():
        if key == "sampler" and sampler["type"] != "TPESampler":
            continue  # n_startup_trials is TPE's
        if isinstance(opt.get(key), dict):
            opt[key].update(values)
    hyper["save_path"] = str(folder / "results")
    hyper["local"] = {"workers": 1}
    hyper.pop("slurm", None)
    model.update(model_overrides or {})
    model.update(spec.get("model") or {})
    model["torch_threads"] = 1
    (folder / "hyperparameters.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model_config.yml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder / "hyperparameters.yml", folder / "model_config.yml"


def read_trials(folder: Path, hyper: Path) -> list[dict[str, Any]]:
    import optuna

    data = yaml.safe_load(hyper.read_text())
    storage = f"sqlite:///{folder / 'results' / 'study.db'}"
    study = optuna.load_study(study_name=data["optuna"]["study_name"], storage=storage)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "cpu_s": t.user_attrs.get("bench_cpu_s"), "wall_s": t.user_attrs.get("bench_wall_s"),
                     "duration_s": t.duration.total_seconds() if t.duration else None,
                     "epochs": len(t.intermediate_values)})
    return rows


def curve(trials: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(cumulative CPU-seconds, best finished value so far) after each trial, in trial order.

    Pruned trials count their compute; their value is not a candidate for the best (it is the
    last intermediate value, not a full training's result)."""
    points = []
    spent = 0.0
    best = float("-inf")
    for t in trials:
        spent += t["cpu_s"] or 0.0
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, t["value"])
        points.append((spent, best))
    return points


def compute_to_reach(points: Sequence[tuple[float, float]], target: float) -> float | None:
    for spent, best in points:
        if best >= target:
            return spent
    return None


def test_best(folder: Path, hyper: Path, model: Path, *, baseline: bool) -> dict[str, Any] | None:
    """``hyper-opt test`` on the search's best trial: its test-set scores (None when it failed)."""
    args = [sys.executable, "-m", "hyper_opt", "test", str(hyper), str(model)]
    proc = subprocess.run(args if baseline else [*args, "--no-baseline"], cwd=folder, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        print(f"  hyper-opt test failed in {folder}:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    found = sorted((folder / "results" / "metric_learning").glob("trial_*/test_results.yml"),
                   key=lambda f: f.stat().st_mtime)
    return yaml.safe_load(found[-1].read_text())["results"] if found else None


def run(*, quick: bool, seeds: Sequence[int] | None = None, n_trials: int | None = None,
        parallel: int | None = None, strategies: Sequence[str] = tuple(STRATEGIES),
        keep: bool = False) -> dict[str, Any]:
    why = available()
    if why:
        print(f"  search efficiency skipped: {why}", file=sys.stderr)
        return {"skipped": why}
    seeds = list(seeds or range(5))
    parallel = parallel or 2  # CPU-seconds do not depend on it; wall time does
    n_trials = n_trials or (6 if quick else 16)
    model_overrides = {**BENCH_MODEL, **(QUICK_MODEL if quick else {})}
    optuna_overrides: dict[str, dict[str, Any]] = {"sampler": {"n_startup_trials": 3 if quick else 6}}
    load_start = common.load_average()
    jobs = [(s, seed) for seed in seeds for s in strategies]
    results: list[dict[str, Any]] = []
    with common.scratch("search", keep=keep) as root:
        print(f"  searches in {root}", file=sys.stderr)
        pending = list(jobs)
        running: list[tuple[subprocess.Popen[bytes], str, int, Path, Path, Path, float]] = []
        while pending or running:
            while pending and len(running) < parallel:
                strategy, seed = pending.pop(0)
                folder = root / f"{strategy.replace(' ', '').replace('+', '_')}-{seed}"
                budget = math.ceil(n_trials * PRUNED_EXTRA) if STRATEGIES[strategy]["pruner"] else n_trials
                hyper, model = write_search(folder, strategy=strategy, seed=seed, n_trials=budget,
                                            model_overrides=model_overrides, optuna_overrides=optuna_overrides)
                log = open(folder / "optimize.log", "wb")  # noqa: SIM115 - closed with the process
                proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", str(hyper), str(model)],
                                        cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                log.close()
                running.append((proc, strategy, seed, folder, hyper, model, time.time()))
            time.sleep(1.0)
            for item in list(running):
                proc, strategy, seed, folder, hyper, model, started = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                wall = time.time() - started
                if proc.returncode != 0:
                    print(f"  {strategy} seed {seed}: optimize exited {proc.returncode}:\n"
                          f"{common.tail(folder / 'optimize.log')}", file=sys.stderr)
                trials = read_trials(folder, hyper)
                points = curve(trials)
                test = test_best(folder, hyper, model, baseline=strategy == strategies[0] and seed == seeds[0])
                results.append({"strategy": strategy, "seed": seed, "trials": trials, "wall_s": wall,
                                "returncode": proc.returncode, "test": test})
                test_map = (test or {}).get("mean_of_folds", {}).get(MAP)
                print(f"  {strategy:<16} seed {seed}: {len(trials)} trials "
                      f"({sum(t['state'] == 'PRUNED' for t in trials)} pruned), best "
                      f"{points[-1][1] if points else float('nan'):.4f}, {points[-1][0] if points else 0:.0f} CPU-s, "
                      f"{wall:.0f} s wall, test MAP@R {test_map if test_map is not None else float('nan'):.4f}",
                      file=sys.stderr)
    return {"results": results, "seeds": seeds, "n_trials": n_trials, "model_overrides": model_overrides,
            "optuna_overrides": optuna_overrides, "mode_detail": "quick" if quick else "full",
            "strategies": list(strategies), "load": {"start": load_start, "end": common.load_average()}}


def best_within(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The best finished value found within ``budget`` CPU-seconds (None: nothing finished)."""
    best = None
    for spent, value in points:
        if spent > budget:
            break
        if value > float("-inf"):
            best = value
    return best


def _median_or_inf(values: Sequence[float | None]) -> float | None:
    """Median where None means "not reached" (infinitely late); None when that is the median."""
    ordered = sorted(float("inf") if v is None else v for v in values)
    if not ordered:
        return None
    m = statistics.median(ordered)
    return None if m == float("inf") else m


def runs_by_strategy(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Runs per strategy, cut to the common budget of trials; a pruned search run on past it also
    appears whole as "<strategy>, <n> trials"."""
    n = data["n_trials"]
    by: dict[str, list[dict[str, Any]]] = {}
    extended: dict[str, list[dict[str, Any]]] = {}
    for r in data["results"]:
        trials = [t for t in r["trials"] if t["number"] < n]
        by.setdefault(r["strategy"], []).append({**r, "trials": trials, "full_trials": len(r["trials"])})
        if len(r["trials"]) > n:
            extended.setdefault(f"{r['strategy']}, {len(r['trials'])} trials", []).append(r)
    return {**by, **extended}


def _test_median(runs: Sequence[dict[str, Any]]) -> float | None:
    """Median test MAP@R (mean of folds) of the best trials, for rows holding whole runs (the test
    ran on the study's best trial, which for a pruned search may lie past the common budget)."""
    values = [r["test"]["mean_of_folds"][MAP] for r in runs
              if r.get("test") and len(r["trials"]) == r.get("full_trials", len(r["trials"]))]
    return statistics.median(values) if values else None


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    by = runs_by_strategy(data)
    finals = {s: [curve(r["trials"])[-1][1] for r in rs if r["trials"]] for s, rs in by.items()}
    target = statistics.median(finals["random"]) if finals.get("random") else None
    budgets = {s: statistics.median([curve(r["trials"])[-1][0] for r in rs if r["trials"]])
               for s, rs in by.items() if any(r["trials"] for r in rs) and s in STRATEGIES}
    equal = min(budgets.values()) if budgets else None  # the smallest strategy's compute
    rows = []
    for strategy, rs in by.items():
        points = [curve(r["trials"]) for r in rs if r["trials"]]
        spent = [p[-1][0] for p in points]
        reach = [compute_to_reach(p, target) for p in points] if target is not None else []
        pruned = [sum(t["state"] == "PRUNED" for t in r["trials"]) for r in rs]
        at_equal = [best_within(p, equal) for p in points] if equal is not None else []
        at_equal = [v for v in at_equal if v is not None]
        rows.append({
            "strategy": strategy, "seeds": len(rs),
            "best_median": statistics.median(finals[strategy]) if finals[strategy] else None,
            "best_min": min(finals[strategy]) if finals[strategy] else None,
            "best_max": max(finals[strategy]) if finals[strategy] else None,
            "cpu_median": statistics.median(spent) if spent else None,
            "pruned_median": statistics.median(pruned) if pruned else None,
            "trials": statistics.median([len(r["trials"]) for r in rs]),
            "reach_median": _median_or_inf(reach),
            "reach": reach,
            "best_at_equal": statistics.median(at_equal) if at_equal else None,
            "test_median": _test_median(rs),
            "raw_input": next((r["test"]["raw_input"][MAP] for r in data["results"]
                               if r.get("test") and "raw_input" in r["test"]), None),
        })
    return {"target": target, "equal_budget": equal, "rows": rows}


COLOURS = {"random": "tab:green", "TPE": "tab:orange", "TPE + Median": "tab:blue", "TPE + Hyperband": "tab:purple",
           "TPE + Wilcoxon": "tab:red"}


def plot(data: dict[str, Any], path: Path) -> Path | None:
    """Best validation MAP@R so far against CPU-seconds: per strategy the median over seeds (line)
    and the range (band), on whole runs (a pruned search's curve goes on past the common budget)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for strategy in data["strategies"]:
        curves = [curve(r["trials"]) for r in data["results"] if r["strategy"] == strategy and r["trials"]]
        if not curves:
            continue
        end = statistics.median(c[-1][0] for c in curves)
        grid = np.linspace(0, end, 200)
        values = np.array([[_best_at(c, x) for x in grid] for c in curves])
        colour = COLOURS.get(strategy, "grey")
        with warnings.catch_warnings():  # before every seed's first finished trial: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        ax.plot(grid, median, color=colour, label=f"{strategy} (median of {len(curves)} seeds)")
        ax.fill_between(grid, low, high, color=colour, alpha=0.12, linewidth=0)
    target = summarise(data)["target"]
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="random search's final best (median)")
    ax.set_xlabel("cumulative training CPU-seconds")
    ax.set_ylabel("best validation MAP@R so far")
    ax.set_title(f"glyphs metric learning: {data['n_trials']} trials (pruned: "
                 f"{math.ceil(data['n_trials'] * PRUNED_EXTRA)}), seeds {data['seeds']}; band: min-max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_at(points: Sequence[tuple[float, float]], x: float) -> float:
    """The best value found within ``x`` CPU-seconds (NaN before the first finished trial)."""
    best = float("nan")
    for spent, value in points:
        if spent > x:
            break
        if value > float("-inf"):
            best = value
    return best


def markdown(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"Not run: {data['skipped']}. `python -m benchmarks --only search` runs it once the example exists."
    s = summarise(data)
    random_cpu = next((r["cpu_median"] for r in s["rows"] if r["strategy"] == "random"), None)
    table = []
    for r in s["rows"]:
        reach = ", ".join("not reached" if x is None else f"{x:.0f}" for x in r["reach"])
        table.append([r["strategy"], r["seeds"], f"{r['trials']:.0f}", f"{r['pruned_median']:.0f}",
                      f"{r['best_median']:.4f} ({r['best_min']:.4f}-{r['best_max']:.4f})",
                      f"{r['cpu_median']:.0f}",
                      f"{r['best_at_equal']:.4f}" if r["best_at_equal"] is not None else "-",
                      f"{r['reach_median']:.0f}" if r["reach_median"] is not None else "not reached",
                      f"{100 * r['reach_median'] / random_cpu:.0f} %" if r["reach_median"] is not None and random_cpu
                      else "-", reach,
                      f"{r['test_median']:.4f}" if r["test_median"] is not None else "-"])
    equal = s["equal_budget"]
    text = common.markdown_table(
        ["strategy", "seeds", "trials", "pruned (median)", "best val MAP@R median (min-max)",
         "CPU-s for the budget (median)",
         f"best val MAP@R within {equal:.0f} CPU-s (median)" if equal is not None else "best at equal compute",
         "CPU-s to reach random's best (median)", "... as % of random's CPU-s", "CPU-s to reach it, per seed",
         "test MAP@R of the best trial (median)"], table)
    if s["target"] is not None:
        text += f"\n\nTarget: random search's final best, median over seeds = {s['target']:.4f}."
    raw = next((r["raw_input"] for r in s["rows"] if r.get("raw_input") is not None), None)
    if raw is not None:
        text += f" Raw pixels (`raw_input`) score test MAP@R {raw:.4f} on the same held-out classes."
    if data.get("model_overrides") or data.get("optuna_overrides"):
        text += (f" Changed from the example: model {data.get('model_overrides')}, "
                 f"optuna {data.get('optuna_overrides')}.")
    return text


def collect(folders: Sequence[Path], *, quick: bool, n_trials: int | None = None) -> dict[str, Any]:
    """The data :func:`run` returns, read back from searches on disk (finished ones only: a
    search counts when its ``hyper-opt test`` wrote test_results.yml)."""
    names = {name.replace(" ", "").replace("+", "_"): name for name in STRATEGIES}
    results = []
    for root in folders:
        for folder in sorted(Path(root).iterdir()):
            strategy, _, seed = folder.name.rpartition("-")
            tested = sorted((folder / "results" / "metric_learning").glob("trial_*/test_results.yml"),
                            key=lambda f: f.stat().st_mtime)
            if strategy not in names or not tested:
                continue
            hyper = folder / "hyperparameters.yml"
            results.append({"strategy": names[strategy], "seed": int(seed), "trials": read_trials(folder, hyper),
                            "wall_s": None, "returncode": 0,
                            "test": yaml.safe_load(tested[-1].read_text())["results"]})
    results.sort(key=lambda r: (r["seed"], list(STRATEGIES).index(r["strategy"])))
    seeds = sorted({r["seed"] for r in results})
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in results)]
    return {"results": results, "seeds": seeds, "n_trials": n_trials or (6 if quick else 16),
            "model_overrides": {**BENCH_MODEL, **(QUICK_MODEL if quick else {})},
            "optuna_overrides": {"sampler": {"n_startup_trials": 3 if quick else 6}},
            "mode_detail": "quick" if quick else "full", "strategies": strategies, "load": {}}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 trials of 3 epochs per search (default: 16 of 4)")
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds per strategy (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST_SEED, FIRST_SEED + 1, ...")
    parser.add_argument("--keep", action="store_true", help="keep the searches' folders (printed at the start)")
    parser.add_argument("--collect", type=Path, nargs="+", metavar="FOLDER",
                        help="instead of running: read the finished searches in these scratch folders "
                             "(e.g. of runs split across processes or stopped early) and write --out")
    parser.add_argument("--trials", type=int, help="trials per search (pruned searches run 1.5 times as many)")
    parser.add_argument("--parallel", type=int, default=2, help="searches side by side (default 2)")
    parser.add_argument("--out", type=Path, default=common.OUT / "search_efficiency.json", help="results JSON")
    parser.add_argument("--plot", type=Path, default=common.REPO / "docs" / "metric_learning_search_efficiency.png")
    parser.add_argument("--render", action="store_true", help="only redraw the plot and table from --out")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.search_efficiency " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        data = json.loads(args.out.read_text())
    elif args.collect:
        data = collect(args.collect, quick=args.quick, n_trials=args.trials)
        data["command"] = command
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1, default=str))
    else:
        started = time.time()
        data = run(quick=args.quick, seeds=list(range(args.first_seed, args.first_seed + args.seeds)),
                   n_trials=args.trials, parallel=args.parallel, keep=args.keep)
        data["seconds"] = time.time() - started
        data["command"] = command
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1, default=str))
    if not data.get("skipped"):
        plot(data, args.plot)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
