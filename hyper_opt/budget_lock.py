"""The lock that keeps the budget exact: "count the trials, then start one" serialised across
every worker of a study.

A file lock beside the SQLite file, a renewed, fenced lease file beside the journal (JournalLease), ``GET_LOCK``
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
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hyper_opt.exceptions import StorageError
from hyper_opt.schema import OptunaSpec
from hyper_opt.storage import _first_line, _sqlstate, driver_connect_args

logger = logging.getLogger(__name__)

# The journal budget lock (JournalLease): a lock file unchanged this long (by the waiter's clock) was
# left by a dead or suspended holder; a live holder's thread renews it this often.
JOURNAL_LOCK_GRACE_S = 60.0
JOURNAL_LOCK_RENEW_S = 5.0
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

    @property
    def key(self) -> int:
        """The study's advisory-lock key on PostgreSQL (also taken by hyper_opt.server_side's claim)."""
        return self._key

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def stuck(self) -> StorageError:
        """The error for a lock that stayed taken for ``timeout_s`` (a hung holder)."""
        return self._stuck()

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
        """The journal storage is meant for shared file systems, where ``flock`` is unreliable: a
        renewed, fenced lease in a lock file (:class:`JournalLease`)."""
        if self._fh is None:
            self._file().parent.mkdir(parents=True, exist_ok=True)
            self._fh = JournalLease(self._file(), timeout_s=self._timeout_s)
        if not self._fh.acquire():
            raise self._stuck()

    def owned(self) -> bool:
        """Whether this process still holds the lock: the check a claim makes just before it
        writes. Only the journal's lease can be lost while held (taken over from a holder
        suspended past its grace); the other locks hold until released."""
        if not self._depth:
            return False
        if self._spec.storage.kind == "journal" and self._fh is not None:
            return bool(self._fh.owned())
        return True

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


class JournalLease:
    """The journal's budget lock: a lease in a lock file on a shared file system (NFS), sound
    while its holder lives however slow it is, and fenced when it does not.

    * Taken by an exclusive create (``O_CREAT | O_EXCL``, atomic on NFS v3+) of the lock file,
      which then holds the holder's token (host, pid, a random id): the fencing token.
    * While held, a thread of the holder renews the lease every JOURNAL_LOCK_RENEW_S (it sets the
      file's mtime, from the server's clock on NFS), so a live holder's file never looks
      abandoned, however long its main thread is delayed (a slow NFS read, a long query).
    * A waiter takes the file over only when it saw it unchanged (inode, mtime, size, token) for
      JOURNAL_LOCK_GRACE_S by its own monotonic clock (no clock skew between hosts): its holder
      died or is suspended (SIGSTOP, a suspended job). The take-over renames the file to a private
      name, checks it is still the one it saw (else puts it back) and only then deletes it.
    * :meth:`owned` reads the token in the file: a holder that was suspended past the grace and
      lost the lock finds out before it writes (the claim checks it just before creating the
      trial); :meth:`release` deletes the lock file only when it holds this holder's token.
    """

    def __init__(self, path: Path, *, timeout_s: float) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._token: bytes | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _observe(self, path: Path | None = None) -> tuple[int, int, int, bytes] | None:
        """(inode, mtime, size, token) of the lock file, or None without one. Opening the file
        revalidates NFS's attribute cache (close-to-open consistency); a bare stat may not."""
        try:
            with open(path or self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                return st.st_ino, st.st_mtime_ns, st.st_size, fh.read(512)
        except FileNotFoundError:
            return None

    def acquire(self) -> bool:
        """Wait for the lock (at most ``timeout_s``); False when it stayed held that long."""
        token = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex}".encode()
        deadline = time.monotonic() + self._timeout_s
        seen: tuple[int, int, int, bytes] | None = None
        since = time.monotonic()
        delay = 0.002
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                now = self._observe()
                if now is None:
                    continue  # released in between: try again at once
                if now != seen:
                    seen, since = now, time.monotonic()
                elif time.monotonic() - since > JOURNAL_LOCK_GRACE_S:
                    self._take_over(seen)
                    seen, delay = None, 0.002
                    continue
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            try:
                os.write(fd, token)
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        self._token = token
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="hyper_opt-journal-lease", daemon=True)
        self._renewer.start()
        return True

    def _take_over(self, seen: tuple[int, int, int, bytes]) -> None:
        """Remove the abandoned lock file ``seen``, and nothing else."""
        private = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, private)
        except FileNotFoundError:
            return  # another waiter took it over first
        if self._observe(private) == seen:
            os.unlink(private)
            logger.warning("the journal budget lock %s was not renewed for %.0f s: its holder (%s) died or "
                           "is suspended; taken over", self.path, JOURNAL_LOCK_GRACE_S,
                           seen[3].decode(errors="replace") or "unknown")
            return
        _put_back(private, self.path)  # renewed or replaced meanwhile: a live holder's

    def _renew(self) -> None:
        while not self._stop.wait(JOURNAL_LOCK_RENEW_S):
            if not self.owned():
                logger.warning("the journal budget lock %s was taken over: this worker was suspended "
                               "longer than %.0f s", self.path, JOURNAL_LOCK_GRACE_S)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def owned(self) -> bool:
        """Whether the lock file is this holder's (the fencing check before a write)."""
        now = self._observe()
        return self._token is not None and now is not None and now[3] == self._token

    def release(self) -> None:
        """Stop renewing; delete the lock file if it is this holder's, never another's."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        self._renewer = None
        token, self._token = self._token, None
        if token is None:
            return
        try:
            self._remove_own(token)
        except OSError as err:  # never fail a claim that is made: a file left behind goes stale
            logger.warning("releasing the journal budget lock %s: %s; it is taken over after %.0f s",
                           self.path, err, JOURNAL_LOCK_GRACE_S)

    def _remove_own(self, token: bytes) -> None:
        """Delete the lock file if it holds ``token``: moved aside first, checked, then deleted."""
        now = self._observe()
        if now is None or now[3] != token:
            logger.warning("the journal budget lock %s was taken over while this worker held it "
                           "(suspended longer than %.0f s); left to its new holder", self.path,
                           JOURNAL_LOCK_GRACE_S)
            return
        private = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.release")
        try:
            os.rename(self.path, private)
        except FileNotFoundError:
            return
        moved = self._observe(private)
        if moved is not None and moved[3] == token:
            os.unlink(private)
        else:
            _put_back(private, self.path)  # taken over between the check and the rename


def _put_back(private: Path, path: Path) -> None:
    """Return a lock file moved aside by mistake; if a new one was created meanwhile, the moved
    one's holder has lost the lock (its ``owned`` check says so) and the file goes."""
    try:
        os.link(private, path)
    except FileExistsError:
        pass
    os.unlink(private)


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


class NoLock:
    """The lock of a study opened only to read it: nothing to take or release."""

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def hold(self) -> Iterator[NoLock]:
        yield self
