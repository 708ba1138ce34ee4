"""Where the study lives: optuna storages from the config, and the lock that keeps the budget exact.

Three kinds (see :class:`hyper_opt.config.StorageSpec`):

* ``sqlite`` (the embedded default): an RDB storage on a file under ``save_path``, in WAL mode
  with a long busy timeout so that several local worker processes can share it;
* ``journal``: optuna's journal file, for shared file systems where SQLite locking is unsafe;
* ``url``: a database server (PostgreSQL, MySQL), with ``pool_pre_ping`` so that connections
  dropped during long trials are replaced instead of failing the worker.

The budget lock serialises "count the trials, then start one" across every worker of a study,
so that W workers end with exactly ``n_trials`` finished trials: a file lock beside the file
storages, a session-level advisory lock on PostgreSQL (released by the server if the worker
dies) and ``GET_LOCK`` on MySQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hyper_opt.config import OptunaSpec, StorageSpec, mask_url
from hyper_opt.exceptions import StorageError

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 120


def describe(spec: StorageSpec) -> str:
    """A one-line description with any password masked."""
    if spec.kind == "journal":
        return f"journal file {spec.path}"
    if spec.kind == "sqlite":
        return f"sqlite file {spec.path}"
    return mask_url(spec.url or "")


def _prepare_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers no longer block the writer


def make_storage(spec: OptunaSpec) -> optuna.storages.BaseStorage:
    """The optuna storage for a study, with heartbeat and retry of stale trials where supported."""
    import warnings

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
    heartbeat: dict[str, Any] = {}
    if spec.heartbeat_interval:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
                        if spec.max_retry > 0 else None)
        heartbeat = {"heartbeat_interval": spec.heartbeat_interval, "grace_period": spec.grace_period,
                     "heartbeat_stale_trial_callback": callback}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(st.url or "", engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as err:  # sqlalchemy/driver errors: unreachable server, bad credentials
        raise StorageError(f"cannot open the study storage {describe(st)}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def is_connection_error(err: BaseException | None) -> bool:
    """True for errors that mean "the database is unreachable right now" (worth retrying).

    optuna wraps driver errors (``StorageInternalError``), so the cause chain is searched.
    """
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
        return False
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, sqlalchemy.exc.DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError)):
            text = str(err).lower()
            return not ("no such table" in text or "syntax" in text or "database is locked" in text)
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def with_db_retry(fn: Callable[[], T], *, seconds: float, what: str) -> T:
    """Call ``fn``; while the database is unreachable retry with backoff for ``seconds``."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_connection_error(err) or time.monotonic() + delay > deadline:
                if is_connection_error(err):
                    raise StorageError(f"{what}: the database stayed unreachable for {seconds:.0f} s "
                                       f"({_first_line(err)})") from err
                raise
            logger.warning("%s: database unreachable (%s); retrying in %.1f s", what, _first_line(err), delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


# --------------------------------------------------------------------------- budget lock


class BudgetLock:
    """A cross-process lock for one study. ``acquire``/``release`` may be called from the
    objective (to release as soon as a trial has started); ``release`` is idempotent."""

    def __init__(self, spec: OptunaSpec) -> None:
        self._spec = spec
        self._held = False
        self._fh: Any = None
        self._conn: Any = None
        self._key = int.from_bytes(hashlib.sha256(f"hyper_opt:{spec.study_name}".encode()).digest()[:8],
                                   "big", signed=True)

    @property
    def held(self) -> bool:
        return self._held

    def _file(self) -> Path:
        st = self._spec.storage
        assert st.path is not None
        return st.path.with_name(st.path.name + ".lock")

    def acquire(self) -> None:
        st = self._spec.storage
        if st.kind in ("sqlite", "journal"):
            if self._fh is None:
                self._file().parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self._file(), "a+b")  # noqa: SIM115 - kept open across trials
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        else:
            try:
                self._server_lock()
            except Exception:
                self.close()  # a dead connection: the next attempt opens a new one
                raise
        self._held = True

    def _server_lock(self) -> None:
        import sqlalchemy

        url = self._spec.storage.url or ""
        if self._conn is None:
            engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.pool.NullPool)
            self._conn = engine.connect()
        if url.startswith("postgresql"):
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        elif url.startswith(("mysql", "mariadb")):
            self._conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 3600)"), {"k": f"hyper_opt_{self._key}"})
        self._conn.commit()

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        st = self._spec.storage
        if st.kind in ("sqlite", "journal"):
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            return
        import sqlalchemy

        url = st.url or ""
        try:
            if url.startswith("postgresql"):
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            elif url.startswith(("mysql", "mariadb")):
                self._conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"hyper_opt_{self._key}"})
            self._conn.commit()
        except Exception as err:  # a dropped connection released the lock on the server anyway
            logger.warning("releasing the budget lock: %s", _first_line(err))
            self.close()

    def close(self) -> None:
        self._held = False
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[BudgetLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
