"""Benchmark: what a stop rule (``optuna:stop``) saves on the search-efficiency runs (issue 23).

The rule is replayed on the searches :mod:`benchmarks.search_efficiency` ran (one local worker,
so a search's trials finished in number order): after each finished trial,
:func:`hyper_opt.stopping.stop_rule` is asked, exactly as the worker asks it, and the search is
cut where it first fires. Per rule and strategy, over the seeds: the compute (CPU-seconds, this
machine's GPU-hours) spent up to the stop against the whole fixed budget, and the best validation
MAP@R at the stop against the whole run's. Where the best trial at the stop is not the run's best,
``hyper-opt test --trial N`` scores it on the held-out characters (needs the searches' folders:
run search_efficiency with ``--keep``).

    python -m benchmarks.stop_rule benchmarks/out/search_efficiency_full.json --folders /tmp/hyper_opt-bench-search-XXXX
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.search_efficiency import MAP, _median_or_inf, compute_to_reach, curve, summarise

RULES: dict[str, dict[str, Any]] = {
    "patience 6": {"patience": 6},
    "patience 8": {"patience": 8},
    "improvement (window 5, bar 10 %)": {"improvement": {"window": 5, "bar": 0.1, "min_trials": 8}},
}


def _frozen(rows: Sequence[dict[str, Any]]) -> list[Any]:
    import optuna

    t0 = dt.datetime(2026, 1, 1)
    out = []
    for i, r in enumerate(rows):
        state = optuna.trial.TrialState[r["state"]]
        out.append(optuna.trial.FrozenTrial(
            number=r["number"], state=state, value=r["value"] if state == optuna.trial.TrialState.COMPLETE else None,
            datetime_start=t0 + dt.timedelta(minutes=i), datetime_complete=t0 + dt.timedelta(minutes=i, seconds=30),
            params={}, distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=i,
            values=None))
    return out


def stop_at(rows: Sequence[dict[str, Any]], rule: dict[str, Any]) -> int:
    """How many trials the search runs with ``rule`` (all of them when it never fires)."""
    from hyper_opt.checker import Checker
    from hyper_opt.stopping import check_stop, stop_rule

    spec = check_stop(Checker(), rule)
    assert spec is not None
    frozen = _frozen(rows)
    for n in range(1, len(rows) + 1):
        if stop_rule(spec, frozen[:n], "maximize"):
            return n
    return len(rows)


def _best_trial(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    return max(done, key=lambda r: r["value"]) if done else None


def _test(folder: Path, number: int) -> float | None:
    hyper, model = folder / "hyperparameters.yml", folder / "model_config.yml"
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "test", str(hyper), str(model), "--trial", str(number),
                           "--no-baseline"], cwd=folder, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    found = sorted((folder / "results" / "metric_learning").glob(f"trial_{number}/test_results.yml"))
    if proc.returncode != 0 or not found:
        return None
    return yaml.safe_load(found[-1].read_text())["results"]["mean_of_folds"][MAP]


def analyse(data: dict[str, Any], folders: Path | None) -> list[dict[str, Any]]:
    rows = []
    target = summarise(data)["target"]  # random search's final best (median over seeds)
    for strategy in data["strategies"]:
        runs = [r for r in data["results"] if r["strategy"] == strategy and r["trials"]]
        for name, rule in RULES.items():
            saved, lost, tests, stops, reach = [], [], [], [], []
            for r in runs:
                n = stop_at(r["trials"], rule)
                full, cut = curve(r["trials"]), curve(r["trials"][:n])
                stops.append(n)
                reach.append(compute_to_reach(cut, target) if target is not None else None)
                saved.append(1 - cut[-1][0] / full[-1][0] if full[-1][0] else 0.0)
                lost.append((full[-1][1] - cut[-1][1]) / full[-1][1] if full[-1][1] > 0 else 0.0)
                best_cut, best_full = _best_trial(r["trials"][:n]), _best_trial(r["trials"])
                test = None
                if best_cut is not None and best_full is not None and best_cut["number"] == best_full["number"]:
                    test = ((r.get("test") or {}).get("mean_of_folds") or {}).get(MAP)
                elif best_cut is not None and folders is not None:
                    folder = folders / f"{strategy.replace(' ', '').replace('+', '_')}-{r['seed']}"
                    test = _test(folder, best_cut["number"]) if folder.exists() else None
                if test is not None:
                    tests.append(test)
            rows.append({"strategy": strategy, "rule": name, "seeds": len(runs),
                         "trials_median": statistics.median(stops) if stops else None,
                         "trials_full": statistics.median(len(r["trials"]) for r in runs) if runs else None,
                         "saved_median": statistics.median(saved) if saved else None,
                         "lost_median": statistics.median(lost) if lost else None,
                         "lost_max": max(lost) if lost else None,
                         "test_median": statistics.median(tests) if tests else None,
                         "reach_median": _median_or_inf(reach), "cpu_full": statistics.median(
                             curve(r["trials"])[-1][0] for r in runs) if runs else None})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| strategy | rule | trials run (of) | compute saved (median) | best lost (median, worst) | "
             "CPU-s to reach random's final best | test MAP@R of the best at the stop |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        test = f"{r['test_median']:.4f}" if r["test_median"] is not None else "-"
        reach = f"{r['reach_median']:.0f}" if r["reach_median"] is not None else "not reached"
        lines.append(f"| {r['strategy']} | {r['rule']} | {r['trials_median']:g} ({r['trials_full']:g}) | "
                     f"{r['saved_median']:.0%} | {r['lost_median']:.1%} ({r['lost_max']:.1%}) | {reach} | {test} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(prog="python -m benchmarks.stop_rule", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="the JSON written by benchmarks.search_efficiency (--out)")
    p.add_argument("--folders", type=Path, help="the searches' folder (search_efficiency --keep), for test scores")
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text())
    print(markdown(analyse(data, args.folders)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
