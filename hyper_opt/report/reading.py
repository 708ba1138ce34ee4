"""Reading a study's trials in bulk: a few SELECTs over optuna's tables instead of its ORM.

optuna's ``RDBStorage.get_all_trials`` builds every row of six tables into ORM objects and then
into ``FrozenTrial``: about 6 s for 5,000 trials with 20 reported steps on PostgreSQL, most of
the time ``hyper-opt report`` took. :func:`read_trials` reads the same rows with one plain
SELECT per table (in one snapshot on PostgreSQL) and builds the same ``FrozenTrial`` objects the
way optuna does (values by objective, parameters through their distribution, JSON attributes,
naive-UTC datetimes shown in local time).

It is an optimisation only, never a second source of truth: on any other storage (journal,
in-memory), on a schema that does not answer the queries, or when the last finished trial read
this way differs from ``storage.get_trial`` for it, it falls back to optuna's public
``get_all_trials`` (a warning says so). tests/test_report_reading.py compares the two readers
field by field on PostgreSQL and SQLite.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

# What a reader can leave out when its caller does not show it.
PARTS = ("values", "params", "user_attrs", "system_attrs", "intermediate_values")

_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


class _SchemaMismatch(Exception):
    """The rows do not read as expected: use optuna's own reader."""


def read_trials(storage: Any, study_id: int, *, states: Iterable[Any] | None = None,
                parts: Collection[str] = PARTS) -> list[optuna.trial.FrozenTrial]:
    """The study's trials (of ``states`` if given) as ``FrozenTrial``, ordered as optuna orders them
    (by trial id). ``parts`` names what to fill in; the parts left out are empty (``values`` None).

    Bulk SELECTs on an :class:`optuna.storages.RDBStorage`, else ``storage.get_all_trials``.
    """
    import optuna

    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"parts must be among {PARTS}, but got {unknown}.")
    state_names = None if states is None else sorted({getattr(s, "name", str(s)) for s in states})
    if state_names == []:
        return []
    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy

        from hyper_opt.storage import is_connection_error

        collecting = gc.isenabled()
        gc.disable()  # 100,000s of new objects that all live on: the collector's passes only cost time (40 %)
        try:
            trials = _bulk_read(storage, study_id, state_names, set(parts))
            _check_sample(storage, trials, set(parts))
            return trials
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            if is_connection_error(err):  # an outage, not another schema: the caller retries
                raise
            logger.warning("reading trials in bulk failed (%s: %s); reading them through optuna instead",
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        except _SchemaMismatch as err:
            logger.warning("reading trials in bulk: %s; reading them through optuna instead", err)
        finally:
            if collecting:
                gc.enable()
    wanted = None if state_names is None else tuple(optuna.trial.TrialState[s] for s in state_names)
    return list(storage.get_all_trials(study_id, deepcopy=False, states=wanted))


def _local(value: dt.datetime | None) -> dt.datetime | None:
    """optuna 5 stores naive UTC and shows naive local time."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc).astimezone().replace(tzinfo=None)


def _bulk_read(storage: Any, study_id: int, state_names: list[str] | None,
               parts: set[str]) -> list[optuna.trial.FrozenTrial]:
    rows, fetched = _fetch(storage, study_id, state_names, parts)
    return _assemble(rows, fetched)


def _fetch(storage: Any, study_id: int, state_names: list[str] | None,
           parts: set[str]) -> tuple[list[Any], dict[str, list[Any]]]:
    """The study's trial rows and, for each of ``parts``, its rows of the joined table, all read
    in one transaction (one snapshot on PostgreSQL)."""
    import sqlalchemy as sa

    text = sa.text
    where = "t.study_id = :sid" + (" AND t.state IN :states" if state_names is not None else "")
    bind: dict[str, Any] = {"sid": study_id}
    if state_names is not None:
        bind["states"] = list(state_names)

    def select(sql: str, **types: Any) -> Any:
        clause = text(sql)
        if state_names is not None:
            clause = clause.bindparams(sa.bindparam("states", expanding=True))
        return clause.columns(*(sa.column(name, type_) for name, type_ in types.items())) if types else clause

    def joined(table: str, columns: str, order: str) -> Any:
        return select(f"SELECT x.trial_id, {columns} FROM {table} x JOIN trials t ON t.trial_id = x.trial_id "
                      f"WHERE {where} ORDER BY x.{order}")

    engine = storage.engine
    with engine.connect() as conn:
        with conn.begin():
            if engine.dialect.name == "postgresql":  # every SELECT from one snapshot (this transaction only)
                conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            rows = conn.execute(select(
                f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete FROM trials t "
                f"WHERE {where} ORDER BY t.trial_id",
                trial_id=sa.Integer, number=sa.Integer, state=sa.String, datetime_start=sa.DateTime,
                datetime_complete=sa.DateTime), bind).fetchall()
            fetched: dict[str, list[Any]] = {}
            if "values" in parts:
                fetched["values"] = conn.execute(joined("trial_values", "x.objective, x.value, x.value_type",
                                                        "trial_value_id"), bind).fetchall()
            if "params" in parts:
                fetched["params"] = conn.execute(joined(
                    "trial_params", "x.param_name, x.param_value, x.distribution_json", "param_id"), bind).fetchall()
            if "user_attrs" in parts:
                fetched["user_attrs"] = conn.execute(joined(
                    "trial_user_attributes", "x.key, x.value_json", "trial_user_attribute_id"), bind).fetchall()
            if "system_attrs" in parts:
                fetched["system_attrs"] = conn.execute(joined(
                    "trial_system_attributes", "x.key, x.value_json", "trial_system_attribute_id"), bind).fetchall()
            if "intermediate_values" in parts:
                fetched["intermediate_values"] = conn.execute(joined(
                    "trial_intermediate_values", "x.step, x.intermediate_value, x.intermediate_value_type",
                    "trial_intermediate_value_id"), bind).fetchall()
    return rows, fetched


def _assemble(rows: list[Any], fetched: dict[str, list[Any]]) -> list[optuna.trial.FrozenTrial]:
    """FrozenTrials from :func:`_fetch`'s rows, checked as optuna's own reader would."""
    import optuna
    from optuna.distributions import json_to_distribution

    states = {s.name: s for s in optuna.trial.TrialState}
    by_id: dict[int, dict[str, Any]] = {}
    for trial_id, number, state, start, complete in rows:
        name = getattr(state, "name", state)
        if name not in states:
            raise _SchemaMismatch(f"unknown trial state {state!r}")
        by_id[trial_id] = {"number": number, "state": states[name], "datetime_start": _local(start),
                           "datetime_complete": _local(complete), "values": None, "params": {},
                           "distributions": {}, "user_attrs": {}, "system_attrs": {}, "intermediate_values": {}}

    def kind(value: Any) -> str:
        return getattr(value, "name", value)

    raw_values: dict[int, dict[int, float]] = {}
    for trial_id, objective, value, value_type in fetched.get("values", ()):
        if trial_id in by_id:
            vt = kind(value_type)
            raw_values.setdefault(trial_id, {})[objective] = value if vt == "FINITE" else _stored(vt, value)
    for trial_id, values in raw_values.items():
        if sorted(values) != list(range(len(values))):
            raise _SchemaMismatch(f"trial id {trial_id} has values for objectives {sorted(values)}")
        by_id[trial_id]["values"] = [values[k] for k in range(len(values))]
    distributions: dict[str, Any] = {}  # the same JSON on every trial: parse it once
    for trial_id, name, value, dist_json in fetched.get("params", ()):
        if trial_id not in by_id:
            continue
        dist = distributions.get(dist_json)
        if dist is None:
            dist = distributions[dist_json] = json_to_distribution(dist_json)
        trial = by_id[trial_id]
        trial["params"][name] = dist.to_external_repr(value)
        trial["distributions"][name] = dist
    for part in ("user_attrs", "system_attrs"):
        for trial_id, key, value_json in fetched.get(part, ()):
            if trial_id in by_id:
                by_id[trial_id][part][key] = json.loads(value_json)
    for trial_id, step, value, value_type in fetched.get("intermediate_values", ()):
        if trial_id in by_id:
            vt = kind(value_type)
            by_id[trial_id]["intermediate_values"][step] = value if vt == "FINITE" else _stored(vt, value)
    return [optuna.trial.FrozenTrial(value=None, trial_id=trial_id, **fields) for trial_id, fields in by_id.items()]


def _stored(value_type: str, value: Any) -> float:
    if value_type not in _INF or value is not None:
        raise _SchemaMismatch(f"unknown stored value {value!r} of type {value_type!r}")
    return _INF[value_type]


def same_trial(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial, parts: Collection[str] = PARTS) -> bool:
    """Whether two readings of one trial agree on everything in ``parts`` (NaN equal to NaN)."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(v, y[k]) for k, v in x.items())
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return bool(x == y) and type(x) is type(y)

    fields = ["number", "state", "datetime_start", "datetime_complete", "_trial_id"]
    fields += [f for f in ("values", "params", "distributions", "user_attrs", "system_attrs", "intermediate_values")
               if f in parts or (f == "distributions" and "params" in parts)]
    return all(same(getattr(a, f), getattr(b, f)) for f in fields)


def _check_sample(storage: Any, trials: list[optuna.trial.FrozenTrial], parts: set[str]) -> None:
    """Compare the last finished trial (it no longer changes) with optuna's own reading of it."""
    finished = [t for t in trials if t.state.is_finished()]
    if not finished:
        return
    sample = finished[-1]
    theirs = storage.get_trial(sample._trial_id)
    if not same_trial(sample, theirs, parts):
        raise _SchemaMismatch(f"trial {sample.number} reads differently from optuna's get_trial "
                              f"(bulk {sample!r}, optuna {theirs!r})")


def time_span(storage: Any, study_id: int) -> tuple[int, dt.datetime | None, dt.datetime | None]:
    """(finished trials with an end time, the first trial's start, the last trial's end), in local
    time: one aggregate query on a database, optuna's ``get_all_trials`` elsewhere."""
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy as sa

        from hyper_opt.storage import is_connection_error

        query = sa.text("SELECT COUNT(datetime_complete) AS n, MIN(datetime_start) AS first, "
                        "MAX(datetime_complete) AS last FROM trials WHERE study_id = :sid").columns(
            sa.column("n", sa.Integer), sa.column("first", sa.DateTime), sa.column("last", sa.DateTime))
        try:
            with storage.engine.connect() as conn:
                n, first, last = conn.execute(query, {"sid": study_id}).one()
            return int(n or 0), _local(first), _local(last)
        except (sa.exc.ProgrammingError, sa.exc.OperationalError) as err:
            if is_connection_error(err):
                raise
            logger.warning("reading the study's time span in one query failed (%s); reading every trial instead",
                           type(err).__name__)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    done = [t.datetime_complete for t in trials if t.state.is_finished() and t.datetime_complete]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    return len(done), min(starts, default=None), max(done, default=None)
