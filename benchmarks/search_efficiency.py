"""Benchmark 4: how much compute pruning saves on the metric-learning example.

The example of examples/torch/metric_learning (pytorch-metric-learning on scikit-learn's digits,
class-disjoint folds, the built-in ``hyper_opt.metric_learning`` objective) searched three ways
with the same budget of trials, for several sampler seeds each:

* ``TPE + MedianPruner``: the example's own sampler and pruner;
* ``TPE``: the same sampler, no pruner;
* ``random``: ``RandomSampler``, no pruner.

The pruned search is run on for 1.5 times the budget of trials (its first N trials are the
same-budget search) so that it can also be compared at equal compute.

Each search is ``hyper-opt optimize`` with one local worker on its own SQLite file (so that
restarts of the shared PostgreSQL cannot disturb it), one torch thread per trial, and two
searches run side by side on the two cores (three with --quick). The objective is the built-in one with the CPU
time of each trial recorded (benchmarks/workloads/ml_objective.py). The result: the best
validation MAP@R against cumulative CPU-seconds, and the CPU-seconds each strategy needs to
reach random search's final best (the median over seeds).
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common

EXAMPLE = common.REPO / "examples" / "torch" / "metric_learning"
STRATEGIES = {
    "TPE + MedianPruner": {"sampler": "TPESampler", "pruner": True},
    "TPE": {"sampler": "TPESampler", "pruner": False},
    "random": {"sampler": "RandomSampler", "pruner": False},
}
# The pruned search runs this many times the budget of trials, so that its curve also reaches the
# compute the unpruned searches spend; its first ``n_trials`` trials are exactly the search with
# the common budget (same seed, same history, seeded training), which the table reports.
PRUNED_EXTRA = 1.5


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
    elif "pruner" not in opt:
        opt["pruner"] = {"type": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 2}
    for key, values in (optuna_overrides or {}).items():
        if key == "sampler" and sampler["type"] != "TPESampler":
            continue  # n_startup_trials is TPE's
        if isinstance(opt.get(key), dict):
            opt[key].update(values)
    hyper["save_path"] = str(folder / "results")
    hyper["local"] = {"workers": 1}
    hyper.pop("slurm", None)
    model.update(model_overrides or {})
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


def run(*, quick: bool, seeds: Sequence[int] | None = None, n_trials: int | None = None,
        parallel: int | None = None, strategies: Sequence[str] = tuple(STRATEGIES)) -> dict[str, Any]:
    why = available()
    if why:
        print(f"  search efficiency skipped: {why}", file=sys.stderr)
        return {"skipped": why}
    seeds = list(seeds or ([0] if quick else [0, 1, 2]))
    parallel = parallel or (3 if quick else 2)  # CPU-seconds do not depend on it; wall time does
    n_trials = n_trials or (10 if quick else 30)
    # --quick: shorter trials and earlier TPE/pruning, so that 10 trials show something.
    model_overrides = {"max_epochs": 4} if quick else {}
    optuna_overrides = ({"sampler": {"n_startup_trials": 4}, "pruner": {"n_startup_trials": 3, "n_warmup_steps": 1}}
                        if quick else {})
    load_start = common.load_average()
    jobs = [(s, seed) for seed in seeds for s in strategies]
    results: list[dict[str, Any]] = []
    with common.scratch("search") as root:
        pending = list(jobs)
        running: list[tuple[subprocess.Popen[bytes], str, int, Path, Path, float]] = []
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
                running.append((proc, strategy, seed, folder, hyper, time.time()))
            time.sleep(1.0)
            for item in list(running):
                proc, strategy, seed, folder, hyper, started = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                wall = time.time() - started
                if proc.returncode != 0:
                    print(f"  {strategy} seed {seed}: optimize exited {proc.returncode}:\n"
                          f"{common.tail(folder / 'optimize.log')}", file=sys.stderr)
                trials = read_trials(folder, hyper)
                points = curve(trials)
                results.append({"strategy": strategy, "seed": seed, "trials": trials, "wall_s": wall,
                                "returncode": proc.returncode})
                print(f"  {strategy:<19} seed {seed}: {len(trials)} trials "
                      f"({sum(t['state'] == 'PRUNED' for t in trials)} pruned), best "
                      f"{points[-1][1] if points else float('nan'):.4f}, {points[-1][0] if points else 0:.0f} CPU-s, "
                      f"{wall:.0f} s wall", file=sys.stderr)
    return {"results": results, "seeds": seeds, "n_trials": n_trials, "model_overrides": model_overrides,
            "optuna_overrides": optuna_overrides,
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
        by.setdefault(r["strategy"], []).append({**r, "trials": trials})
        if len(r["trials"]) > n:
            extended.setdefault(f"{r['strategy']}, {len(r['trials'])} trials", []).append(r)
    return {**by, **extended}


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
        })
    return {"target": target, "equal_budget": equal, "rows": rows}


def plot(data: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"TPE + MedianPruner": "tab:blue", "TPE": "tab:orange", "random": "tab:green"}
    for r in data["results"]:  # whole runs: the pruned search's curve goes on past the common budget
        points = [(x, y) for x, y in curve(r["trials"]) if y > float("-inf")]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.step(xs, ys, where="post", color=colours.get(r["strategy"], "grey"), alpha=0.8,
                label=r["strategy"] if r["seed"] == data["seeds"][0] else None)
    target = summarise(data)["target"]
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="random search's final best (median)")
    ax.set_xlabel("cumulative training CPU-seconds")
    ax.set_ylabel("best validation MAP@R so far")
    ax.set_title(f"metric-learning example: {data['n_trials']} trials (pruned: up to "
                 f"{math.ceil(data['n_trials'] * PRUNED_EXTRA)}), seeds {data['seeds']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"Not run: {data['skipped']}. `python -m benchmarks --only search` runs it once the example exists."
    s = summarise(data)
    table = []
    for r in s["rows"]:
        reach = ", ".join("not reached" if x is None else f"{x:.0f}" for x in r["reach"])
        table.append([r["strategy"], r["seeds"], f"{r['trials']:.0f}", f"{r['pruned_median']:.0f}",
                      f"{r['best_median']:.4f} ({r['best_min']:.4f}-{r['best_max']:.4f})",
                      f"{r['cpu_median']:.0f}",
                      f"{r['best_at_equal']:.4f}" if r["best_at_equal"] is not None else "-",
                      f"{r['reach_median']:.0f}" if r["reach_median"] is not None else "not reached", reach])
    equal = s["equal_budget"]
    text = common.markdown_table(
        ["strategy", "seeds", "trials", "pruned (median)", "best val MAP@R median (min-max)",
         "CPU-s for the budget (median)",
         f"best val MAP@R within {equal:.0f} CPU-s (median)" if equal is not None else "best at equal compute",
         "CPU-s to reach random's best (median)", "CPU-s to reach it, per seed"], table)
    if s["target"] is not None:
        text += f"\n\nTarget: random search's final best, median over seeds = {s['target']:.4f}."
    if data.get("model_overrides") or data.get("optuna_overrides"):
        text += (f" Changed from the example for a short run: model {data.get('model_overrides')}, "
                 f"optuna {data.get('optuna_overrides')}.")
    return text
