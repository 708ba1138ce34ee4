"""The report's account of GPU-hours: a section of summary.md and the best value against the hours.

Both are drawn from :mod:`hyper_opt.accounting` (the study's own records), so they give the same
figures as ``hyper-opt status`` and the budget check of the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt.accounting import CATEGORIES, best_against_hours, usage

if TYPE_CHECKING:
    import optuna

COST_PLOT = "best_vs_gpu_hours.png"


def cost_section(trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str], spec: Any,
                 study_attrs: dict[str, Any]) -> list[str]:
    """Markdown lines: GPU-hours by state, work redone after requeues, the budget, the best value
    reached at each quarter of the hours, and why the search ended when a budget or rule ended it."""
    from hyper_opt.stopping import recorded_stop

    used = usage(trials)
    if not any(used.trials.values()):
        return ["No trial has run yet."]
    total = used.total or 1e-12
    lines = ["A trial's GPU-hours are its wall time times the GPUs it held (a CPU trial counts one).", "",
             "| state | trials | GPU-hours | share |", "|---|---:|---:|---:|"]
    for name in CATEGORIES:
        if used.trials[name]:
            lines.append(f"| {name} | {used.trials[name]} | {used.hours[name]:.4f} | {used.hours[name] / total:.0%} |")
    lines.append(f"| all | {sum(used.trials.values())} | {used.total:.4f} | 100% |")
    if used.trials["requeued"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(used.stopped.items()))
        lines += ["", f"Requeued trials ({why}): {used.redone:.4f} GPU-hours were after their last checkpoint, "
                  "work their copies did again."]
    if spec.budget is not None and spec.budget.gpu_hours:
        lines += ["", f"Budget: {spec.budget.gpu_hours:g} GPU-hours, {used.total / spec.budget.gpu_hours:.0%} used."]
    if len(directions) == 1:
        curve = best_against_hours(trials, directions[0])
        marks = []
        for share in (0.25, 0.5, 0.75, 1.0):
            point = next((p for p in curve if p[0] >= share * curve[-1][0] and p[1] is not None), None)
            if point is not None:
                marks.append(f"{point[1]:.6g} after {point[0]:.4f} GPU-h ({point[2]} trials)")
        if marks:
            lines += ["", "Best value against GPU-hours spent: " + "; ".join(marks) + f" (plot: `{COST_PLOT}`)."]
    ended = recorded_stop(study_attrs)
    if ended is not None:
        lines += ["", f"The search was ended by its {ended['rule']} limit or rule: {ended['why']}."]
    return lines


def best_vs_gpu_hours(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *, direction: str, name: str) -> Path:
    """Best value so far against the GPU-hours spent (all states' hours count), one point a trial."""
    from hyper_opt.plots import BEST_COLOR, COMPLETE_COLOR, NothingToPlot, _figure, _save

    curve = [(h, b) for h, b, _ in best_against_hours(trials, direction) if b is not None]
    if not curve:
        raise NothingToPlot("no completed trial yet")
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    xs, ys = [h for h, _ in curve], [b for _, b in curve]
    ax.step(xs, ys, where="post", color=BEST_COLOR, label=f"best {name} so far")
    ax.scatter(xs, ys, s=8, color=COMPLETE_COLOR, zorder=3)
    ax.set_xlabel("GPU-hours spent (wall time x GPUs, all trials)")
    ax.set_ylabel(name)
    ax.set_title(f"Best {name} against GPU-hours ({direction})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)
