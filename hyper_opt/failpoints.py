"""Named failpoints in the worker's trial lifecycle, for fault-injection tests (like etcd's gofail).

Off unless the environment variable ``HYPER_OPT_FAILPOINTS`` is set (then its cost at each point
is one ``os.environ`` lookup), e.g.::

    HYPER_OPT_FAILPOINTS="after_ask=kill"              # SIGKILL at that point
    HYPER_OPT_FAILPOINTS="in_tell=dbdown,in_csv_write=diskfull"

Actions: ``kill`` (SIGKILL this process), ``dbdown`` (raise the connection error a vanished
database server gives), ``diskfull`` (raise ``OSError(ENOSPC)``), ``failed`` (the trial is failed
behind the worker's back, as ``cancel``, ``--reload`` or another worker's stale scan do; only at
the points in FAILED_POINTS, where the worker has a trial). Each point fires once: once per
process, or, when ``HYPER_OPT_FAILPOINTS_DIR`` names a folder, once across every process that
shares it (the first to create ``<dir>/<point>`` fires), so that one worker of a search meets the
fault and the others carry on. tests/test_failpoints.py and benchmarks/failpoints.py run them.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

ENV = "HYPER_OPT_FAILPOINTS"
DIR_ENV = "HYPER_OPT_FAILPOINTS_DIR"
POINTS = ("holding_budget_lock", "after_ask", "before_heartbeat", "building_trial", "in_train", "before_tell",
          "in_tell", "after_tell_before_csv", "in_csv_write")
ACTIONS = ("kill", "dbdown", "diskfull", "failed")
FAILED_POINTS = ("in_train", "before_tell")  # where ``failed`` applies: the trial exists, the worker runs it
_fired: set[str] = set()  # test-only state: the points this process has already fired


def hit(point: str, *, fail_trial: Callable[[], None] | None = None) -> None:
    """Fire the fault configured for ``point``, if any (once). ``fail_trial``: how ``failed``
    marks this point's trial FAIL, as another process would."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action = dict(p.split("=", 1) for p in spec.split(",") if "=" in p).get(point)
    if action is None:
        return
    if action == "failed" and fail_trial is None:
        raise ValueError(f"{ENV}: 'failed' applies only at {', '.join(FAILED_POINTS)}, not at {point}")
    if not _claim(point):
        return
    if action == "failed":
        assert fail_trial is not None
        fail_trial()
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "dbdown":
        import sqlalchemy.exc

        raise sqlalchemy.exc.OperationalError(f"failpoint {point}", {}, ConnectionRefusedError(
            errno.ECONNREFUSED, f"failpoint {point}: the database server is down"))
    elif action == "diskfull":
        raise OSError(errno.ENOSPC, f"failpoint {point}: No space left on device")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {point}; known: {', '.join(ACTIONS)}")


def _claim(point: str) -> bool:
    if point in _fired:
        return False
    _fired.add(point)
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, point), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True
