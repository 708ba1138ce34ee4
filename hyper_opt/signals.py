"""Interrupting a running trial only where the exception can land (issue 22).

A signal handler runs between any two bytecodes of the main thread, including inside a
finalizer: a weakref callback such as SQLAlchemy's ``InstanceState._cleanup``, a ``__del__``.
An exception raised there is printed as "Exception ignored in ..." and lost, so Ctrl-C did
nothing and the trial ran on. The worker's handler therefore raises :class:`Interrupted` only
when no such frame is on the stack; otherwise it keeps the interrupt pending until the trial code is
back in ordinary frames: a trace function, set only while the interrupt is pending, raises it at
the first line that runs outside the finalizer. A third Ctrl-C while one is still pending ends
the process at once (its trial is failed and re-queued by the launcher or the heartbeat).
"""

from __future__ import annotations

import logging
import os
import sys
from types import FrameType
from typing import Any

from hyper_opt.exceptions import Interrupted

logger = logging.getLogger("hyper_opt.worker")

FINALIZER_NAMES = frozenset({"__del__", "_cleanup"})  # _cleanup: SQLAlchemy's InstanceState weakref callback
LIBRARY_PARTS = (f"{os.sep}sqlalchemy{os.sep}",)  # half-done statements and sessions must not be cut


def in_unsafe_frame(frame: FrameType | None) -> bool:
    """Whether an exception raised at ``frame`` could be swallowed or leave a library half done:
    a finalizer (``__del__``, a weakref callback, ``weakref.finalize``) or SQLAlchemy on the stack."""
    while frame is not None:
        code = frame.f_code
        if code.co_name in FINALIZER_NAMES or any(part in code.co_filename for part in LIBRARY_PARTS):
            return True
        if code.co_name == "__call__" and code.co_filename.endswith(f"{os.sep}weakref.py"):
            return True
        frame = frame.f_back
    return False


def interrupt_at_safe_point(worker: Any, name: str, frame: FrameType | None) -> None:
    """Raise :class:`Interrupted` now if ``frame`` is safe; else keep it pending and raise it at
    the first line the trial runs outside the finalizer (a trace function, set only meanwhile)."""
    if worker._interrupt_pending and name == "SIGINT":
        worker._interrupt_count = getattr(worker, "_interrupt_count", 1) + 1
        if worker._interrupt_count >= 3:
            logger.error("worker %d: third Ctrl-C while the trial could not be interrupted; exiting now",
                         worker.worker_index)
            os._exit(130)
    if not in_unsafe_frame(frame):
        pending = worker._interrupt_pending or name
        worker._interrupt_pending = None
        raise Interrupted(f"worker interrupted by {pending}")
    if worker._interrupt_pending:
        return
    logger.info("worker %d: %s arrived inside a finalizer; the trial is interrupted as soon as it leaves it",
                worker.worker_index, name)
    worker._interrupt_pending = name
    _raise_at_next_safe_line(worker, frame)


def _raise_at_next_safe_line(worker: Any, frame: FrameType | None) -> None:
    """Trace the main thread until a line runs in a safe frame, and raise there (an exception
    raised by a trace function propagates into the traced frame and ends the tracing)."""

    def local(current: FrameType, event: str, arg: Any) -> Any:
        if not worker._interrupt_pending:
            return None
        if event == "line" and not in_unsafe_frame(current):
            name, worker._interrupt_pending = worker._interrupt_pending, None
            sys.settrace(None)
            raise Interrupted(f"worker interrupted by {name}")
        return local

    while frame is not None:
        frame.f_trace = local
        frame = frame.f_back
    sys.settrace(lambda current, event, arg: local)


def stop_tracing(worker: Any) -> None:
    """The trial ended before the pending interrupt was raised: no more tracing."""
    if worker._interrupt_pending:
        worker._interrupt_pending = None
        sys.settrace(None)
