"""The trial's heartbeat: while a trial trains, its worker records the time in the study every
``heartbeat_interval`` seconds, so that a trial whose worker died goes stale and is retried
(see hyper_opt.worker and docs/failures.md).

On a database server the worker has one connection (``storage.CONNECTIONS_PER_WORKER``), shared
by the heartbeat thread and the trial's own storage calls (``trial.report``, ...). SQLAlchemy's
pool is not fair: a trial that reports in a tight loop takes the connection back before the
waiting heartbeat thread runs (a heartbeat 23.6 s old at a 1-s interval, issue 21), and another
worker failed the live trial as stale. So a beat that is due is also taken by the trial's own
storage calls, just before they use the connection: while the trial uses the database it beats
itself; while it does not, the thread gets the connection. One connection per worker still.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hyper_opt.budget_lock import session_factory
from hyper_opt.server_side import record_heartbeat
from hyper_opt.storage import with_db_retry

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0  # the thread may be stuck on a stalled server: the trial's result goes on without it


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds; survives database outages.

    The first beat is normally recorded by the claim itself (under the budget lock, right after
    the trial is created), so that no trial is ever RUNNING without one; ``beat_now`` records one here too,
    retried like every storage call. ``__exit__`` is safe whether or not the thread started."""

    def __init__(self, storage: Any, trial_id: int, interval: int, *, beat_now: bool = True,
                 retry_seconds: float = 600.0) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._beat_now, self._retry_seconds = beat_now, retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hyper_opt-heartbeat", daemon=True)
        self._last = time.monotonic()  # of the last beat (or attempt): the claim has just beaten
        self._beating = threading.local()  # this thread is recording a beat: do not nest another
        self._sessions = session_factory(storage) if hasattr(storage, "scoped_session") else None

    def _beat(self) -> None:
        self._beating.on = True
        try:
            record_heartbeat(self._storage, self._trial_id)  # one statement on PostgreSQL
        finally:
            self._last = time.monotonic()
            self._beating.on = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as err:  # the next beat tries again
                logger.warning("heartbeat failed: %s", str(err).splitlines()[0] if str(err) else err)

    def beat_if_due(self) -> None:
        """Before one of the trial's own storage calls: record the beat if one is due (an
        interval since the last), on the caller's thread. A failed beat is logged, not raised:
        the call itself meets the same outage and is retried or fails as it would have."""
        if (getattr(self._beating, "on", False) or self._stop.is_set()
                or time.monotonic() - self._last < self._interval):
            return
        try:
            self._beat()
        except Exception as err:  # noqa: BLE001 - see above
            logger.warning("heartbeat failed: %s", str(err).splitlines()[0] if str(err) else err)

    def __enter__(self) -> Heartbeat:
        if self._beat_now:
            with_db_retry(self._beat, seconds=self._retry_seconds, what="recording the trial's first heartbeat")
        if self._sessions is not None:
            self._sessions.before_use = self.beat_if_due
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sessions is not None and self._sessions.before_use == self.beat_if_due:
            self._sessions.before_use = None
        if self._thread.ident is not None:  # never started: __enter__ failed
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("the heartbeat thread is still waiting for the database; recording the "
                               "trial without it")
