"""Faults on the worker's one PostgreSQL connection: a busy trial keeps its heartbeat, a stalled
server backend is waited out, and building the trial after the claim is retried.

Each test runs real worker processes (``python -m hyper_opt.run``) against the local PostgreSQL;
the stall is a SIGSTOP of the worker's own server backend (found in ``pg_stat_activity`` by its
``application_name``), never of the shared server itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hyper_opt.storage import WORKER_APPLICATION_NAME, application_name

from .conftest import Search, write_search

TS = optuna.trial.TrialState

# Reports as fast as it can (or every `every` seconds) for `seconds`: the busy trial of issue 21.
REPORTING = textwrap.dedent('''
    import time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            end, step = time.time() + float(conf["seconds"]), 0
            while time.time() < end:
                self.report(trial, 1.0, step)
                step += 1
                if conf.get("every"):
                    time.sleep(float(conf["every"]))
            return {"val_loss": float(step)}
''')


def _worker(s: Search, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml"], cwd=s.folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _study(s: Search, url: str) -> optuna.Study:
    return optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=url)


def _wait_running(s: Search, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(t.state == TS.RUNNING for t in _study(s, url).trials):
                return
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.2)
    raise AssertionError("no trial started")


def _finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the worker did not end:\n{out[-3000:]}") from None
    return out


def _delete(url: str, s: Search) -> None:
    try:
        optuna.delete_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=url)
    except KeyError:
        pass


@pytest.mark.postgres
@pytest.mark.slow
def test_a_trial_reporting_in_a_tight_loop_keeps_its_heartbeat(tmp_path: Path, pg_url: str) -> None:
    """Issue 21, item 1: the worker's one connection is shared by train's storage calls and the
    heartbeat; a train that reports without pause must not starve the heartbeat, or a second
    worker's stale scan fails the live trial (and the first worker's tell finds it FAIL)."""
    # grace 8 s: a beat every second leaves room for a loaded machine's scheduling delays; the
    # starved heartbeat of issue 21 was 23.6 s old
    s = write_search(tmp_path / "s", objective=REPORTING, model={"seconds": 20},
                     optuna={"storage": pg_url, "n_trials": 1, "heartbeat_interval": 1, "grace_period": 8})
    try:
        busy = _worker(s)
        _wait_running(s, pg_url)
        scanner = _worker(s)  # the budget is full: it waits, failing stale trials every 2 s
        busy_out, scanner_out = _finish(busy), _finish(scanner)
        trials = _study(s, pg_url).trials
        assert [(t.number, t.state) for t in trials] == [(0, TS.COMPLETE)], (
            [(t.number, t.state, t.user_attrs.get("error")) for t in trials], busy_out[-3000:])
        assert trials[0].value and trials[0].value > 100, "the objective did report in a tight loop"
        assert busy.returncode == 0 and scanner.returncode == 0, busy_out[-3000:] + scanner_out[-3000:]
    finally:
        _delete(pg_url, s)


# Reports once, waits without using the database until the test creates conf["go"] (meanwhile the
# heartbeat thread alone uses the connection and meets the stall), then reports from two threads.
PAUSING = textwrap.dedent('''
    import os, threading, time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            self.report(trial, 0.0, 0)
            deadline = time.monotonic() + 120
            while not os.path.exists(conf["go"]) and time.monotonic() < deadline:  # the test says when
                time.sleep(0.1)
            # two threads of this worker now use its one connection at once (as the heartbeat thread
            # and the trial do): whichever comes second waits for the pool while the first is stuck
            # on the stopped server, whatever the machine's load does to the heartbeat's timing
            side = threading.Thread(target=self.report, args=(trial, 100.0, 100))
            side.start()
            for step in range(1, 20):
                self.report(trial, float(step), step)
                time.sleep(0.05)
            side.join()
            return {"val_loss": 1.0}
''')


def _backend_pid(url: str, app: str, timeout: float = 30) -> int:
    """The server process of the worker's one connection."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                pids = [r[0] for r in conn.execute(sqlalchemy.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": app})]
            if len(pids) == 1:
                return int(pids[0])
            time.sleep(0.1)
        raise AssertionError(f"expected one connection named {app!r}, found {pids}")
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_stalled_server_backend_is_waited_out_not_turned_into_a_fail(tmp_path: Path, pg_url: str) -> None:
    """Issue 21, item 2: the worker's server process stops (SIGSTOP) while a thread of the worker
    (the heartbeat's, and here a second reporting thread of the trial) uses the connection; a
    report waits for the pool longer than its timeout (shortened to 2 s here) and must be
    retried, not fail the trial; the stall ends (SIGCONT) and the trial completes."""
    go = tmp_path / "go"
    s = write_search(tmp_path / "s", objective=PAUSING, model={"go": str(go)},
                     optuna={"storage": pg_url, "n_trials": 1, "heartbeat_interval": 1, "grace_period": 60,
                             "db_retry_seconds": 60})
    app = application_name(WORKER_APPLICATION_NAME, s.hyper_config()["optuna"]["study_name"])
    pid = None
    try:
        worker = _worker(s, {"HYPER_OPT_POOL_TIMEOUT_S": "2"})
        _wait_running(s, pg_url)
        pid = _backend_pid(pg_url, app)
        os.kill(pid, signal.SIGSTOP)
        # the trial makes no storage call until go exists, so the heartbeat thread beats every 1 s:
        # 4 s on, a beat is blocked on the stopped server, holding the worker's one connection
        time.sleep(4)
        go.touch()  # the trial's next report now waits for the pool, 2 s per try, and is retried
        # The stall ends once the worker has said it met it (not after a fixed 8 s: a loaded
        # machine let a worker reach its report only after the server went on, meeting nothing).
        lines: list[str] = []
        met = threading.Event()

        def read_output() -> None:
            for line in worker.stdout:  # type: ignore[union-attr]
                lines.append(line)
                if "database unreachable" in line:
                    met.set()

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        met.wait(120)
        os.kill(pid, signal.SIGCONT)
        try:
            worker.wait(timeout=300)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise AssertionError(f"the worker did not end:\n{''.join(lines)[-3000:]}") from None
        reader.join(timeout=60)
        out = "".join(lines)
        trials = _study(s, pg_url).trials
        assert [(t.number, t.state) for t in trials] == [(0, TS.COMPLETE)], (
            [(t.number, t.state, t.user_attrs.get("error")) for t in trials], out[-3000:])
        assert worker.returncode == 0, out[-3000:]
        assert "database unreachable" in out, ("the stall was met (a pool timeout) and waited out", out[-4000:])
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # never leave a server process stopped
                os.kill(pid, signal.SIGCONT)
        _delete(pg_url, s)
