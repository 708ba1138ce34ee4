"""What hyper_opt keeps on a PostgreSQL server beside optuna's tables, and the one-statement calls
that use it (issue 24).

* ``hyper_opt_studies_<VERSION>``: one row per study: when its stale trials were last looked for (the
  *scan turn*, so that one worker per interval looks, not every worker), how many times, and the
  claim's running count, kept as optuna's own cache keeps a study: the largest trial id read
  (``seen_through``), how many of the trials up to it were finished when read (``finished_total``;
  COMPLETE or PRUNED: ``finished_budget``), the ids of those that were not (``pending``; the
  WAITING ones among them: ``waiting``). Finished is final in optuna, so a pending trial can only
  have finished since: a claim reads the trials created since the last claim and the one its
  worker has just told, and reads the pending ones again only when they have doubled since they
  were last read (``checked``), or when the budget is close (then the count must be exact), there
  at most once per :data:`RECHECK_S` for the study (``checked_at``). On average a claim reads O(1)
  trials, whatever the number of workers or the size of the study.
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
    seen_through integer NOT NULL DEFAULT 0,
    finished_total integer NOT NULL DEFAULT 0,
    finished_budget integer NOT NULL DEFAULT 0,
    pending integer[] NOT NULL DEFAULT '{{}}',
    waiting integer[] NOT NULL DEFAULT '{{}}',
    checked integer NOT NULL DEFAULT 0,
    checked_at timestamptz,
    swept_for integer
)"""

# The study's trials created since the last claim (trial_id > seen), planned for the actual bound
# (EXECUTE .. USING) on the primary key (``study_id + 0`` keeps the planner off the study_id
# index, which would read every trial of the study); the whole study through its index the first
# time.
_TAIL_SQL = """
    IF v_seen = 0 THEN
        OPEN c FOR SELECT t.trial_id, t.state::text FROM trials t WHERE t.study_id = p_study_id
            ORDER BY t.trial_id;
    ELSE
        OPEN c FOR EXECUTE 'SELECT t.trial_id, t.state::text FROM trials t WHERE t.trial_id > $1 '
            'AND t.study_id + 0 = $2 ORDER BY t.trial_id' USING v_seen, p_study_id;
    END IF;"""

_CLAIM_DDL = """
CREATE OR REPLACE FUNCTION {claim}(
    p_study_id integer, p_lock_key bigint, p_n_trials integer, p_can_wait boolean,
    p_lock_timeout_ms integer, p_heartbeat boolean, p_keys text[], p_values text[],
    p_done integer, p_recheck_s double precision)
RETURNS TABLE (outcome text, trial_id integer, trial_number integer, origin integer,
               started timestamp, held_us bigint)
LANGUAGE plpgsql
AS $body$
#variable_conflict use_column
DECLARE
    v_locked timestamptz;
    v_seen integer; v_new_seen integer; v_ftotal integer; v_fbudget integer; v_checked integer;
    v_old integer[]; v_old_waiting integer[];
    v_kept integer[] := '{{}}'; v_kept_waiting integer[] := '{{}}';
    v_new integer[] := '{{}}'; v_new_waiting integer[] := '{{}}';
    v_pending integer[]; v_waiting integer[]; v_exact boolean; v_busy integer; v_swept integer;
    v_id integer; v_number integer; v_origin integer; v_start timestamp; v_text text; v_popped boolean;
    v_tid integer; v_state text; v_checked_at timestamptz;
    c refcursor;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true);
    PERFORM pg_advisory_xact_lock(p_lock_key);
    v_locked := clock_timestamp();
    -- as optuna's create_new_trial: trials are created (and numbered) under the study's row lock,
    -- so every trial of the study with an id up to the largest one read is committed and read
    PERFORM 1 FROM studies s WHERE s.study_id = p_study_id FOR UPDATE;
    SELECT m.seen_through, m.finished_total, m.finished_budget, m.pending, m.waiting, m.checked, m.swept_for,
           m.checked_at
        INTO v_seen, v_ftotal, v_fbudget, v_old, v_old_waiting, v_checked, v_swept, v_checked_at
        FROM {table} m WHERE m.study_id = p_study_id;
    IF NOT FOUND THEN
        INSERT INTO {table} (study_id) VALUES (p_study_id) ON CONFLICT (study_id) DO NOTHING;
        v_seen := 0; v_ftotal := 0; v_fbudget := 0; v_old := '{{}}'; v_old_waiting := '{{}}'; v_checked := 0;
    END IF;
    v_new_seen := v_seen;{tail}
    LOOP
        FETCH c INTO v_tid, v_state;
        EXIT WHEN NOT FOUND;
        v_new_seen := greatest(v_new_seen, v_tid);
        IF v_state IN ('COMPLETE', 'PRUNED', 'FAIL') THEN
            v_ftotal := v_ftotal + 1;
            v_fbudget := v_fbudget + (v_state <> 'FAIL')::integer;
        ELSE
            v_new := v_new || v_tid;
            IF v_state = 'WAITING' THEN
                v_new_waiting := v_new_waiting || v_tid;
            END IF;
        END IF;
    END LOOP;
    CLOSE c;
    -- The trial the caller has just told (p_done): counted now if it is one of the unfinished ones
    -- (one row by its key), so that its worker's next claim sees it finished without a re-read.
    IF p_done IS NOT NULL AND p_done = ANY(v_old) THEN
        SELECT t.state::text INTO v_state FROM trials t WHERE t.trial_id = p_done;
        IF v_state IN ('COMPLETE', 'PRUNED', 'FAIL') THEN
            v_old := array_remove(v_old, p_done);
            v_old_waiting := array_remove(v_old_waiting, p_done);
            v_ftotal := v_ftotal + 1;
            v_fbudget := v_fbudget + (v_state <> 'FAIL')::integer;
        END IF;
    END IF;
    -- Trials unfinished at an earlier claim (v_old) can only have finished since: counted as
    -- running they give an upper bound of finished + running, which decides "start" soundly.
    -- They are read again when they have doubled since they were last read (so each is read about
    -- twice: O(1) per claim on average), and when that bound reaches a budget not complete yet:
    -- then a "wait" may hide a slot freed by a failure or a WAITING trial to pop, so the count
    -- must be exact; but at most once per p_recheck_s for the study unless WAITING trials are
    -- known (every claim of every worker near the budget's end read them all: O(workers) each).
    -- Between two such reads a claim answers "wait" from the bound: never a trial too many, at
    -- worst a freed slot or the budget's end seen p_recheck_s later.
    v_exact := v_seen = 0;
    IF v_exact THEN
        v_checked_at := clock_timestamp();  -- the first claim reads the whole study
    END IF;
    IF NOT v_exact AND ((v_fbudget < p_n_trials AND v_fbudget + cardinality(v_old) + cardinality(v_new) >= p_n_trials
                         AND (v_checked_at IS NULL OR cardinality(v_old_waiting) + cardinality(v_new_waiting) > 0
                              OR clock_timestamp() - v_checked_at >= make_interval(secs => p_recheck_s)))
                        OR cardinality(v_old) >= 2 * v_checked + 16) THEN
        FOR v_tid, v_state IN SELECT t.trial_id, t.state::text FROM trials t WHERE t.trial_id = ANY(v_old)
                                  ORDER BY t.trial_id LOOP
            IF v_state IN ('COMPLETE', 'PRUNED', 'FAIL') THEN
                v_ftotal := v_ftotal + 1;
                v_fbudget := v_fbudget + (v_state <> 'FAIL')::integer;
            ELSE
                v_kept := v_kept || v_tid;
                IF v_state = 'WAITING' THEN
                    v_kept_waiting := v_kept_waiting || v_tid;
                END IF;
            END IF;
        END LOOP;
        v_old := v_kept;
        v_old_waiting := v_kept_waiting;
        v_exact := true;
        v_checked_at := clock_timestamp();
    END IF;
    v_pending := v_old || v_new;
    v_waiting := v_old_waiting || v_new_waiting;
    IF v_exact THEN
        v_checked := cardinality(v_pending);
        v_busy := v_fbudget + cardinality(v_pending) - cardinality(v_waiting);
    ELSE
        v_busy := v_fbudget + cardinality(v_pending);
    END IF;
    IF v_fbudget >= p_n_trials OR v_busy >= p_n_trials THEN
        UPDATE {table} m SET seen_through = v_new_seen, finished_total = v_ftotal, finished_budget = v_fbudget,
            pending = v_pending, waiting = v_waiting, checked = v_checked, checked_at = v_checked_at,
            swept_for = CASE WHEN v_fbudget >= p_n_trials THEN p_n_trials ELSE m.swept_for END
            WHERE m.study_id = p_study_id;
        -- 'budget-first': the first caller to see this budget complete (it writes the missing CSVs)
        RETURN QUERY SELECT CASE WHEN v_fbudget < p_n_trials AND p_can_wait THEN 'wait'
                                 WHEN v_fbudget >= p_n_trials AND v_swept IS DISTINCT FROM p_n_trials THEN 'budget-first'
                                 ELSE 'budget' END,
            NULL::integer, NULL::integer, NULL::integer, NULL::timestamp,
            (extract(epoch FROM clock_timestamp() - v_locked) * 1e6)::bigint;
        RETURN;
    END IF;
    WHILE v_id IS NULL AND cardinality(v_waiting) > 0 LOOP
        v_tid := v_waiting[1];
        v_waiting := v_waiting[2:];  -- popped now, or no longer WAITING (started elsewhere)
        UPDATE trials t SET state = 'RUNNING', datetime_start = (clock_timestamp() AT TIME ZONE 'UTC')
            WHERE t.trial_id = v_tid AND t.state = 'WAITING'
            RETURNING t.trial_id, t.number, t.datetime_start INTO v_id, v_number, v_start;
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
            VALUES (v_ftotal + cardinality(v_pending), p_study_id, 'RUNNING', clock_timestamp() AT TIME ZONE 'UTC')
            RETURNING trials.trial_id, trials.number, trials.datetime_start INTO v_id, v_number, v_start;
    END IF;
    UPDATE {table} m SET seen_through = v_new_seen, finished_total = v_ftotal, finished_budget = v_fbudget,
        pending = v_pending, waiting = v_waiting, checked = v_checked, checked_at = v_checked_at
        WHERE m.study_id = p_study_id;
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
AS $body$
#variable_conflict use_column
DECLARE
    v_seen integer;
    v_pending integer[];
BEGIN
    INSERT INTO {table} AS m (study_id, scanned_at, scans) VALUES (p_study_id, clock_timestamp(), 1)
        ON CONFLICT (study_id) DO UPDATE SET scanned_at = excluded.scanned_at, scans = m.scans + 1
        WHERE m.scanned_at IS NULL OR m.scanned_at <= excluded.scanned_at - make_interval(secs => p_interval_s)
        RETURNING m.seen_through, m.pending INTO v_seen, v_pending;
    IF NOT FOUND THEN
        RETURN;  -- another worker looked less than an interval ago
    END IF;
    RETURN QUERY SELECT NULL::integer, NULL::integer, NULL::boolean;  -- this caller has the turn
    -- the RUNNING trials: among those unfinished at the last claim's count and those created since
    RETURN QUERY EXECUTE 'SELECT t.trial_id, t.number, h.trial_id IS NULL FROM trials t '
        'LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id WHERE '
        || CASE WHEN v_seen = 0 THEN 't.study_id = $2 ' ELSE '(t.trial_id = ANY($4) OR t.trial_id > $1 AND t.study_id + 0 = $2) ' END
        || 'AND t.state = ''RUNNING'' AND CASE WHEN h.trial_id IS NULL '
        'THEN t.datetime_start < (now() AT TIME ZONE ''UTC'') - make_interval(secs => $3) '
        'ELSE h.heartbeat < LOCALTIMESTAMP - make_interval(secs => $3) END ORDER BY t.trial_id'
        USING v_seen, p_study_id, p_grace_s, v_pending;
END
$body$"""


# The names carry a digest of the definitions: a changed body is a new name (never a replaced one).
VERSION = hashlib.sha256((_TABLE_DDL + _TAIL_SQL + _CLAIM_DDL + _STALE_DDL).encode()).hexdigest()[:8]
TABLE = f"hyper_opt_studies_{VERSION}"
CLAIM_FUNCTION = f"hyper_opt_claim_{VERSION}"
STALE_FUNCTION = f"hyper_opt_stale_{VERSION}"
_NAMES = {"table": TABLE, "claim": CLAIM_FUNCTION, "stale": STALE_FUNCTION, "tail": _TAIL_SQL}


@dataclass(frozen=True)
class ServerClaim:
    """What :func:`claim` answered: ``outcome`` "created" or "popped" (a new trial, or the first
    WAITING one, is now RUNNING), "wait" (the budget is full with trials still running) or
    "budget" (nothing left to start; "budget-first" for the one caller that sees the budget of
    ``n_trials`` complete first); for a started trial its id, number and origin."""

    outcome: str  # "created", "popped", "wait", "budget", or "budget-first" (the first to see it complete)
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


# Near the budget's end, how often one of the study's claims reads its unfinished trials again to
# count them exactly (the others answer "wait" from the upper bound meanwhile).
RECHECK_S = 1.0


def claim(storage: Any, *, study_id: int, lock_key: int, n_trials: int, can_wait: bool,
          lock_timeout_s: float, heartbeat: bool, attrs: dict[str, Any], done: int | None = None,
          recheck_s: float = RECHECK_S) -> ServerClaim:
    """The claim in one round trip (see the module's docstring). ``attrs``: user attributes of the
    started trial (the run context), written as optuna writes them (``json.dumps``); ``done``: the
    id of the trial the caller has just told, if any; ``recheck_s``: 0 counts exactly at every
    claim near the budget's end."""
    keys = list(attrs)
    rows = _call(storage.engine,
                 f"SELECT outcome, trial_id, trial_number, origin, started, held_us FROM {CLAIM_FUNCTION}"
                 "(CAST(:sid AS integer), CAST(:key AS bigint), CAST(:n AS integer), CAST(:wait AS boolean), "
                 "CAST(:lt AS integer), CAST(:hb AS boolean), CAST(:keys AS text[]), CAST(:vals AS text[]), "
                 "CAST(:done AS integer), CAST(:recheck AS double precision))",
                 {"sid": study_id, "key": lock_key, "n": n_trials, "wait": can_wait,
                  "lt": int(lock_timeout_s * 1000), "hb": heartbeat, "keys": keys,
                  "vals": [json.dumps(attrs[k]) for k in keys], "done": done, "recheck": float(recheck_s)})
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
