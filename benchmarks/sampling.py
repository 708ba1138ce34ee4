"""Benchmark "sampling": near-duplicate suggestions and the best value, W=1 against W=32.

Concurrency is emulated deterministically in one process (no timing, no database): W workers,
each with its own sampler on one shared in-memory study, keep W trials in flight; the oldest
trial is told first and its worker asks the next one (equal trial durations). Every worker's
sampler is built as hyper_opt builds it (:func:`hyper_opt.registry.make_sampler`), so the
figures show what the seed scheme and the sampler set-up do, with nothing else varying.

Scenarios, each for RandomSampler and for optuna 5's TPESampler (multivariate with constant liar):

* ``W=1``: one worker;
* ``W=32``: 4 jobs x 8 workers of one launch;
* ``W=32, requeued``: the same, every job requeued (or the study continued by a second
  ``optimize --reload``) halfway through: its workers start again with the same worker indices.
  ``old seeds`` = ``seed + worker_index`` (hyper_opt before this change); ``new seeds`` =
  :func:`hyper_opt.registry.worker_seed` (also salted by the trials already in the study);
* ``W=32, constant_liar off``: TPE that ignores the running trials (optuna 4's default).

A near-duplicate is a pair of trials whose parameters, each scaled to [0, 1] (log scale for log
parameters), differ by less than 1e-3 in every coordinate (identical ones included).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks import common

TOL = 1e-3
CLOSE = 1e-2  # a looser count: how much concurrent workers crowd one region
WORKERS_PER_JOB = 8


def space() -> dict[str, Any]:
    import optuna

    return {"x": optuna.distributions.FloatDistribution(-5.0, 5.0),
            "y": optuna.distributions.FloatDistribution(-5.0, 5.0),
            "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
            "n": optuna.distributions.IntDistribution(1, 8)}


def objective(params: dict[str, Any]) -> float:
    return ((params["x"] - 1.3) ** 2 + (params["y"] + 2.1) ** 2 + (math.log10(params["lr"]) + 3.2) ** 2
            + 0.1 * (params["n"] - 3) ** 2)


def _unit(value: float, dist: Any) -> float:
    low, high = dist.low, dist.high
    if getattr(dist, "log", False):
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low) if high > low else 0.0


def near_duplicates(param_sets: list[dict[str, Any]], tol: float = TOL) -> int:
    """Pairs of parameter sets within ``tol`` of each other in every [0, 1]-scaled coordinate."""
    import numpy as np

    dists = space()
    if len(param_sets) < 2:
        return 0
    points = np.array([[_unit(p[name], d) for name, d in dists.items()] for p in param_sets])
    diff = np.abs(points[:, None, :] - points[None, :, :]).max(axis=2)
    return int((np.triu(diff < tol, k=1)).sum())


def old_make_sampler(spec: Any, *, worker_index: int = 0, start: int = 0) -> Any:
    """hyper_opt's seed scheme before worker_seed: ``seed + worker_index``, whatever the study holds."""
    from hyper_opt.registry import make_sampler

    return make_sampler(spec, worker_index=worker_index, start=0)


def simulate(spec: Any, *, workers: int, n_trials: int, requeue_at: int | None = None,
             make: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Run ``n_trials`` with ``workers`` emulated concurrent workers; ``requeue_at``: after that
    many trials every worker starts again (a requeued job: same worker index, new sampler)."""
    import optuna

    from hyper_opt.registry import make_sampler

    make = make or make_sampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    name = "sampling"
    optuna.create_study(storage=storage, study_name=name, direction="minimize")
    dists = space()

    def open_worker(index: int) -> optuna.Study:
        start = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
        return optuna.load_study(study_name=name, storage=storage,
                                 sampler=make(spec, worker_index=index, start=start))

    studies = [open_worker(i) for i in range(workers)]
    in_flight: list[tuple[int, optuna.Trial]] = []
    for index in range(min(workers, n_trials)):
        in_flight.append((index, studies[index].ask(dists)))
    asked = len(in_flight)
    while in_flight:
        index, trial = in_flight.pop(0)
        studies[index].tell(trial, objective(trial.params))
        if requeue_at is not None and asked >= requeue_at:
            requeue_at = None  # every job is requeued: running trials end, workers start again
            for other, running in in_flight:
                studies[other].tell(running, objective(running.params))
            idle = sorted({index, *(other for other, _ in in_flight)})
            in_flight.clear()
            studies = [open_worker(i) for i in range(workers)]
            for other in idle:
                if asked < n_trials:
                    in_flight.append((other, studies[other].ask(dists)))
                    asked += 1
            continue
        if asked < n_trials:
            in_flight.append((index, studies[index].ask(dists)))
            asked += 1
    trials = studies[0].get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = [t.params for t in trials]
    return {"trials": len(trials), "near_duplicates": near_duplicates(params),
            "identical": near_duplicates(params, tol=1e-12),
            "close": near_duplicates(params, tol=CLOSE), "best": min(t.value for t in trials)}


def scenarios() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, scheme, simulate keyword arguments) per row; spec is filled in per sampler."""
    return [("W=1", "new", {"workers": 1}),
            ("W=32", "new", {"workers": 32}),
            ("W=32, requeued halfway", "old", {"workers": 32, "requeue": True}),
            ("W=32, requeued halfway", "new", {"workers": 32, "requeue": True})]


def run(*, quick: bool) -> dict[str, Any]:
    from hyper_opt.schema import ComponentSpec

    n_trials = 200 if quick else 1000
    seeds = (1, 2, 3) if quick else (1, 2, 3, 4, 5, 6, 7, 8)
    samplers = {"Random": ComponentSpec("RandomSampler", {}),
                "TPE (optuna 5 defaults)": ComponentSpec("TPESampler", {}),
                "TPE, constant_liar off": ComponentSpec("TPESampler", {"constant_liar": False})}
    rows = []
    for sampler_label, base in samplers.items():
        plan = scenarios() if "off" not in sampler_label else [("W=1", "new", {"workers": 1}),
                                                               ("W=32", "new", {"workers": 32})]
        for label, scheme, kw in plan:
            results = []
            for seed in seeds:
                spec = ComponentSpec(base.type, {**base.kwargs, "seed": seed})
                results.append(simulate(spec, workers=kw["workers"], n_trials=n_trials,
                                        requeue_at=n_trials // 2 if kw.get("requeue") else None,
                                        make=old_make_sampler if scheme == "old" else None))
            rows.append({"sampler": sampler_label, "scenario": label, "seeds": scheme,
                         "near_duplicates": statistics.mean(r["near_duplicates"] for r in results),
                         "identical": statistics.mean(r["identical"] for r in results),
                         "close": statistics.mean(r["close"] for r in results),
                         "best": statistics.median(r["best"] for r in results)})
            print(f"  sampling: {rows[-1]}", flush=True)
    return {"n_trials": n_trials, "seeds": list(seeds), "tolerance": TOL, "rows": rows,
            "load": {"during": round(common.load_average()[0], 2)}}


def markdown(data: dict[str, Any]) -> str:
    rows = [(r["sampler"], r["scenario"], r["seeds"], f"{r['near_duplicates']:.1f}", f"{r['identical']:.1f}",
             f"{r.get('close', float('nan')):.1f}", f"{r['best']:.4f}") for r in data["rows"]]
    table = common.markdown_table(("sampler", "workers", "seed scheme", "near-duplicate pairs",
                                   "identical pairs",
                                   f"pairs within {CLOSE:g}", "best value (median)"), rows)
    return (f"{data['n_trials']} trials of an instant 4-parameter objective (minimum 0), seeds "
            f"{data['seeds']} (mean pairs, median best over the seeds); concurrency emulated in one "
            f"process, W trials in flight, oldest told first. Near-duplicate: every [0, 1]-scaled "
            f"coordinate within {data['tolerance']:g}. \"old\" seeds: seed + worker index (a requeued "
            f"job's workers repeat their first draws); \"new\": hyper_opt.registry.worker_seed.\n\n" + table)
