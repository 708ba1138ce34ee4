"""Fault paths that need no cluster: trials of jobs that ended are failed without a heartbeat."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import optuna
import pytest

from hyper_opt.config import load_config
from hyper_opt.storage import make_storage

from .conftest import write_search


def _fake_sacct(folder: Path, lines: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "sacct"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{lines}\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{folder}:{os.environ['PATH']}"


@pytest.mark.parametrize("command", ["status", "optimize"])
def test_journal_trials_of_ended_jobs_are_failed_and_requeued(tmp_path: Path, command: str) -> None:
    """The journal storage has no heartbeat: a SIGKILLed job's trial would stay RUNNING for good."""
    s = write_search(tmp_path / "s", optuna={"n_trials": 3, "storage": "study.journal", "storage_type": "journal",
                                             "heartbeat_interval": None, "grace_period": None, "reload": 1})
    config, _ = load_config(s.hyper, s.model)
    storage = make_storage(config.optuna)
    study = optuna.create_study(study_name=config.optuna.study_name, storage=storage)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(-5, 5)})
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(-5, 5)}), 1.0)
    dead.set_user_attr("slurm_job_id", "4242")
    if command == "status":  # a trial whose job still runs (optimize would wait for it)
        alive = study.ask()
        alive.set_user_attr("slurm_job_id", "4343")
    path = _fake_sacct(tmp_path / "bin", "4242|CANCELLED by 0\n4343|RUNNING")
    args = ["status", "hyper.yml"] if command == "status" else ["optimize", "hyper.yml", "model.yml", "--local"]
    proc = s.cli(*args, env={"PATH": path}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = optuna.load_study(study_name=config.optuna.study_name, storage=make_storage(config.optuna)).trials
    first = trials[dead.number]
    assert first.state == optuna.trial.TrialState.FAIL and "job 4242 ended (CANCELLED)" in first.user_attrs["error"]
    copies = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(copies) == 1 and copies[0].params == first.params, "re-queued with the same parameters"
    if command == "optimize":
        assert sum(t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL for t in trials) == 3
        assert "lock file" not in proc.stderr, "the budget lock must not take optuna's journal lock file"
    if command == "status":
        assert "were RUNNING in jobs that had ended" in proc.stdout
        assert trials[alive.number].state == optuna.trial.TrialState.RUNNING, "a running job's trial is left alone"


def test_the_journal_budget_lock_is_an_exclusive_create_and_outlives_a_dead_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock is unreliable on the shared file systems the journal storage is for: the lock is a
    file created with O_EXCL, and one left behind by a holder that died is taken over."""
    import threading
    import time

    from hyper_opt import budget_lock as storage_mod
    from hyper_opt.budget_lock import BudgetLock

    s = write_search(tmp_path / "s", optuna={"storage": "study.journal", "storage_type": "journal",
                                             "heartbeat_interval": None, "grace_period": None})
    spec = load_config(s.hyper, s.model)[0].optuna
    first, second = BudgetLock(spec), BudgetLock(spec)
    first.acquire()
    lock_file = spec.storage.path.with_name(spec.storage.path.name + ".budget.lock")
    assert lock_file.exists(), "held: the lock file exists"
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (second.acquire(), got.set()), daemon=True)
    waiter.start()
    assert not got.wait(0.5), "a second holder waits"
    first.release()
    assert got.wait(10), "and gets it once released"
    second.release()
    assert not lock_file.exists()
    # A holder killed while holding it leaves the file: it is taken over after the grace period.
    monkeypatch.setattr(storage_mod, "JOURNAL_LOCK_GRACE_S", 1)
    lock_file.write_text("")
    third = BudgetLock(spec)
    started = time.monotonic()
    third.acquire()
    assert time.monotonic() - started < 30
    third.release()
