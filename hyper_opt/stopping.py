"""When a study stops besides ``n_trials``: budgets (``optuna:budget``) and stop rules (``optuna:stop``).

``budget: {gpu_hours: H, wall_time: "D-HH:MM:SS"}``: no new trial starts once the GPU-hours used
plus those of the running trials (each estimated at its expected length: the median of the finished
ones, or what it has run if longer) reach ``H``, nor once the study has run ``wall_time`` (from its
first trial's start) or would pass it with one more trial. The check is made in the claim, under
the budget lock, from the study's own records (:mod:`hyper_opt.accounting`), so it holds under
concurrency on every storage; running trials finish, so the total passes ``H`` by at most about
one trial's cost per worker that was starting one.

``stop:`` ends a search whose best value has stopped improving, checked after each finished trial:

- ``patience: K`` (with ``min_delta: d``, default 0): the best value has not improved by more than
  ``d`` over the last ``K`` finished trials (a pruned trial is one that did not improve it);
- ``improvement: {window: W, bar: b, min_trials: N}``: the rule of Ax's
  ``ImprovementGlobalStoppingStrategy``: after ``N`` finished trials, the best value's improvement
  over the last ``W`` trials, divided by the interquartile range of the values seen so far, is
  below ``b`` (default 0.1).

A budget or rule that ends the search is recorded in the study (:data:`STOP_ATTR`: the rule, its
figures and when), so every worker stops starting trials and ``status`` says why.
"""

from __future__ import annotations

import datetime
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyper_opt.accounting import expected_hours, trial_hours
from hyper_opt.checker import Checker, is_number

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

STOP_ATTR = "hyper_opt:stopped"  # study user attribute: {"rule", "why", "at"} once a budget/rule ended it
BUDGET_KEYS = ("gpu_hours", "wall_time")
STOP_KEYS = ("patience", "min_delta", "improvement")
IMPROVEMENT_KEYS = ("window", "bar", "min_trials")


@dataclass(frozen=True)
class BudgetSpec:
    gpu_hours: float | None = None
    wall_time_s: int | None = None


@dataclass(frozen=True)
class StopSpec:
    patience: int | None = None
    min_delta: float = 0.0
    window: int | None = None
    bar: float = 0.1
    min_trials: int = 5


# --------------------------------------------------------------------------- config


def wall_time_seconds(text: str) -> int | None:
    """``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM`` (Slurm's forms) in seconds; None if not one."""
    from hyper_opt.launch.slurm_env import time_limit_seconds

    try:
        return time_limit_seconds(text)
    except ValueError:
        return None


def check_budget(chk: Checker, raw: Any) -> BudgetSpec | None:
    if raw is None:
        return None
    sec = chk.mapping(raw, "optuna:budget")
    chk.unknown_keys(sec, BUDGET_KEYS, "optuna:budget")
    hours = sec.get("gpu_hours")
    if hours is not None and (not is_number(hours) or float(hours) <= 0):
        chk.add("optuna:budget:gpu_hours", f"must be a number of GPU-hours above 0, got {hours!r}")
        hours = None
    wall = sec.get("wall_time")
    seconds = wall_time_seconds(str(wall)) if wall is not None else None
    if wall is not None and not seconds:
        chk.add("optuna:budget:wall_time", f"got {wall!r}; allowed: a duration D-HH:MM:SS, HH:MM:SS or MM:SS "
                "(e.g. \"2-00:00:00\" for two days)")
    if hours is None and seconds is None:
        if not sec:
            chk.add("optuna:budget", "is empty; give gpu_hours and/or wall_time (or leave the key out)")
        return None
    return BudgetSpec(gpu_hours=float(hours) if hours is not None else None, wall_time_s=seconds)


def check_stop(chk: Checker, raw: Any) -> StopSpec | None:
    if raw is None:
        return None
    sec = chk.mapping(raw, "optuna:stop")
    chk.unknown_keys(sec, STOP_KEYS, "optuna:stop")
    patience = sec.get("patience")
    if patience is not None:
        patience = chk.integer(patience, "optuna:stop:patience", minimum=1, default=1)
    delta = sec.get("min_delta", 0.0)
    if not is_number(delta) or float(delta) < 0:
        chk.add("optuna:stop:min_delta", f"must be a number >= 0 (the smallest change that counts as an "
                f"improvement), got {delta!r}")
        delta = 0.0
    window, bar, min_trials = None, 0.1, 5
    if "improvement" in sec:
        imp = chk.mapping(sec["improvement"], "optuna:stop:improvement")
        chk.unknown_keys(imp, IMPROVEMENT_KEYS, "optuna:stop:improvement")
        window = chk.integer(imp.get("window"), "optuna:stop:improvement:window", minimum=1, default=5)
        min_trials = chk.integer(imp.get("min_trials"), "optuna:stop:improvement:min_trials", minimum=2,
                                 default=max(5, window + 1))
        bar = imp.get("bar", 0.1)
        if not is_number(bar) or not 0 < float(bar) < 1:
            chk.add("optuna:stop:improvement:bar", f"must be a fraction between 0 and 1 (of the values' "
                    f"interquartile range), got {bar!r}")
            bar = 0.1
    if patience is None and window is None:
        chk.add("optuna:stop", "names no rule; give patience (with min_delta) and/or improvement")
        return None
    return StopSpec(patience=patience, min_delta=float(delta), window=window, bar=float(bar),
                    min_trials=min_trials)


# --------------------------------------------------------------------------- budget


def budget_verdict(spec: BudgetSpec, trials: Sequence[optuna.trial.FrozenTrial], *,
                   now: datetime.datetime | None = None) -> tuple[str, str] | None:
    """("budget", why) when no new trial may start, else None. ``trials``: the study's, all states."""
    import optuna

    TS = optuna.trial.TrialState
    now = now or datetime.datetime.now()
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    finished = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    lengths = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished  # type: ignore[operator]
               if t.state != TS.FAIL]
    if spec.wall_time_s is not None and started:
        elapsed = (now - min(started)).total_seconds()
        expected = statistics.median(lengths) if lengths else 0.0
        if elapsed + expected >= spec.wall_time_s:
            return ("wall_time", f"the study has run {_hms(elapsed)} of its wall_time {_hms(spec.wall_time_s)}"
                    + (f" and a trial takes about {_hms(expected)}" if expected else ""))
    if spec.gpu_hours is not None:
        used = sum(trial_hours(t, now) for t in trials if t.state.is_finished())
        running = sum(expected_hours(t, lengths, now) for t in trials if t.state == TS.RUNNING)
        if used + running >= spec.gpu_hours:
            return ("gpu_hours", f"{used:.3f} GPU-hours used and about {running:.3f} in running trials reach "
                    f"the budget of {spec.gpu_hours:g} GPU-hours")
    return None


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


# --------------------------------------------------------------------------- stop rules


def stop_rule(spec: StopSpec, trials: Sequence[optuna.trial.FrozenTrial], direction: str) -> tuple[str, str] | None:
    """(rule, why) when a rule of ``spec`` fires on the finished trials (COMPLETE and PRUNED), in the
    order they finished: a pruned trial counts as a trial that did not improve the best."""
    import optuna

    TS = optuna.trial.TrialState
    done = sorted((t for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)),
                  key=lambda t: (t.datetime_complete or datetime.datetime.max, t.number))
    values = [float(t.value) for t in done if t.state == TS.COMPLETE and t.value is not None]
    if not values:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    best = _running_best([sign * float(t.value) if t.state == TS.COMPLETE and t.value is not None else math.inf
                          for t in done])  # minimising sign*value; inf until the first complete trial
    if spec.patience is not None and len(best) > spec.patience:
        before, now = best[-spec.patience - 1], best[-1]
        if math.isfinite(before) and before - now <= spec.min_delta:  # inf: no complete trial back then
            return ("patience", f"the best value improved by {sign * (before - now):+.6g} (no more than min_delta "
                    f"{spec.min_delta:g}) over the last {spec.patience} finished trials; best {sign * now:.6g}")
    if spec.window is not None and len(best) >= max(spec.min_trials, spec.window + 1):
        q = statistics.quantiles(values, n=4) if len(values) >= 2 else [0.0, 0.0, 0.0]
        iqr = q[2] - q[0]
        gain = best[-spec.window - 1] - best[-1]
        relative = gain / iqr if iqr > 0 else 0.0
        if math.isfinite(best[-spec.window - 1]) and relative < spec.bar:
            return ("improvement", f"the best value improved by {relative:.1%} of the values' interquartile range "
                    f"({iqr:.6g}) over the last {spec.window} finished trials, below the bar of {spec.bar:.0%}; "
                    f"best {sign * best[-1]:.6g}")
    return None


def _running_best(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else min(out[-1], v))
    return out


# --------------------------------------------------------------------------- the record


def recorded_stop(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    value = attrs.get(STOP_ATTR)
    return value if isinstance(value, dict) else None


def clear_recorded_stop(study: optuna.Study) -> dict[str, Any] | None:
    """Forget why the last run ended (a new ``optimize`` checks the budget and rules again); return it."""
    existing = recorded_stop(study.user_attrs)
    if existing is not None:
        study.set_user_attr(STOP_ATTR, None)
    return existing


def record_stop(study: optuna.Study, rule: str, why: str) -> dict[str, Any]:
    """Write why the search ends into the study (first writer wins; a later rule leaves it)."""
    existing = recorded_stop(study.user_attrs)
    if existing is not None:
        return existing
    record = {"rule": rule, "why": why, "at": time.time()}
    study.set_user_attr(STOP_ATTR, record)
    logger.warning("the search stops starting trials: %s (%s)", why, rule)
    return record


# --------------------------------------------------------------------------- in the worker


def applies(spec: Any) -> bool:
    """Whether the search has a budget or a stop rule (else nothing here runs)."""
    return spec.budget is not None or spec.stop is not None


def reached(opened: Any, spec: Any, worker_index: int = 0, conn: Any = None) -> bool:
    """In the claim, under the budget lock: whether no new trial may start (a stop already
    recorded, or the budget spent, which is then recorded). ``conn``: the claim's transaction."""
    stopped = recorded_stop(opened.storage.get_study_user_attrs(opened.study_id))
    if stopped is not None:
        return True
    if spec.budget is None:
        return False
    verdict = budget_verdict(spec.budget, timing_rows(opened, conn))
    if verdict is None:
        return False
    record_stop(opened.study, *verdict)
    logger.info("worker %d: %s", worker_index, verdict[1])
    return True


@dataclass
class _Timing:
    """What the budget reads of a trial: its state, times and GPUs (duck-typed as a FrozenTrial)."""

    state: Any
    datetime_start: datetime.datetime | None
    datetime_complete: datetime.datetime | None
    user_attrs: dict[str, Any]


def timing_rows(opened: Any, conn: Any = None) -> list[Any]:
    """Every trial's state, start, end and ``gpus``: one SELECT on optuna's tables in the claim's
    transaction on an RDB storage (not every trial's parameters and values, which the budget
    does not need, under the lock); optuna's ``get_all_trials`` elsewhere."""
    import json

    import optuna

    if conn is None or not isinstance(opened.storage, optuna.storages.RDBStorage):
        return opened.storage.get_all_trials(opened.study_id, deepcopy=False)
    import sqlalchemy

    from hyper_opt.study import _as_datetime

    rows = conn.execute(sqlalchemy.text(
        "SELECT t.state, t.datetime_start, t.datetime_complete, a.value_json FROM trials t "
        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'gpus' "
        "WHERE t.study_id = :sid"), {"sid": opened.study_id}).fetchall()
    out = []
    for state, start, end, gpus in rows:
        name = getattr(state, "name", str(state))
        out.append(_Timing(optuna.trial.TrialState[name], _as_datetime(start) if start else None,
                           _as_datetime(end) if end else None, {"gpus": json.loads(gpus) if gpus else 0}))
    return out


def stop_rule_fired(opened: Any, spec: Any, worker_index: int = 0) -> bool:
    """After a trial finished: evaluate the stop rules on the study; record and say it when one fires."""
    if spec.stop is None:
        return False
    from hyper_opt.storage import with_db_retry

    def check() -> bool:
        if recorded_stop(opened.storage.get_study_user_attrs(opened.study_id)) is not None:
            return True
        fired = stop_rule(spec.stop, opened.storage.get_all_trials(opened.study_id, deepcopy=False),
                          spec.directions[0])
        if fired is None:
            return False
        record_stop(opened.study, *fired)
        return True

    try:
        return with_db_retry(check, seconds=spec.db_retry_seconds, what="checking the stop rules")
    except Exception as err:  # noqa: BLE001 - a stop rule must never fail the search
        logger.warning("worker %d: the stop rules could not be checked: %s", worker_index, err)
        return False
