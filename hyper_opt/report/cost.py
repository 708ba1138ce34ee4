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
    """Two panels: the best value so far against the GPU-hours spent (all states' hours count, one
    point a finished trial), and the GPU-hours used over the study's time, by state."""
    from hyper_opt.plots import BEST_COLOR, COMPLETE_COLOR, NothingToPlot, _figure, _save

    curve = [(h, b) for h, b, _ in best_against_hours(trials, direction) if b is not None]
    if not curve:
        raise NothingToPlot("no completed trial yet")
    fig = _figure(12, 3.8)
    left, right = fig.subplots(1, 2)
    xs, ys = [h for h, _ in curve], [b for _, b in curve]
    left.step(xs, ys, where="post", color=BEST_COLOR, label=f"best {name} so far")
    left.scatter(xs, ys, s=8, color=COMPLETE_COLOR, zorder=3)
    left.set_xlabel("GPU-hours spent (wall time x GPUs, all trials)")
    left.set_ylabel(name)
    left.set_title(f"Best {name} against GPU-hours ({direction})")
    left.legend(loc="best")
    _hours_over_time(right, trials)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _hours_over_time(ax: Any, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
    """Cumulative GPU-hours by state against hours since the first trial started (a finished
    trial's hours are added when it ends)."""
    from hyper_opt.accounting import category, retried_numbers, trial_hours

    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return
    t0, retried = min(starts), retried_numbers(trials)
    done = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    for kind in ("complete", "pruned", "failed", "requeued"):
        xs, ys, total = [0.0], [0.0], 0.0
        for t in done:
            if category(t, retried) == kind:
                total += trial_hours(t)
                xs.append((t.datetime_complete - t0).total_seconds() / 3600)
                ys.append(total)
        if total:
            ax.step(xs, ys, where="post", label=f"{kind} ({total:.3g} GPU-h)")
    ax.set_xlabel("hours since the first trial started")
    ax.set_ylabel("GPU-hours used")
    ax.set_title("GPU-hours over time, by state")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left")
