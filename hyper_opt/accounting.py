"""GPU-hours, read from the study: what each trial cost, by state, and the best value against them.

A trial's cost is its wall time (start to finish, or to now while it runs) times the devices it
held: the ``gpus`` its worker recorded when it claimed it (``gpus_per_trial x nodes_per_trial``
for a distributed trial), a trial on the CPU counting as one device (so budgets and plots work on
CPU machines too, in CPU-worker-hours). Every figure comes from the study, the single source of
truth, so ``status``, ``report`` and the claim's budget check agree whoever reads them.

States: complete, pruned, failed, **requeued** (a trial stopped by preemption, ``scancel``/``qdel``,
the time limit or a lost worker or rank, whose copy was queued to run again), running. Of a requeued
trial's hours, those after its last checkpoint are **redone** by its copy (all of them when it saved
none): the work lost to the interruption.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

CHECKPOINT_ATTR = "checkpoint_at"  # trial user attribute: when the last checkpoint was saved (epoch s)
STOPPED_ATTR = "stopped"  # trial user attribute: why an interrupted trial stopped (preempted, cancelled, ...)
CATEGORIES = ("complete", "pruned", "failed", "requeued", "running")


def devices(trial: optuna.trial.FrozenTrial) -> int:
    try:
        gpus = int(trial.user_attrs.get("gpus", 0) or 0)
    except (TypeError, ValueError):
        gpus = 0
    return max(gpus, 1)


def trial_hours(trial: optuna.trial.FrozenTrial, now: datetime.datetime | None = None) -> float:
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or now or datetime.datetime.now()
    return max((end - trial.datetime_start).total_seconds(), 0.0) * devices(trial) / 3600.0


def expected_hours(trial: optuna.trial.FrozenTrial, lengths_s: Sequence[float], now: datetime.datetime) -> float:
    """What a running trial will have cost when it ends: its expected length (the median of finished
    trials), or what it has run already when that is longer."""
    ran = trial_hours(trial, now)
    typical = statistics.median(lengths_s) * devices(trial) / 3600.0 if lengths_s else 0.0
    return max(ran, typical)


def category(trial: optuna.trial.FrozenTrial, retried: set[int]) -> str | None:
    import optuna

    TS = optuna.trial.TrialState
    if trial.state == TS.FAIL:
        return "requeued" if trial.number in retried else "failed"
    return {TS.COMPLETE: "complete", TS.PRUNED: "pruned", TS.RUNNING: "running"}.get(trial.state)


def redone_hours(trial: optuna.trial.FrozenTrial) -> float:
    """Of a requeued trial, the hours after its last checkpoint (its copy does them again)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    saved = trial.user_attrs.get(CHECKPOINT_ATTR)
    begin = trial.datetime_start
    if isinstance(saved, (int, float)):
        begin = max(begin, datetime.datetime.fromtimestamp(float(saved)))
    return max((trial.datetime_complete - begin).total_seconds(), 0.0) * devices(trial) / 3600.0


@dataclass
class Usage:
    hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    trials: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    redone: float = 0.0
    stopped: dict[str, int] = field(default_factory=dict)  # why requeued trials stopped

    @property
    def total(self) -> float:
        return sum(self.hours.values())

    def line(self) -> str:
        parts = [f"{name} {self.hours[name]:.3f}" for name in CATEGORIES if self.trials[name]]
        redone = f"; redone after requeue {self.redone:.3f}" if self.trials["requeued"] else ""
        return f"{self.total:.3f} GPU-h ({', '.join(parts) or 'none yet'}{redone})"


def usage(trials: Sequence[optuna.trial.FrozenTrial], now: datetime.datetime | None = None) -> Usage:
    now = now or datetime.datetime.now()
    retried = retried_numbers(trials)
    out = Usage()
    for t in trials:
        kind = category(t, retried)
        if kind is None:
            continue
        out.hours[kind] += trial_hours(t, now)
        out.trials[kind] += 1
        if kind == "requeued":
            out.redone += redone_hours(t)
            why = str(t.user_attrs.get(STOPPED_ATTR) or "lost")
            out.stopped[why] = out.stopped.get(why, 0) + 1
    return out


def retried_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Trials whose copy was queued to run again (the copy's ``retry_of``/``failed_trial``)."""
    numbers: set[int] = set()
    for t in trials:
        if isinstance(t.user_attrs.get("retry_of"), int):
            numbers.add(t.user_attrs["retry_of"])
        failed = t.system_attrs.get("failed_trial")
        if isinstance(failed, int):
            numbers.add(failed)
        history = t.system_attrs.get("retry_history")
        if isinstance(history, list):
            numbers.update(n for n in history if isinstance(n, int))
    return numbers


def best_against_hours(trials: Sequence[optuna.trial.FrozenTrial], direction: str,
                       now: datetime.datetime | None = None) -> list[tuple[float, float | None, int]]:
    """(GPU-hours spent, best value so far, trials finished) at each finished trial, in the order
    they finished: the search's progress against its cost (every state's hours count)."""
    import optuna

    now = now or datetime.datetime.now()
    done = sorted((t for t in trials if t.state.is_finished() and t.datetime_complete is not None),
                  key=lambda t: (t.datetime_complete, t.number))
    spent, best, out = 0.0, None, []
    for i, t in enumerate(done, 1):
        spent += trial_hours(t, now)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            value = float(t.value)
            if best is None or (value < best if direction == "minimize" else value > best):
                best = value
        out.append((spent, best, i))
    return out

