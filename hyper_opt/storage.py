"""Where the study lives: optuna storages from the config, and the lock that keeps the budget exact.

Three kinds (see :class:`hyper_opt.config.StorageSpec`):

* ``sqlite`` (the embedded default): an RDB storage on a file under ``save_path``, in WAL mode
  with a long busy timeout so that several local worker processes can share it;
* ``journal``: optuna's journal file, for shared file systems where SQLite locking is unsafe;
* ``url``: a database server (PostgreSQL, MySQL), with ``pool_pre_ping`` so that connections
  dropped during long trials are replaced instead of failing the worker.

The budget lock serialises "count the trials, then start one" across every worker of a study,
so that W workers end with exactly ``n_trials`` finished trials: a file lock beside the file
storages, ``GET_LOCK`` on MySQL, and on PostgreSQL a transaction-level advisory lock taken in the
one transaction that makes the whole claim (:meth:`BudgetLock.transaction`): optuna's storage is
bound to that transaction's connection, so the claim commits (and the lock goes) at once, a worker
killed in the middle leaves nothing behind, and the claim works behind PgBouncer in transaction
pooling mode.

A worker opens one connection to a database server and no more (:data:`CONNECTIONS_PER_WORKER`):
storage calls, the budget lock and the heartbeat thread share one engine with a one-connection
pool; its ``application_name`` (``hyper_opt-worker <study>``) makes them countable in
``pg_stat_activity``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hyper_opt.exceptions import StorageError, StorageRefusedError
from hyper_opt.registry import quiet_experimental, retry_callback
from hyper_opt.schema import OptunaSpec, StorageSpec
from hyper_opt.secrets import mask_url

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 120
# The most connections one worker process opens to a PostgreSQL server: one engine with a pool of
# one connection (no overflow) shared by optuna's storage, the budget lock (a transaction on that
# connection) and the heartbeat thread (which waits its turn for milliseconds). For the planned
# ``workers x CONNECTIONS_PER_WORKER <= max_connections`` check before submitting.
CONNECTIONS_PER_WORKER = 1
WORKER_APPLICATION_NAME = "hyper_opt-worker"
COMMAND_APPLICATION_NAME = "hyper_opt"
WORKER_POOL_TIMEOUT_S = 120  # a storage call waits this long for the worker's one connection
# Tests and benchmarks shorten the wait for the worker's one connection (seconds); see pool_timeout().
POOL_TIMEOUT_ENV = "HYPER_OPT_POOL_TIMEOUT_S"


def application_name(role: str, study_name: str) -> str:
    """``hyper_opt-worker <study>`` (PostgreSQL keeps 63 bytes): who holds a connection."""
    return f"{role} {study_name}".encode()[:63].decode(errors="ignore")


def driver_connect_args(url: str) -> dict[str, Any]:
    """Driver options every engine on ``url`` needs: with psycopg 3 (SQLAlchemy 2.1's default
    driver for ``postgresql://``), no server-side prepared statements. psycopg prepares a statement
    after 5 executions; behind a transaction pooler (PgBouncer before 1.21) the next execution
    lands on another server connection ("prepared statement _pg3_0 does not exist"). hyper_opt's
    statements are few and short, so preparing them saves nothing worth that."""
    if not url.startswith(("postgresql", "postgres:")):
        return {}
    try:
        import sqlalchemy

        driver = sqlalchemy.make_url(url).get_dialect().driver
    except Exception:  # noqa: BLE001 - an unknown driver: leave its defaults
        return {}
    return {"prepare_threshold": None} if driver == "psycopg" else {}


def pool_timeout(db_retry_seconds: float) -> float:
    """How long one storage call of a worker waits for its one connection, held by its other
    thread (a heartbeat on a stalled server, say): WORKER_POOL_TIMEOUT_S, at most the retry window
    ``db_retry_seconds`` (at least 5 s), or ``$HYPER_OPT_POOL_TIMEOUT_S`` (tests). The wait ends in
    SQLAlchemy's pool ``TimeoutError``, which :func:`with_db_retry` retries like an outage."""
    given = os.environ.get(POOL_TIMEOUT_ENV)
    if given:
        return float(given)
    return float(min(WORKER_POOL_TIMEOUT_S, max(db_retry_seconds, 5.0)))


def describe(spec: StorageSpec) -> str:
    """A one-line description with any password masked."""
    if spec.kind == "journal":
        return f"journal file {spec.path}"
    if spec.kind == "sqlite":
        return f"sqlite file {spec.path}"
    return mask_url(spec.url or "")


def cluster_storage_warning(spec: StorageSpec) -> str | None:
    """A warning for a search whose jobs would share an SQLite file across nodes, or None."""
    if spec.kind != "sqlite":
        return None
    return (f"the study is in the SQLite file {spec.path}, which jobs on several nodes will share over "
            "a network file system: SQLite's locking is unreliable there (lost writes, "
            "StorageInternalError, optuna issue #6036). Use a PostgreSQL URL in optuna:storage, or "
            "'storage_type: journal' for a file on a shared file system.")


def _prepare_sqlite(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers no longer block the writer
    except (sqlite3.Error, OSError) as err:
        verdict = diagnose(err)
        if verdict is not None and verdict[0] == RETRY:
            raise  # "database is locked": with_db_retry waits
        reason = verdict[1] if verdict is not None else "cannot be used"
        raise StorageRefusedError(f"the study storage sqlite file {path}: {reason} ({_first_line(err)})") from err


def make_storage(spec: OptunaSpec, *, worker: bool = False, schema_checked: bool = False) -> optuna.storages.BaseStorage:
    """The optuna storage for a study, with heartbeat and retry of stale trials where supported.

    ``worker``: on PostgreSQL, one connection for the whole process (see CONNECTIONS_PER_WORKER),
    named ``hyper_opt-worker <study>`` in ``pg_stat_activity`` (commands are ``hyper_opt <study>``).
    ``schema_checked``: the launcher that started this worker has just created or checked optuna's
    tables and their version on this database, so the worker does not again (optuna's
    ``skip_table_creation`` and ``skip_compatibility_check``: about a dozen catalog queries and the
    parsing of optuna's migration scripts at every worker's start).
    """
    import optuna

    st = spec.storage
    if st.kind == "journal":
        assert st.path is not None
        st.path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(st.path)))

    engine_kwargs: dict[str, Any]
    if st.kind == "sqlite":
        assert st.path is not None
        _prepare_sqlite(st.path)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 1800}
        if (st.url or "").startswith("postgresql"):
            role = WORKER_APPLICATION_NAME if worker else COMMAND_APPLICATION_NAME
            engine_kwargs["connect_args"] = {"application_name": application_name(role, spec.study_name),
                                             **driver_connect_args(st.url or "")}  # PgBouncer: docs/scale.md
            if worker:
                engine_kwargs.update(pool_size=CONNECTIONS_PER_WORKER, max_overflow=0,
                                     pool_timeout=pool_timeout(spec.db_retry_seconds))
    version = None
    if not schema_checked:
        version = _init_schema(st.url or "", engine_kwargs.get("connect_args", {}))
    heartbeat: dict[str, Any] = {}
    if spec.heartbeat_interval:
        heartbeat = {"heartbeat_interval": spec.heartbeat_interval, "grace_period": spec.grace_period,
                     "heartbeat_stale_trial_callback": retry_callback(spec.max_retry)}
    try:
        # The tables exist: _init_schema (or the launcher) made sure of it, so optuna's create_all
        # (a catalog query per table) has nothing to do; its version check parses every migration
        # script, _check_schema compares the version _init_schema read with the scripts' head.
        with quiet_experimental():
            storage = optuna.storages.RDBStorage(st.url or "", engine_kwargs=engine_kwargs,
                                                 skip_compatibility_check=True, skip_table_creation=True,
                                                 **heartbeat)
    except Exception as err:  # sqlalchemy/driver errors: unreachable server, bad credentials
        raise StorageError(f"cannot open the study storage {describe(st)}: {_first_line(err)}") from err
    if not schema_checked:
        _check_schema(storage, st, version)
    return storage


def preload(spec: OptunaSpec) -> None:
    """Import what opening the study's storage imports (optuna's RDB storage and its models,
    alembic's migration context, the database driver) without touching the database: a worker
    started ahead of the launcher's checks does this while it waits (hyper_opt.launch.local).

    Imports only: an RDBStorage on an in-memory database would also parse optuna's migration
    scripts and create its tables (about 0.3 s), which a worker whose launcher checked the schema
    never does. optuna's models module is private, so each step may fail: it then costs time
    after ``go`` instead, nothing else."""
    if spec.storage.kind == "journal":
        return
    import sqlalchemy
    import sqlalchemy.orm

    with contextlib.suppress(Exception):
        import alembic.migration  # noqa: F401 - optuna's version manager reads the revision with it
    with contextlib.suppress(Exception):
        from optuna.storages._rdb import models  # noqa: F401

        sqlalchemy.orm.configure_mappers()
    if spec.storage.url:
        with contextlib.suppress(Exception):  # the driver itself (psycopg: about 0.2 s), as create_engine will
            sqlalchemy.make_url(spec.storage.url).get_dialect().import_dbapi()


# What a process that lost the race to create optuna's tables sees: another one created them first.
_SCHEMA_RACE = ("already exists", "unique constraint", "duplicate key", "duplicate entry")  # MySQL: entry
SCHEMA_INIT_TRIES = 20


def _init_schema(url: str, connect_args: dict[str, Any]) -> str | None:
    """Create optuna's tables in a new database, on one connection, so that any number of
    processes may open it at once.

    optuna does this in ``RDBStorage()`` on every open, and on a new database it fails two ways:
    it holds a connection while it asks for a second one (``_is_alembic_supported``), which a
    worker's one-connection pool never gives (a 120-s wait, then ``TimeoutError``); and processes
    that open a new database at once collide (``UNIQUE constraint failed: alembic_version``,
    ``duplicate key`` on PostgreSQL). So the schema is created here first, by a throwaway storage
    on one connection that optuna's nested uses share (``StaticPool``); a process that loses the
    race (one of the errors above) finds the winner's tables and stops. A database already set up
    (optuna's ``alembic_version`` stamped: its last step) costs one query, and its schema version is
    returned (None when the tables were created here, or the version is not one row)."""
    import optuna
    import sqlalchemy
    from sqlalchemy.pool import StaticPool

    for attempt in range(SCHEMA_INIT_TRIES):
        engine = sqlalchemy.create_engine(url, poolclass=StaticPool, connect_args=connect_args)
        try:
            with engine.connect() as conn:
                found = _schema_version(conn)
                if found:
                    return found[0] if len(found) == 1 else None
                one = conn.connection.driver_connection  # kept open by the StaticPool until dispose()
            with quiet_experimental():  # its engine shares that connection: closed with ours, whatever happens
                optuna.storages.RDBStorage(url, skip_compatibility_check=True, engine_kwargs={
                    "poolclass": StaticPool, "creator": lambda: one})
            return None
        except Exception as err:
            if not _lost_schema_race(err) or attempt == SCHEMA_INIT_TRIES - 1:
                raise
            logger.debug("another process is creating the tables of %s: %s", mask_url(url), _first_line(err))
        finally:
            engine.dispose()
        time.sleep(0.05 * (attempt + 1))


def _schema_version(conn: Any) -> list[str]:
    """The rows of optuna's ``alembic_version`` (none: its tables are not set up yet)."""
    import sqlalchemy

    try:
        return [row[0] for row in conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))]
    except Exception as err:
        if diagnose(err) is not None:  # an outage or a refusal, not a missing table
            raise
        return []


def _lost_schema_race(err: BaseException | None) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if any(needle in str(err).lower() for needle in _SCHEMA_RACE):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _check_schema(storage: Any, st: StorageSpec, current: str | None = None) -> None:
    """The table-schema check of every storage hyper_opt opens, in place of optuna's: optuna's holds a
    session open while it opens a second connection (which a worker's one-connection pool cannot
    give) and executes every migration script to find the head. ``current``: the version already
    read (else it is read here)."""
    try:
        current, head = current or storage.get_current_version(), _head_version(storage)
    except Exception as err:  # noqa: BLE001 - a driver error: with_db_retry decides
        raise StorageError(f"cannot read the schema version of {describe(st)}: {_first_line(err)}") from err
    if current != head:
        raise StorageRefusedError(
            f"the tables of {describe(st)} have schema version {current}, this optuna expects {head}: "
            "run `optuna storage upgrade --storage URL` (or install the optuna that created them)")


_HEAD_VERSIONS: dict[str, str] = {}


def _head_version(storage: Any) -> str:
    """The schema version this optuna expects, once per process: from the migration scripts' headers
    (:func:`scripts_head`), or from alembic, which executes every script, when they are not laid out
    as expected."""
    import optuna

    if optuna.__version__ not in _HEAD_VERSIONS:
        _HEAD_VERSIONS[optuna.__version__] = scripts_head() or storage.get_head_version()
    return _HEAD_VERSIONS[optuna.__version__]


_REVISION = re.compile(r"""^(down_revision|revision)\s*=\s*(None|"[^"]*"|'[^']*')\s*$""", re.M)


def scripts_head() -> str | None:
    """The head of optuna's schema revisions, from the ``revision`` / ``down_revision`` lines of its
    migration scripts (about a millisecond; alembic executes the scripts to find it: 65 ms of CPU
    at every launcher's and job worker's start). None when the scripts are not laid out as
    expected (each with both lines, one head): the caller asks alembic."""
    import optuna

    folder = Path(optuna.__file__).parent / "storages" / "_rdb" / "alembic" / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        scripts = sorted(folder.glob("*.py"))
        for script in scripts:
            found = dict((key, value.strip("\"'")) for key, value in _REVISION.findall(script.read_text()))
            if set(found) != {"revision", "down_revision"}:
                return None
            revisions.add(found["revision"])
            if found["down_revision"] != "None":
                parents.add(found["down_revision"])
    except OSError:
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and len(revisions) == len(scripts) and parents <= revisions else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


RETRY, REFUSE = "retry", "refuse"

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_REFUSE = {
    "28000": "the server refused the login (pg_hba.conf or user): check optuna:storage",
    "28P01": "password authentication failed: check the user and password of optuna:storage "
             "(or PGPASSWORD / ~/.pgpass)",
    "3D000": "the database does not exist: create it first (createdb NAME)",
    "42501": "permission denied: the database user lacks a privilege on the study's tables",
    "53100": "the database server's disk is full",
    "25006": "the database is read-only (a standby server?)",
    "58P01": "a file of the database server is missing",
}
_PG_RETRY_CLASSES = ("08", "40", "57P")  # connection, rollback (deadlock, serialization), shutdown
_PG_RETRY = {"53300", "55P03", "53200"}  # too many connections, lock not available, out of memory
# MySQL / MariaDB error numbers.
_MYSQL_REFUSE = {
    1044: "access to the database denied: check the user of optuna:storage",
    1045: "access denied: check the user and password of optuna:storage",
    1049: "the database does not exist: create it first (CREATE DATABASE)",
    1142: "permission denied: the database user lacks a privilege on the study's tables",
    1021: "the database server's disk is full",
    1114: "a table of the database is full",
    1290: "the database server is read-only",
}
_MYSQL_RETRY = {1040, 1205, 1213, 2002, 2003, 2006, 2013, 2055}
# SQLite result codes (sqlite3.Error.sqlite_errorname).
_SQLITE_REFUSE = {
    "SQLITE_READONLY": "the sqlite file (or its folder) is read-only",
    "SQLITE_FULL": "the disk holding the sqlite file is full",
    "SQLITE_CANTOPEN": "the sqlite file cannot be opened (missing folder or permissions)",
    "SQLITE_PERM": "permission denied on the sqlite file",
    "SQLITE_NOTADB": "the file is not an sqlite database",
    "SQLITE_CORRUPT": "the sqlite file is corrupt",
    "SQLITE_AUTH": "permission denied on the sqlite file",
}
_SQLITE_RETRY = {"SQLITE_BUSY", "SQLITE_LOCKED"}
# The same, by message, for drivers or paths that give no code.
_TEXT_REFUSE = (
    ("password authentication failed", _PG_REFUSE["28P01"]),
    (re.compile(r'database "[^"]*" does not exist'), _PG_REFUSE["3D000"]),
    (re.compile(r'role "[^"]*" does not exist'), "the database user does not exist: check optuna:storage"),
    ("no pg_hba.conf entry", _PG_REFUSE["28000"]),
    ("access denied for user", _MYSQL_REFUSE[1045]),
    ("unknown database", _MYSQL_REFUSE[1049]),
    ("permission denied", _PG_REFUSE["42501"]),
    ("no space left on device", "the disk is full"),
    ("disk is full", "the disk is full"),
    ("read-only", "the storage is read-only"),
    ("readonly", "the storage is read-only"),
    ("file is not a database", _SQLITE_REFUSE["SQLITE_NOTADB"]),
    ("unable to open database file", _SQLITE_REFUSE["SQLITE_CANTOPEN"]),
    # libpq's own refusals (no SQLSTATE: the connection never got that far).
    ("no password supplied", "the server asks for a password and none was given: set PGPASSWORD or add a "
                             "line to ~/.pgpass (keep the password out of optuna:storage)"),
    ("peer authentication failed", "the server accepts this user only from the operating-system account of "
                                   "the same name (peer authentication): connect over TCP (a host in the "
                                   "URL) with a password, or change the server's pg_hba.conf"),
    ("ident authentication failed", "the server's ident authentication refused this user: connect as "
                                    "the account it expects, or change the server's pg_hba.conf"),
    ("server does not support ssl", "the URL asks for SSL (sslmode=require or stricter) but the server "
                                    "does not support it: change sslmode in optuna:storage"),
    ("invalid sslmode value", "sslmode in optuna:storage is invalid; allowed: disable, allow, prefer, "
                              "require, verify-ca, verify-full"),
    (re.compile(r"root certificate file .* does not exist"),
     "the root certificate file (sslrootcert, or ~/.postgresql/root.crt) does not exist: give its path "
     "in optuna:storage, or use sslrootcert=system"),
    (re.compile(r"could not (open|read) (certificate|private key|root certificate) file"),
     "an SSL certificate or key file named in optuna:storage cannot be read"),
    (re.compile(r"certificate present, but not private key|private key file .* (does not exist|has group)"),
     "the SSL client key (sslkey) is missing or readable by others (chmod 600)"),
)
_OS_REFUSE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}
# A shared file system (the journal storage on NFS) recovering: a stale handle after the server
# restarted or the file was replaced, an I/O error while it does not answer.
_OS_RETRY = {errno.ESTALE: "the shared file system gave a stale file handle (its server restarted?)",
             errno.EIO: "an I/O error on the file system (its server does not answer?)"}


def _verdict_of(err: BaseException) -> tuple[str, str] | None:
    """The verdict for one exception (not its causes): (RETRY|REFUSE, reason) or None."""
    import sqlalchemy.exc

    if isinstance(err, (ConnectionError, TimeoutError)):
        return RETRY, "the database server is unreachable"
    if isinstance(err, sqlalchemy.exc.TimeoutError):  # the pool's: the connection is stuck on a stalled server
        return RETRY, "the database server does not answer"
    if isinstance(err, OSError):
        if err.errno in _OS_RETRY:
            return RETRY, _OS_RETRY[err.errno]
        reason = _OS_REFUSE.get(err.errno or -1)
        return (REFUSE, reason) if reason else None
    if isinstance(err, sqlite3.Error):
        name = getattr(err, "sqlite_errorname", "") or ""
        if name.split("_SNAPSHOT")[0] in _SQLITE_RETRY or name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return RETRY, "the sqlite file is locked by another process"
        for code, reason in _SQLITE_REFUSE.items():
            if name.startswith(code):
                return REFUSE, reason
        if "database is locked" in str(err).lower():
            return RETRY, "the sqlite file is locked by another process"
    sqlstate = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)  # psycopg 3 / psycopg2
    if isinstance(sqlstate, str) and sqlstate:
        if sqlstate in _PG_REFUSE:
            return REFUSE, _PG_REFUSE[sqlstate]
        if sqlstate in _PG_RETRY or sqlstate.startswith(_PG_RETRY_CLASSES):
            return RETRY, "the database server is unreachable or busy"
    args = getattr(err, "args", ())
    if type(err).__module__.split(".")[0] in ("pymysql", "MySQLdb", "mysql") and args and isinstance(args[0], int):
        if args[0] in _MYSQL_REFUSE:
            return REFUSE, _MYSQL_REFUSE[args[0]]
        if args[0] in _MYSQL_RETRY:
            return RETRY, "the database server is unreachable or busy"
    if isinstance(err, sqlalchemy.exc.DBAPIError) and err.connection_invalidated:
        return RETRY, "the connection was lost"
    return None


def diagnose(err: BaseException | None) -> tuple[str, str] | None:
    """Why a storage call failed: ``(RETRY, reason)`` for what heals by waiting (an outage, a
    lock), ``(REFUSE, reason)`` for what does not (authentication, a missing database,
    permissions, a full or read-only disk), None when this is not a storage problem.

    Classified by SQLSTATE (psycopg), MySQL error number, SQLite result code or errno; by message
    only where the driver gives no code. optuna wraps driver errors (``StorageInternalError``)
    and SQLAlchemy wraps the driver's, so the cause chain is searched.
    """
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
        return None
    chain: list[BaseException] = []
    while err is not None and len(chain) < 10 and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__ or getattr(err, "orig", None)
    for one in chain:
        verdict = _verdict_of(one)
        if verdict is not None:
            return verdict
    for one in chain:  # no code anywhere: the message, then SQLAlchemy's class
        if isinstance(one, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError, sqlite3.OperationalError)):
            text = str(one).lower()
            for needle, reason in _TEXT_REFUSE:
                if (needle.search(text) if isinstance(needle, re.Pattern) else needle in text):
                    return REFUSE, reason
            if "database is locked" in text:
                return RETRY, "the sqlite file is locked by another process"
            if "no such table" in text or "syntax" in text:
                return None
            return RETRY, "the database is unreachable"
    return None


def is_connection_error(err: BaseException | None) -> bool:
    """True for errors that heal by waiting (an outage, a dropped connection, a lock): retried."""
    verdict = diagnose(err)
    return verdict is not None and verdict[0] == RETRY


def with_db_retry(fn: Callable[[], T], *, seconds: float, what: str) -> T:
    """Call ``fn``; while the database is unreachable retry with backoff for ``seconds``.

    What waiting cannot fix (a wrong password, a missing database, a full disk) is raised at
    once as :class:`StorageRefusedError` with one clear message."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return fn()
        except StorageRefusedError:
            raise
        except Exception as err:
            verdict = diagnose(err)
            if verdict is not None and verdict[0] == REFUSE:
                raise StorageRefusedError(f"{what}: {verdict[1]} ({_first_line(err)})") from err
            if verdict is None or time.monotonic() + delay > deadline:
                if verdict is not None:
                    raise StorageError(f"{what}: the database stayed unreachable for {seconds:.0f} s "
                                       f"({_first_line(err)})") from err
                raise
            logger.warning("%s: database unreachable (%s); retrying in %.1f s", what, _first_line(err), delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


# --------------------------------------------------------------------------- budget lock


# The server drops a vanished holder's session (and its advisory lock) after about a minute,
# not after the kernel's default keepalive of about two hours.


def _sqlstate(err: BaseException | None) -> str | None:
    seen = 0
    while err is not None and seen < 10:
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if code:
            return str(code)
        err = err.__cause__ or getattr(err, "orig", None)
        seen += 1
    return None
