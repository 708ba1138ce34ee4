"""The worker's trial lifecycle under faults that the end-to-end tests do not reach."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from .conftest import Search, write_search

TS = optuna.trial.TrialState


def _sqlite_study(s: Search) -> optuna.Study:
    name = s.hyper_config()["optuna"]["study_name"]
    storage = optuna.storages.RDBStorage(f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def _run_worker(s: Search, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml", *args],
                          cwd=s.folder, text=True, capture_output=True, timeout=timeout)


def test_a_running_trial_that_never_beat_goes_stale_and_is_retried(tmp_path: Path) -> None:
    """A worker killed between ask() and its first heartbeat left a RUNNING trial without a
    heartbeat; optuna's stale check skips those, and every worker waited for it for ever."""
    s = write_search(tmp_path / "s", optuna={"n_trials": 1, "heartbeat_interval": 1, "grace_period": 3})
    s.save_path.mkdir(parents=True)
    orphan = _sqlite_study(s).ask()  # RUNNING, no heartbeat, no run context
    started = time.monotonic()
    proc = _run_worker(s, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 45
    trials = _sqlite_study(s).trials
    assert trials[orphan.number].state == TS.FAIL
    assert "no heartbeat" in trials[orphan.number].user_attrs["error"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry and retry[0].state == TS.COMPLETE
    assert sum(t.state == TS.COMPLETE for t in trials) == 1 and not [t for t in trials if t.state == TS.RUNNING]


class _FlakyStorage:
    """record_heartbeat fails ``failures`` times with a connection error, then works."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.beats = failures, 0
        self.error = error

    def record_heartbeat(self, trial_id: int) -> None:
        import sqlalchemy.exc

        if self.failures:
            self.failures -= 1
            raise self.error or sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        self.beats += 1


def test_a_database_blip_at_the_first_heartbeat_is_retried() -> None:
    from hyper_opt.worker import _Heartbeat

    storage = _FlakyStorage(failures=1)
    hb = _Heartbeat(storage, 1, 60)
    with hb:
        assert storage.beats == 1


def test_a_failed_first_heartbeat_raises_its_own_error_not_a_thread_error() -> None:
    from hyper_opt.worker import _Heartbeat

    hb = _Heartbeat(_FlakyStorage(failures=1, error=ValueError("boom")), 1, 60)
    with pytest.raises(ValueError, match="boom"):
        with hb:
            pass
    hb.__exit__(None, None, None)  # the worker's finally: must not raise "cannot join thread"


RETURNS = '''
from hyper_opt import BaseObjective

class Objective(BaseObjective):
    def train(self, trial, conf):
        return {"val_loss": conf["value"]}
'''


@pytest.mark.parametrize("value, why", [(".nan", "val_loss=nan, which is not a finite number"),
                                        (".inf", "val_loss=inf, which is not a finite number"),
                                        ("'high'", "val_loss='high', which is not a number")])
def test_a_metric_that_is_not_a_finite_number_fails_the_trial_and_says_why(tmp_path: Path, value: str,
                                                                           why: str) -> None:
    from hyper_opt.results import read_csv

    s = write_search(tmp_path / "s", objective=RETURNS, optuna={"n_trials": 1})
    s.model.write_text(f"model: {{x: 0.0}}\nvalue: {value}\n")
    proc = _run_worker(s, "--max-trials", "1")
    assert proc.returncode == 0, proc.stderr
    trial = _sqlite_study(s).trials[0]
    assert trial.state == TS.FAIL and why in trial.user_attrs["error"]
    assert why in read_csv(s.save_path / "trials" / "trial_0.csv")[0]["error"]
