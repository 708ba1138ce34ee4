"""Reading a study's trials: the finite COMPLETE ones, the best / Pareto-optimal trials,
parameter importances and per-state statistics (counts, durations, what pruning saved).

Pure functions of a list of ``FrozenTrial``; the report, ``rerun`` and ``test`` all use them.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ROUGH_IMPORTANCES = 50  # completed trials below which importances get a "rough" note (5 in the top 10 %)


def finite_complete(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials whose values are all finite numbers: the one rule for "a result" in
    best trials, importances and plots (NaN and ±inf values are never a best, nor a point)."""
    return [t for t in trials if t.state.name == "COMPLETE" and t.values is not None
            and all(math.isfinite(v) for v in t.values)]



def best_trials(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]
                ) -> list[optuna.trial.FrozenTrial]:
    """Single objective: ``[the best COMPLETE trial]`` (lowest number on ties); multi-objective:
    the Pareto-optimal COMPLETE trials, by number. Empty when nothing completed."""
    complete = finite_complete(trials)
    if not complete:
        return []
    if len(directions) == 1:
        sign = 1 if directions[0] == "minimize" else -1
        return [min(complete, key=lambda t: (sign * t.values[0], t.number))]
    import numpy as np

    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    values = np.array([t.values for t in complete], dtype=float) * signs
    # In lexicographic order every dominating point comes before the points it dominates, so
    # each point only has to be checked against the front found so far.
    order = np.lexsort(values.T[::-1])
    front_rows: list[int] = []
    front = np.empty((0, values.shape[1]))
    for i in order:
        v = values[i]
        if len(front) and bool(np.any(np.all(front <= v, axis=1) & np.any(front < v, axis=1))):
            continue
        front_rows.append(int(i))
        front = np.vstack([front, v])
    return sorted((complete[i] for i in front_rows), key=lambda t: t.number)


def param_importances(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str], *,
                      notes: list[str]) -> tuple[dict[str, float] | None, str]:
    """optuna's parameter importances over the COMPLETE trials, or None with a note saying why.

    optuna 5's default evaluator (PED-ANOVA) needs numpy only, not scikit-learn, and rates
    multi-objective studies by how much each parameter matters for reaching the Pareto front.
    The trials are copied into an in-memory study so the storage is not read a second time.
    """
    import optuna

    what = "for the objective" if len(directions) == 1 else "for reaching the Pareto front"
    complete = finite_complete(trials)
    if len(complete) < 2:
        notes.append(f"parameter importances not computed: they need at least 2 completed trials, "
                     f"the study has {len(complete)}")
        return None, what
    if not any(t.params for t in complete):
        notes.append("parameter importances not computed: the trials have no parameters")
        return None, what
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            study = _listed_study(complete, directions)
            importances = dict(optuna.importance.get_param_importances(study))
        except Exception as err:  # an evaluator limitation must not cost the rest of the report
            notes.append(f"parameter importances not computed: {type(err).__name__}: {err}")
            return None, what
        finally:
            optuna.logging.set_verbosity(verbosity)
    # ResourceWarning: a finalizer that ran meanwhile (an unclosed connection of the caller's,
    # collected here), not something the importances have to say.
    messages = sorted({str(w.message) for w in caught if not issubclass(
        w.category, (DeprecationWarning, ResourceWarning, optuna.exceptions.ExperimentalWarning))})
    if not importances or not any(v > 0 for v in importances.values()):
        why = "; ".join(messages) or "every importance is 0"
        notes.append(f"parameter importances could not be estimated from {len(complete)} completed trials: {why}")
        return None, what
    for message in messages:
        notes.append(f"parameter importances: {message}")
    if len(complete) < ROUGH_IMPORTANCES:
        notes.append(f"parameter importances from {len(complete)} completed trials are rough: PED-ANOVA compares "
                     f"the best 10 % with the rest and is stable from about {ROUGH_IMPORTANCES} completed trials")
    return importances, what


def _listed_study(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]) -> optuna.Study:
    """An in-memory study with ``directions`` whose ``get_trials`` answers ``trials`` as they are.

    ``study.add_trials`` copies each trial twice (``create_trial`` and the in-memory storage's
    deepcopy): 2 s for 3,000 completed trials, four times what PED-ANOVA itself takes. The
    evaluators read the trials through ``Study.get_trials`` only, so this study hands them over
    without copying (``deepcopy=True`` still copies, as optuna's does).
    """
    import copy

    import optuna

    class ListedStudy(optuna.Study):
        def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
            chosen = [t for t in trials if states is None or t.state in states]
            return copy.deepcopy(chosen) if deepcopy else chosen

    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection[d.upper()] for d in directions])
    return ListedStudy(study_name=storage.get_study_name_from_id(study_id), storage=storage)


@dataclass
class StateStats:
    count: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)


def _duration(trial: optuna.trial.FrozenTrial, now: dt.datetime) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or (now if trial.state.name == "RUNNING" else None)
    return None if end is None else max(0.0, (end - trial.datetime_start).total_seconds())


def state_stats(trials: Sequence[optuna.trial.FrozenTrial], *, now: dt.datetime | None = None
                ) -> dict[str, StateStats]:
    """Trials and time used per state; a RUNNING trial counts the time it has run so far."""
    import optuna

    now = now or dt.datetime.now()
    stats = {s.name: StateStats() for s in optuna.trial.TrialState}
    for trial in trials:
        st = stats[trial.state.name]
        st.count += 1
        seconds = _duration(trial, now)
        if seconds is not None:
            st.seconds += seconds
            st.durations.append(seconds)
    return stats


def pruning_saving(stats: Mapping[str, StateStats]) -> tuple[float, float] | None:
    """(seconds the pruned trials used, seconds they would have needed more to finish), the
    latter estimated with the median COMPLETE duration; None without pruned or completed trials."""
    pruned, complete = stats["PRUNED"], stats["COMPLETE"]
    if not pruned.durations or not complete.durations:
        return None
    median = statistics.median(complete.durations)
    return pruned.seconds, sum(max(0.0, median - d) for d in pruned.durations)

