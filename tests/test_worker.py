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
    from hyper_opt.heartbeat import Heartbeat

    storage = _FlakyStorage(failures=1)
    hb = Heartbeat(storage, 1, 60)
    with hb:
        assert storage.beats == 1


def test_a_failed_first_heartbeat_raises_its_own_error_not_a_thread_error() -> None:
    from hyper_opt.heartbeat import Heartbeat

    hb = Heartbeat(_FlakyStorage(failures=1, error=ValueError("boom")), 1, 60)
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
                                        ("'high'", "val_loss='high', which is not a number"),
                                        ("true", "val_loss=True, a boolean, which is not a metric value")])
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


SWALLOWS = '''
import time
from hyper_opt import BaseObjective

class Objective(BaseObjective):
    def train(self, trial, conf):
        try:
            for step in range(600):
                time.sleep(0.05)
                self.report(trial, 1.0, step)
        except Exception:  # a user's catch-all must not swallow the stop request
            pass
        return {"val_loss": 1.0}
'''


def test_a_users_except_exception_does_not_swallow_a_stop_request(tmp_path: Path) -> None:
    import signal

    s = write_search(tmp_path / "s", objective=SWALLOWS, optuna={"n_trials": 1})
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml"], cwd=s.folder,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if [t for t in _sqlite_study(s).trials if t.state == TS.RUNNING]:
                break
        except Exception:  # the study is not there yet
            continue
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)  # Slurm's warning: stop at the next report
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    trial = _sqlite_study(s).trials[0]
    assert trial.state == TS.FAIL and "Interrupted" in trial.user_attrs["error"], out


ALARMS = '''
import signal
from hyper_opt import BaseObjective

class Objective(BaseObjective):
    def train(self, trial, conf):
        if trial.number == 0:
            signal.alarm(1000)  # the user's own alarm
        return {"val_loss": 1.0, "alarm_left": signal.alarm(0) if trial.number == 1 else 0}
'''


def test_the_users_alarm_survives_the_worker(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", objective=ALARMS, optuna={"n_trials": 2})
    proc = _run_worker(s)
    assert proc.returncode == 0, proc.stderr
    assert _sqlite_study(s).trials[1].user_attrs["metrics"]["alarm_left"] >= 990


def test_a_trial_csv_that_cannot_be_written_does_not_stop_the_worker(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 2})
    s.save_path.mkdir(parents=True)
    (s.save_path / "trials").write_text("a file where the trials folder should be")
    proc = _run_worker(s)
    assert proc.returncode == 0, proc.stderr
    assert [t.state for t in _sqlite_study(s).trials] == [TS.COMPLETE, TS.COMPLETE]
    assert "could not be written" in proc.stderr


def test_a_checkpoint_others_could_write_is_not_unpickled(tmp_path: Path) -> None:
    import os

    from hyper_opt import BaseObjective
    from hyper_opt.exceptions import ObjectiveError

    class T:
        number = 3
        user_attrs: dict = {}

    obj = BaseObjective({"model": {}})
    obj.save_path = tmp_path
    old = os.umask(0o002)  # a group-writable umask, common on shared project folders
    try:
        path = obj.save_checkpoint(T(), {"epoch": 4})
    finally:
        os.umask(old)
    assert obj.load_checkpoint(T()) == {"epoch": 4}
    path.parent.chmod(0o777)
    with pytest.raises(ObjectiveError, match="writable by other users"):
        obj.load_checkpoint(T())
