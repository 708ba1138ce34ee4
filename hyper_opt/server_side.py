"""What hyper_opt keeps on a PostgreSQL server beside optuna's tables, and the one-statement calls
that use it (issue 24).

* ``hyper_opt_studies_<VERSION>``: one row per study: when its stale trials were last looked for (the
  *scan turn*, so that one worker per ``heartbeat_interval`` looks, not every worker), how many
  times, and the *counted prefix*: every trial of the study up to ``done_through`` (a trial id) is
  finished (COMPLETE, PRUNED or FAIL: states optuna never changes again), and the prefix holds
  ``done_total`` trials, ``done_finished`` of them COMPLETE or PRUNED. A claim then counts only
  the trials after the prefix (those of the running workers and the few finished since the oldest
  running one) instead of the whole study.
* ``hyper_opt_claim_<VERSION>(...)``: the claim as one statement: the study's budget advisory lock,
  the count, pop the first WAITING trial or create one in optuna's ``trials`` table (numbered as
  optuna numbers it), its first heartbeat and the run context in ``trial_user_attributes``. The
  lock is held for the server's time only (no client round trip while it is held) and released at
  the statement's commit.
* ``hyper_opt_stale_<VERSION>(...)``: takes the study's scan turn if one is due and returns the stale
  RUNNING trials (heartbeat older than ``grace_period``, or no heartbeat and started that long
  ago); the caller fails and re-queues them through optuna.

The names end in a digest of the definitions (:data:`VERSION`): a changed body gets a new name,
so that workers of an older hyper_opt still running on the same database keep theirs. They are created once, under an advisory lock
(concurrent ``CREATE FUNCTION`` of one name fails with "tuple concurrently updated"), by the
launcher or by the first worker that finds them missing. Nothing here has a foreign key into
optuna's tables, so ``optuna.delete_study`` works as before (a deleted study's row stays, unused:
study ids are never reused).

Timestamps follow optuna 5: ``trials.datetime_start`` in naive UTC, heartbeats in the server's
session time zone (``now()``/``LOCALTIMESTAMP``, as ``RDBStorage.record_heartbeat`` writes and
its stale check reads them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from hyper_opt.storage import _first_line, _sqlstate

logger = logging.getLogger(__name__)

INSTALL_LOCK_KEY = 0x68797065725F6F70  # "hyper_op": serialises the installs of every version
# SQLSTATEs meaning "not installed here yet": undefined function, undefined table.
_MISSING = {"42883", "42P01"}
_NO_RIGHTS = {"42501"}  # insufficient privilege: the old path, with a warning

_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    study_id integer PRIMARY KEY,
    scanned_at timestamptz,
    scans bigint NOT NULL DEFAULT 0,
    done_through integer NOT NULL DEFAULT 0,
    done_total integer NOT NULL DEFAULT 0,
    done_finished integer NOT NULL DEFAULT 0
)"""

# plan_cache_mode: the tail's bound (trial_id > done_through) is planned with its value, so
# that PostgreSQL walks the primary key from there instead of every trial of the study.
_CLAIM_DDL = """
CREATE OR REPLACE FUNCTION {claim}(
    p_study_id integer, p_lock_key bigint, p_n_trials integer, p_can_wait boolean,
    p_lock_timeout_ms integer, p_heartbeat boolean, p_keys text[], p_values text[])
RETURNS TABLE (outcome text, trial_id integer, trial_number integer, origin integer,
               started timestamp, held_us bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $body$
#variable_conflict use_column
DECLARE
    v_locked timestamptz;
    v_done integer; v_done_total integer; v_done_finished integer;
    v_new_done integer; v_add_total integer := 0; v_add_finished integer := 0; v_open boolean := true;
    v_total integer := 0; v_finished integer := 0; v_running integer := 0;
    v_waiting integer[] := '{{}}';
    v_id integer; v_number integer; v_origin integer; v_start timestamp; v_text text; v_popped boolean;
    r record;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true);
    PERFORM pg_advisory_xact_lock(p_lock_key);
    v_locked := clock_timestamp();
    -- as optuna's create_new_trial: trials are numbered under the study's row lock
    PERFORM 1 FROM studies s WHERE s.study_id = p_study_id FOR UPDATE;
    INSERT INTO {table} AS m (study_id) VALUES (p_study_id) ON CONFLICT (study_id) DO NOTHING;
    SELECT m.done_through, m.done_total, m.done_finished INTO v_done, v_done_total, v_done_finished
        FROM {table} m WHERE m.study_id = p_study_id;
    v_new_done := v_done;
    FOR r IN SELECT t.trial_id AS id, t.state::text AS state FROM trials t
             WHERE t.study_id = p_study_id AND t.trial_id > v_done ORDER BY t.trial_id LOOP
        v_total := v_total + 1;
        IF r.state IN ('COMPLETE', 'PRUNED') THEN
            v_finished := v_finished + 1;
        ELSIF r.state = 'RUNNING' THEN
            v_running := v_running + 1;
        ELSIF r.state = 'WAITING' THEN
            v_waiting := v_waiting || r.id;
        END IF;
        IF v_open AND r.state IN ('COMPLETE', 'PRUNED', 'FAIL') THEN
            v_new_done := r.id;
            v_add_total := v_add_total + 1;
            v_add_finished := v_add_finished + (r.state <> 'FAIL')::integer;
        ELSE
            v_open := false;
        END IF;
    END LOOP;
    IF v_new_done <> v_done THEN
        UPDATE {table} m SET done_through = v_new_done, done_total = m.done_total + v_add_total,
            done_finished = m.done_finished + v_add_finished WHERE m.study_id = p_study_id;
    END IF;
    v_total := v_total + v_done_total;
    v_finished := v_finished + v_done_finished;
    IF v_finished >= p_n_trials OR (v_finished + v_running >= p_n_trials AND NOT p_can_wait) THEN
        RETURN QUERY SELECT 'budget'::text, NULL::integer, NULL::integer, NULL::integer, NULL::timestamp,
            (extract(epoch FROM clock_timestamp() - v_locked) * 1e6)::bigint;
        RETURN;
    END IF;
    IF v_finished + v_running >= p_n_trials THEN
        RETURN QUERY SELECT 'wait'::text, NULL::integer, NULL::integer, NULL::integer, NULL::timestamp,
            (extract(epoch FROM clock_timestamp() - v_locked) * 1e6)::bigint;
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(v_waiting, 1), 0) LOOP
        UPDATE trials t SET state = 'RUNNING', datetime_start = (clock_timestamp() AT TIME ZONE 'UTC')
            WHERE t.trial_id = v_waiting[i] AND t.state = 'WAITING'
            RETURNING t.trial_id, t.number, t.datetime_start INTO v_id, v_number, v_start;
        EXIT WHEN v_id IS NOT NULL;
    END LOOP;
    v_popped := v_id IS NOT NULL;
    IF v_popped THEN
        SELECT a.value_json INTO v_text FROM trial_system_attributes a
            WHERE a.trial_id = v_id AND a.key = 'failed_trial';
        IF v_text ~ '^-?[0-9]+$' THEN
            v_origin := v_text::integer;
        END IF;
    ELSE
        INSERT INTO trials (number, study_id, state, datetime_start)
            VALUES (v_total, p_study_id, 'RUNNING', clock_timestamp() AT TIME ZONE 'UTC')
            RETURNING trials.trial_id, trials.number, trials.datetime_start INTO v_id, v_number, v_start;
    END IF;
    IF p_heartbeat THEN
        INSERT INTO trial_heartbeats AS h (trial_id, heartbeat) VALUES (v_id, clock_timestamp())
            ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat;
    END IF;
    INSERT INTO trial_user_attributes AS u (trial_id, key, value_json)
        SELECT v_id, k.key, k.value FROM unnest(p_keys, p_values) AS k(key, value)
        UNION ALL SELECT v_id, 'retry_of', v_origin::text WHERE v_origin IS NOT NULL
        ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json;
    RETURN QUERY SELECT CASE WHEN v_popped THEN 'popped' ELSE 'created' END, v_id, v_number, v_origin, v_start,
        (extract(epoch FROM clock_timestamp() - v_locked) * 1e6)::bigint;
END
$body$"""

_STALE_DDL = """
CREATE OR REPLACE FUNCTION {stale}(p_study_id integer, p_interval_s double precision,
                                           p_grace_s double precision)
RETURNS TABLE (trial_id integer, trial_number integer, silent boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $body$
#variable_conflict use_column
DECLARE
    v_done integer;
BEGIN
    INSERT INTO {table} AS m (study_id, scanned_at, scans) VALUES (p_study_id, clock_timestamp(), 1)
        ON CONFLICT (study_id) DO UPDATE SET scanned_at = excluded.scanned_at, scans = m.scans + 1
        WHERE m.scanned_at IS NULL OR m.scanned_at <= excluded.scanned_at - make_interval(secs => p_interval_s)
        RETURNING m.done_through INTO v_done;
    IF NOT FOUND THEN
        RETURN;  -- another worker looked less than an interval ago
    END IF;
    RETURN QUERY SELECT NULL::integer, NULL::integer, NULL::boolean;  -- this caller has the turn
    RETURN QUERY SELECT t.trial_id, t.number, h.trial_id IS NULL FROM trials t
        LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id
        WHERE t.study_id = p_study_id AND t.trial_id > v_done AND t.state = 'RUNNING'
          AND CASE WHEN h.trial_id IS NULL
                   THEN t.datetime_start < (now() AT TIME ZONE 'UTC') - make_interval(secs => p_grace_s)
                   ELSE h.heartbeat < LOCALTIMESTAMP - make_interval(secs => p_grace_s) END
        ORDER BY t.trial_id;
END
$body$"""


# The names carry a digest of the definitions: a changed body is a new name (never a replaced one).
VERSION = hashlib.sha256((_TABLE_DDL + _CLAIM_DDL + _STALE_DDL).encode()).hexdigest()[:8]
TABLE = f"hyper_opt_studies_{VERSION}"
CLAIM_FUNCTION = f"hyper_opt_claim_{VERSION}"
STALE_FUNCTION = f"hyper_opt_stale_{VERSION}"
_NAMES = {"table": TABLE, "claim": CLAIM_FUNCTION, "stale": STALE_FUNCTION}


@dataclass(frozen=True)
class ServerClaim:
    """What :func:`claim` answered: ``outcome`` "created" or "popped" (a new trial, or the first
    WAITING one, is now RUNNING), "wait" (the budget is full with trials still running) or
    "budget" (nothing left to start); for a started trial its id, number and origin."""

    outcome: str
    trial_id: int | None = None
    number: int | None = None
    origin: int | None = None  # the number of the trial a re-queued copy retries
    started: Any = None  # trials.datetime_start as stored: naive UTC
    held_s: float = 0.0  # the budget lock, from granted to the end of the function (the commit follows)

    @property
    def started_trial(self) -> bool:
        return self.outcome in ("created", "popped")

    @property
    def popped(self) -> bool:
        return self.outcome == "popped"


def supported(storage: Any) -> bool:
    """Whether ``storage`` is optuna's RDBStorage on PostgreSQL (where these objects live)."""
    engine = getattr(storage, "engine", None)
    return engine is not None and engine.dialect.name == "postgresql"


def _installed(conn: Any) -> bool:
    import sqlalchemy

    found = conn.execute(sqlalchemy.text(
        "SELECT to_regclass(:t) IS NOT NULL AND to_regproc(:c) IS NOT NULL AND to_regproc(:s) IS NOT NULL"),
        {"t": TABLE, "c": CLAIM_FUNCTION, "s": STALE_FUNCTION}).scalar()
    return bool(found)


def install(engine: Any) -> bool:
    """Create the table and functions if missing (idempotent, safe with any number of processes
    at once). False, with a warning, when the database user may not create them: the caller
    keeps the path that needs none of them."""
    import sqlalchemy

    try:
        with engine.connect() as conn:
            if _installed(conn):
                return True
            conn.rollback()
            with conn.begin():
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": INSTALL_LOCK_KEY})
                if not _installed(conn):
                    for ddl in (_TABLE_DDL, _CLAIM_DDL, _STALE_DDL):
                        conn.exec_driver_sql(ddl.format(**_NAMES))
                    logger.info("created hyper_opt's claim function and table (version %s) in the database", VERSION)
        return True
    except Exception as err:
        if _sqlstate(err) in _NO_RIGHTS:
            logger.warning("cannot create hyper_opt's claim function in the database (%s); claims take "
                           "several round trips instead (grant CREATE on the schema to use it)", _first_line(err))
            return False
        raise


def _call(engine: Any, statement: str, params: dict[str, Any]) -> list[Any]:
    """One statement in autocommit (one round trip; its implicit transaction commits at once),
    installing the objects first if the server does not know them yet."""
    import sqlalchemy

    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                auto = conn.execution_options(isolation_level="AUTOCOMMIT")
                return list(auto.execute(sqlalchemy.text(statement), params).fetchall())
        except Exception as err:
            if attempt == 2 or _sqlstate(err) not in _MISSING:
                raise
        if not install(engine):
            raise NotInstalled(f"{CLAIM_FUNCTION} could not be created")
    raise AssertionError("not reached")


class NotInstalled(RuntimeError):
    """The database user may not create hyper_opt's objects: use the path without them."""


def claim(storage: Any, *, study_id: int, lock_key: int, n_trials: int, can_wait: bool,
          lock_timeout_s: float, heartbeat: bool, attrs: dict[str, Any]) -> ServerClaim:
    """The claim in one round trip (see the module's docstring). ``attrs``: user attributes of the
    started trial (the run context), written as optuna writes them (``json.dumps``)."""
    keys = list(attrs)
    rows = _call(storage.engine,
                 f"SELECT outcome, trial_id, trial_number, origin, started, held_us FROM {CLAIM_FUNCTION}"
                 "(CAST(:sid AS integer), CAST(:key AS bigint), CAST(:n AS integer), CAST(:wait AS boolean), "
                 "CAST(:lt AS integer), CAST(:hb AS boolean), CAST(:keys AS text[]), CAST(:vals AS text[]))",
                 {"sid": study_id, "key": lock_key, "n": n_trials, "wait": can_wait,
                  "lt": int(lock_timeout_s * 1000), "hb": heartbeat, "keys": keys,
                  "vals": [json.dumps(attrs[k]) for k in keys]})
    outcome, trial_id, number, origin, started, held_us = rows[0]
    return ServerClaim(outcome, trial_id, number, origin, started, (held_us or 0) / 1e6)


def stale_trials(storage: Any, *, study_id: int, interval_s: float,
                 grace_s: float) -> list[tuple[int, int, bool]] | None:
    """The study's stale RUNNING trials as (trial id, number, never beat) if this caller took the
    scan turn (nobody took it within ``interval_s``), else None."""
    rows = _call(storage.engine, f"SELECT trial_id, trial_number, silent FROM {STALE_FUNCTION}(CAST(:sid AS integer), "
                 "CAST(:iv AS double precision), CAST(:gr AS double precision))",
                 {"sid": study_id, "iv": float(interval_s), "gr": float(grace_s)})
    if not rows:
        return None
    return [(int(a), int(b), bool(c)) for a, b, c in rows if a is not None]


def scans(engine: Any, study_id: int) -> int:
    """How many scan turns the study's workers have taken (for tests and benchmarks)."""
    import sqlalchemy

    with engine.connect() as conn:
        try:
            n = conn.execute(sqlalchemy.text(f"SELECT scans FROM {TABLE} WHERE study_id = :sid"),
                             {"sid": study_id}).scalar()
        except Exception as err:
            if _sqlstate(err) in _MISSING:
                return 0
            raise
    return int(n or 0)


HEARTBEAT_SQL = ("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, now()) "
                 "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat")


def record_heartbeat(storage: Any, trial_id: int) -> None:
    """A trial's heartbeat as one statement in autocommit on PostgreSQL (optuna's
    ``record_heartbeat`` is a transaction of three: read, read for update, write); optuna's call
    elsewhere."""
    if not supported(storage):
        storage.record_heartbeat(trial_id)
        return
    import sqlalchemy

    with storage.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sqlalchemy.text(HEARTBEAT_SQL), {"t": trial_id})
