"""The journal's budget lock on a real journal file: a lease that a live holder renews (never
taken from it however long it is delayed), taken over from a dead one, and fenced: a holder
suspended past the grace finds out before it writes and deletes nothing that is not its own."""

from __future__ import annotations

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

from hyper_opt import budget_lock
from hyper_opt.budget_lock import BudgetLock
from hyper_opt.config import load_config
from hyper_opt.exceptions import StorageError
from hyper_opt.storage import make_storage

from .conftest import REPO, write_search

GRACE_S, RENEW_S = 2.0, 0.1  # a renewal every 0.1 s: 20 chances per grace on a loaded machine
# A holder in its own process, with the same short lease; it waits for a line on stdin between
# taking and releasing the lock, and says whether it still holds it before releasing.
HOLDER = textwrap.dedent('''
    import sys
    from hyper_opt import budget_lock
    from hyper_opt.config import load_config
    budget_lock.JOURNAL_LOCK_GRACE_S, budget_lock.JOURNAL_LOCK_RENEW_S = {grace}, {renew}
    lock = budget_lock.BudgetLock(load_config(sys.argv[1], sys.argv[2])[0].optuna)
    lock.acquire()
    print("held", flush=True)
    sys.stdin.readline()
    owned = getattr(lock, "owned", lambda: "unknown")()
    print("owned", owned, flush=True)
    lock.release()
    print("released", flush=True)
''').format(grace=GRACE_S, renew=RENEW_S)


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(budget_lock, "JOURNAL_LOCK_GRACE_S", GRACE_S)
    monkeypatch.setattr(budget_lock, "JOURNAL_LOCK_RENEW_S", RENEW_S, raising=False)
    return write_search(tmp_path / "s", optuna={"n_trials": 1, "storage": "study.journal",
                                                "storage_type": "journal", "heartbeat_interval": None,
                                                "grace_period": None})


def _lock_file(spec) -> Path:
    return spec.storage.path.with_name(spec.storage.path.name + ".budget.lock")


def _holder(s) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(s.hyper), str(s.model)], cwd=s.folder,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_delayed_holder_keeps_the_journal_lock(journal) -> None:
    """A holder whose main thread is delayed for several grace periods (a slow NFS read) is alive:
    its lease is renewed, and a waiter waits (here until its own timeout) instead of taking it."""
    spec = load_config(journal.hyper, journal.model)[0].optuna
    holder = BudgetLock(spec)
    holder.acquire()
    token = _lock_file(spec).read_bytes()
    waiter = BudgetLock(spec, timeout_s=4 * GRACE_S)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            waiter.acquire()
        except StorageError as err:
            errors.append(err)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(5 * GRACE_S)  # the holder's main thread is "delayed"
    thread.join(timeout=30)
    assert not waiter.held and errors and "stayed taken" in str(errors[0]), "a live holder's lock is not taken"
    assert _lock_file(spec).read_bytes() == token and holder.owned()
    holder.release()
    assert not _lock_file(spec).exists()
    waiter.acquire()
    waiter.release()


def test_a_dead_holders_journal_lock_is_taken_over(journal) -> None:
    spec = load_config(journal.hyper, journal.model)[0].optuna
    dead = _holder(journal)
    dead.kill()
    dead.wait()
    left = _lock_file(spec).read_bytes()
    assert left, "the dead holder's lock file (with its token) is left behind"
    lock = BudgetLock(spec, timeout_s=30)
    lock.acquire()
    assert lock.owned() and _lock_file(spec).read_bytes() != left
    lock.release()
    assert not _lock_file(spec).exists()


@pytest.mark.slow
def test_a_holder_that_lost_the_journal_lock_finds_out_and_deletes_nothing(journal) -> None:
    """Suspended (SIGSTOP) past the grace, the holder cannot be told from a dead one and loses
    the lock; resumed, it sees that before writing, and its release leaves the new holder's file."""
    spec = load_config(journal.hyper, journal.model)[0].optuna
    first = _holder(journal)
    try:
        os.kill(first.pid, signal.SIGSTOP)
        second = BudgetLock(spec, timeout_s=30)
        second.acquire()
        token = _lock_file(spec).read_bytes()
        os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate("go\n", timeout=30)
    finally:
        first.kill()
    assert "owned False" in out and "released" in out and first.returncode == 0, out
    assert _lock_file(spec).read_bytes() == token, "the second holder's lock file is left alone"
    assert second.owned()
    # A third waits for the second instead of being let in while it holds the lock.
    third = BudgetLock(spec, timeout_s=3 * GRACE_S)
    with pytest.raises(StorageError, match="stayed taken"):
        third.acquire()
    second.release()
    assert not _lock_file(spec).exists()


# A worker that suspends itself (SIGSTOP) right after counting the trials under the lock.
WORKER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from hyper_opt import budget_lock, claim, worker
    from hyper_opt.cli import main
    budget_lock.JOURNAL_LOCK_GRACE_S, budget_lock.JOURNAL_LOCK_RENEW_S = {grace}, {renew}
    worker.WAIT_POLL_S = 0.2
    if sys.argv[3] == "pause":
        counts = claim.counts
        def counted(*args, **kwargs):
            result = counts(*args, **kwargs)
            marker = Path("counted")
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGSTOP)
            return result
        claim.counts = counted
    raise SystemExit(main(["run", sys.argv[1], sys.argv[2]]))
''').format(grace=GRACE_S, renew=RENEW_S)


def test_a_suspended_worker_does_not_exceed_the_journal_budget(journal) -> None:
    """End to end with n_trials 1: a worker suspended under the lock after counting 0 trials
    loses the lock to a second worker, which runs the one trial; resumed, the first one creates
    nothing and stops; one trial in all, none left RUNNING."""
    spec = load_config(journal.hyper, journal.model)[0].optuna
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", WORKER, str(journal.hyper), str(journal.model)]
    first = subprocess.Popen([*args, "pause"], cwd=journal.folder, text=True, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (journal.folder / "counted").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first worker never counted"
            time.sleep(0.05)
        while open(f"/proc/{first.pid}/stat").read().split(") ")[1][0] != "T":
            time.sleep(0.01)
        second = subprocess.run([*args, "run"], cwd=journal.folder, text=True, env=env,
                                capture_output=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, out
    trials = optuna.load_study(study_name=spec.study_name, storage=make_storage(spec)).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE], (trials, out)
    assert "taken over while this worker was suspended" in out
