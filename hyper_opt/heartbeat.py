"""The trial's heartbeat: while a trial trains, its worker records the time in the study every
``heartbeat_interval`` seconds, so that a trial whose worker died goes stale and is retried
(see hyper_opt.worker and docs/failures.md)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from hyper_opt.storage import with_db_retry

logger = logging.getLogger(__name__)


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

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as err:  # the next beat tries again
                logger.warning("heartbeat failed: %s", str(err).splitlines()[0] if str(err) else err)

    def __enter__(self) -> Heartbeat:
        if self._beat_now:
            with_db_retry(lambda: self._storage.record_heartbeat(self._trial_id),
                          seconds=self._retry_seconds, what="recording the trial's first heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # never started: __enter__ failed
            self._thread.join()
