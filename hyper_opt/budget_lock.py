"""The lock that keeps the budget exact: "count the trials, then start one" serialised across
every worker of a study.

A file lock beside the SQLite file, an exclusive-create lock file beside the journal, ``GET_LOCK``
on MySQL, and on PostgreSQL a transaction-level advisory lock taken in the one transaction that
makes the whole claim (:meth:`BudgetLock.transaction`): optuna's storage is bound to that
transaction's connection (:func:`bind_session`), so the claim commits (and the lock goes) at once,
a worker killed in the middle leaves nothing behind, and the claim works behind PgBouncer in
transaction pooling mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hyper_opt.exceptions import StorageError
from hyper_opt.schema import OptunaSpec
from hyper_opt.storage import _first_line, _sqlstate, driver_connect_args

logger = logging.getLogger(__name__)

JOURNAL_LOCK_GRACE_S = 60  # a journal budget-lock file unchanged this long was left by a dead holder
LOCK_TIMEOUT_S = 600.0  # a holder that keeps the budget lock this long is hung: say so, do not wait for ever
_PG_KEEPALIVE = ("SET tcp_keepalives_idle = 30", "SET tcp_keepalives_interval = 10", "SET tcp_keepalives_count = 3")


class BudgetLock:
    """A cross-process lock for one study. ``acquire``/``release`` may be called from the
    objective (to release as soon as a trial has started); ``release`` is idempotent.

    Re-entrant: nested holds are counted and the lock goes at the outermost release. The wait is
    bounded (``timeout_s``: ``flock(LOCK_NB)`` polled with backoff, PostgreSQL's ``lock_timeout``,
    ``GET_LOCK``'s timeout, whose 0/NULL result is checked), then a StorageError names the stuck
    lock; on PostgreSQL the server drops a vanished holder's session within about a minute."""

    def __init__(self, spec: OptunaSpec, *, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self._spec = spec
        self._depth = 0
        self._timeout_s = timeout_s
        self._fh: Any = None
        self._conn: Any = None
        self._tx_conn: Any = None  # the connection of the claim's transaction (PostgreSQL), while held
        self._key = int.from_bytes(hashlib.sha256(f"hyper_opt:{spec.study_name}".encode()).digest()[:8],
                                   "big", signed=True)

    @property
    def held(self) -> bool:
        return self._depth > 0

    def _file(self) -> Path:
        st = self._spec.storage
        assert st.path is not None
        # Not "<file>.lock": optuna's journal storage takes that name for its own lock.
        return st.path.with_name(st.path.name + ".budget.lock")

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        if self._spec.storage.kind == "journal":
            self._journal_lock()
        elif self._spec.storage.kind == "sqlite":
            self._file_lock()
        else:
            try:
                got = self._server_lock()
            except Exception as err:
                self.close()  # a dead connection: the next attempt opens a new one
                if _sqlstate(err) == "55P03":  # lock_timeout: a hung holder, not an outage
                    raise self._stuck() from None
                raise
            if not got:
                self.close()
                raise self._stuck()
        self._depth = 1

    def _stuck(self) -> StorageError:
        st = self._spec.storage
        where = str(self._file()) if st.kind in ("sqlite", "journal") else f"the advisory lock {self._key}"
        return StorageError(
            f"the study's budget lock ({where}) stayed taken for {self._timeout_s:.0f} s: a worker holding "
            "it is hung (it is held only while a trial is created, for milliseconds); find and stop it")

    def _journal_lock(self) -> None:
        """The journal storage is meant for shared file systems, where ``flock`` is unreliable: an
        exclusive create (``O_CREAT | O_EXCL``, what optuna's own journal lock does, safe on NFS
        v3+) of a lock file; a file left by a holder that died is taken over after
        JOURNAL_LOCK_GRACE_S without change (the lock is held for milliseconds)."""
        from optuna.storages.journal import JournalFileOpenLock

        if self._fh is None:
            self._file().parent.mkdir(parents=True, exist_ok=True)
            # it creates "<name>.lock": the same file as _file() names
            self._fh = JournalFileOpenLock(str(self._file().with_suffix("")), grace_period=JOURNAL_LOCK_GRACE_S)
        self._fh.acquire()

    def _file_lock(self) -> None:
        if self._fh is None:
            self._file().parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self._file(), "a+b")  # noqa: SIM115 - kept open across trials
        deadline = time.monotonic() + self._timeout_s
        delay = 0.002
        while True:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() + delay > deadline:
                    raise self._stuck() from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _server_lock(self) -> bool:
        import sqlalchemy

        url = self._spec.storage.url or ""
        if self._conn is None:
            engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.pool.NullPool,
                                              connect_args=driver_connect_args(url))
            self._conn = engine.connect()
            if url.startswith("postgresql"):
                for statement in (*_PG_KEEPALIVE, f"SET lock_timeout = {int(self._timeout_s * 1000)}"):
                    self._conn.execute(sqlalchemy.text(statement))
                self._conn.commit()
        got: Any = True
        if url.startswith("postgresql"):
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        elif url.startswith(("mysql", "mariadb")):
            # 1: taken; 0: the timeout passed; NULL: an error on the server.
            got = self._conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, :t)"),
                                     {"k": f"hyper_opt_{self._key}", "t": int(self._timeout_s)}).scalar()
            if got is None:
                raise StorageError(f"GET_LOCK('hyper_opt_{self._key}') failed on the MySQL server")
        self._conn.commit()
        return bool(got)

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        st = self._spec.storage
        if st.kind == "journal":
            self._fh.release()
            return
        if st.kind == "sqlite":
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
        if self._depth and self._spec.storage.kind == "journal" and self._fh is not None:
            with contextlib.suppress(Exception):
                self._fh.release()
        self._depth = 0
        if self._fh is not None:
            if hasattr(self._fh, "close"):
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

    def atomic(self, storage: Any) -> bool:
        """Whether :meth:`transaction` makes one database transaction of the claim (PostgreSQL)."""
        return (self._spec.storage.kind == "url" and (self._spec.storage.url or "").startswith("postgresql")
                and hasattr(storage, "engine") and hasattr(storage, "scoped_session"))

    @contextlib.contextmanager
    def transaction(self, storage: Any) -> Iterator[Any]:
        """Hold the lock for one claim; yield the connection of the claim's transaction, or None.

        On PostgreSQL (given optuna's RDBStorage): one transaction on one connection of the
        storage's own engine: ``pg_advisory_xact_lock`` (bounded by ``lock_timeout``), then
        whatever the caller does, with every call of ``storage`` in this thread bound to that
        transaction (each in a savepoint); COMMIT at the end releases the lock. An exception, or a
        process that dies, rolls all of it back. The server's TCP keepalives are set for the
        transaction, so that a holder whose machine vanished loses the lock within about a
        minute. Elsewhere (SQLite, journal, MySQL): :meth:`hold`, and the caller's storage calls
        commit one by one, as before."""
        if self._tx_conn is not None:  # nested in a claim's transaction: the same one
            self._depth += 1
            try:
                yield self._tx_conn
            finally:
                self._depth = max(self._depth - 1, 1)
            return
        if not self.atomic(storage) or self._depth:
            # Or nested in a session-level hold(): a second server session would wait for the
            # first one's lock; keep to the lock already held.
            with self.hold():
                yield None
            return
        import sqlalchemy

        conn = storage.engine.connect()
        try:
            with conn.begin():
                ms = int(self._timeout_s * 1000)
                conn.execute(sqlalchemy.text(
                    "SELECT set_config('lock_timeout', :lt, true), "
                    "set_config('idle_in_transaction_session_timeout', :it, true), "
                    "set_config('tcp_keepalives_idle', '30', true), "
                    "set_config('tcp_keepalives_interval', '10', true), "
                    "set_config('tcp_keepalives_count', '3', true)"),
                    {"lt": str(ms), "it": str(max(ms // 2, 60_000))})
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._key})
                except Exception as err:
                    if _sqlstate(err) == "55P03":  # lock_timeout: a hung holder, not an outage
                        raise self._stuck() from None
                    raise
                self._depth, self._tx_conn = 1, conn
                try:
                    with bind_session(storage, conn):
                        yield conn
                finally:
                    self._depth, self._tx_conn = 0, None
        finally:
            conn.close()


class _BindableSessions:
    """Stands in for ``RDBStorage.scoped_session`` (optuna opens every storage call with
    ``storage.scoped_session()``, commits, and closes it): while a thread has bound a connection
    (:func:`bind_session`), its calls get a Session on that connection, joined with a SAVEPOINT,
    so that their commits do not end the caller's transaction; other threads (the heartbeat)
    and unbound calls get optuna's own sessions, after ``before_use`` (when set) has run on the
    calling thread (hyper_opt.heartbeat: a beat that is due, taken by the trial's own calls)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._local = threading.local()
        self.before_use: Callable[[], None] | None = None

    def __call__(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            hook = self.before_use
            if hook is not None:
                hook()
            return self._inner()
        from sqlalchemy.orm import Session

        return Session(bind=conn, join_transaction_mode="create_savepoint")

    def __getattr__(self, name: str) -> Any:  # remove(), configure(), ...
        return getattr(self._inner, name)


def session_factory(storage: Any) -> _BindableSessions:
    """The session factory of an optuna ``RDBStorage``, made bindable (installed once; a storage
    unpickled drops it)."""
    found = storage.scoped_session
    if not isinstance(found, _BindableSessions):
        found = storage.scoped_session = _BindableSessions(found)
    return found


@contextlib.contextmanager
def bind_session(storage: Any, conn: Any) -> Iterator[None]:
    """Run optuna's calls on ``storage`` made in this thread inside ``conn``'s transaction."""
    sessions = session_factory(storage)
    previous = getattr(sessions._local, "conn", None)
    sessions._local.conn = conn
    try:
        yield
    finally:
        sessions._local.conn = previous
