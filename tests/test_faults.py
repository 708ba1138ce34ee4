"""Nothing lost: killed workers, cancelled and requeued jobs, a restarted database, many workers.

Faults are injected for real: SIGKILL, scancel, a warning signal and requeue through Slurm, and
PostgreSQL stopped and started again (a server of the test's own: conftest's private_pg).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from hyper_opt.results import read_csv

from .conftest import write_search
from .test_slurm import SLEEPY, _job_ids, _sacct_states, _study, _wait_jobs_done

TS = optuna.trial.TrialState
FINISHED = (TS.COMPLETE, TS.PRUNED)


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except KeyError:  # the study does not exist yet
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == TS.RUNNING]


def _wait_job_gone(job_id: str, timeout: float) -> None:
    """Until squeue no longer lists the job (not even COMPLETING): its processes have ended."""
    _wait_for(lambda: subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True,
                                     text=True).stdout.strip() == "", timeout, f"job {job_id} to end")


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_and_scancel_mid_trial_are_retried_and_the_count_is_exact(
        tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    go = tmp_path / "go"
    s = write_search(tmp_path / "s", objective=SLEEPY,
                     model={"model": {"x": 0.0}, "sleep": 1.0, "steps": 4, "hold_from": 0, "go": str(go)},
                     extra={"slurm": {"jobs": 3, "batch": {"t": "00:10:00", "J": "hoptest-faults", "mem": "400M"}}},
                     optuna={"storage": pg_url, "n_trials": 12, "max_retry": 2})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    # First attempts hold after their first report until `go`: the trials picked here are still
    # training when the kill and the cancel land, however long those take on a loaded machine (a
    # trial that ended in between would leave its worker's next trial to take the fault).
    running = _wait_for(lambda: (r := [t for t in _running(_study(s, pg_url)) if t.user_attrs.get("worker_pid")
                                       and 0 in t.intermediate_values])
                        and len({t.user_attrs.get("slurm_job_id") for t in r}) >= 2 and r, 120,
                        "two jobs running trials")
    killed, cancelled = running[0], next(t for t in running if t.user_attrs["slurm_job_id"] != running[0].user_attrs["slurm_job_id"])
    os.kill(int(killed.user_attrs["worker_pid"]), signal.SIGKILL)
    subprocess.run(["scancel", cancelled.user_attrs["slurm_job_id"]], check=True)
    _wait_job_gone(cancelled.user_attrs["slurm_job_id"], 120)  # its worker has stopped its trial
    go.touch()
    _wait_jobs_done(ids, timeout=240)
    study = _study(s, pg_url)
    by_number = {t.number: t for t in study.trials}
    for victim in (killed, cancelled):
        assert by_number[victim.number].state == TS.FAIL, victim.number
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
        assert retries, f"trial {victim.number} was not retried"
        assert retries[0].params == by_number[victim.number].params == victim.params
        assert retries[0].user_attrs.get("retry_of") == victim.number
        assert retries[-1].state in FINISHED
    assert sum(t.state in FINISHED for t in study.trials) == 12
    assert not _running(study)
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))


CHECKPOINTED = textwrap.dedent('''
    import time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            state = self.load_checkpoint(trial) or {"epoch": 0, "runs": 0}
            state["runs"] += 1
            for epoch in range(state["epoch"], int(conf["epochs"])):
                time.sleep(float(conf["sleep"]))
                state["epoch"] = epoch + 1
                self.save_checkpoint(trial, state)
                self.report(trial, 1.0 / (epoch + 1), epoch)
            return {"val_loss": conf["model"]["x"] ** 2, "epochs_done": state["epoch"], "runs": state["runs"]}
''')


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_warning_signal_checkpoints_requeues_and_resumes_the_trial(
        tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    s = write_search(tmp_path / "s", objective=CHECKPOINTED, model={"model": {"x": 0.5}, "epochs": 12, "sleep": 1.0},
                     extra={"slurm": {"jobs": 1, "batch": {"t": "00:10:00", "J": "hoptest-requeue", "mem": "400M"}}},
                     optuna={"storage": pg_url, "n_trials": 1})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    ckpt = s.save_path / "checkpoints" / "trial_0" / "checkpoint.pkl"
    _wait_for(lambda: ckpt.exists() and ckpt.stat().st_size > 0, 90, "the first checkpoint")
    time.sleep(2.5)
    # What Slurm does before a time limit or preemption (--signal=B:USR2@...): signal the batch process.
    subprocess.run(["scancel", "--batch", "--signal=USR2", ids[0]], check=True)
    _wait_for(lambda: any(t.state == TS.FAIL for t in _study(s, pg_url).trials), 60, "the stopped trial")
    states = _wait_jobs_done(ids, timeout=180)
    assert states[ids[0]] == "COMPLETED", states
    study = _study(s, pg_url)
    done = [t for t in study.trials if t.state == TS.COMPLETE]
    assert len(done) == 1 and done[0].system_attrs.get("failed_trial") == 0
    metrics = done[0].user_attrs["metrics"]
    assert metrics["epochs_done"] == 12 and metrics["runs"] == 2, "resumed from the checkpoint, not restarted"
    # The copy keeps its original's curve (issue 23) and reports each epoch once: all 12, steps 0-11.
    assert sorted(done[0].intermediate_values) == list(range(12)), done[0].intermediate_values
    log = "".join(p.read_text() for p in (s.save_path / "slurm").glob("*_log.out"))
    assert "requeueing to continue the study" in log


@pytest.mark.postgres
@pytest.mark.slow
def test_database_restart_mid_study_loses_nothing(tmp_path: Path, private_pg: Any) -> None:
    from benchmarks.fleet import server_ctl

    pg_url = private_pg.url  # its own server: others' tests keep theirs while this one is stopped
    s = write_search(tmp_path / "s", objective=SLEEPY, model={"model": {"x": 0.0}, "sleep": 0.5, "steps": 4},
                     extra={"local": {"workers": 3}},
                     optuna={"storage": pg_url, "n_trials": 15, "heartbeat_interval": 5, "grace_period": 60,
                             "db_retry_seconds": 120})
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                            cwd=s.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: sum(t.state == TS.COMPLETE for t in _study(s, pg_url).trials) >= 3, 90, "3 trials")
    server_ctl(private_pg.data_dir, "stop")
    time.sleep(8)  # trials finish while the database is down; their results must wait, not vanish
    server_ctl(private_pg.data_dir, "start")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    study = _study(s, pg_url)
    assert sum(t.state in FINISHED for t in study.trials) == 15
    assert not _running(study)
    assert not (s.save_path / "unrecorded").exists()
    logs = "".join(p.read_text() for p in (s.save_path / "logs").glob("*.log"))
    assert "database unreachable" in logs, "the outage was seen and waited out"
    assert len(list((s.save_path / "trials").glob("*.csv"))) == len(study.trials)


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_workers_two_hundred_trials_exact_and_one_csv_each(tmp_path: Path, pg_url: str) -> None:
    # Each worker's first trial waits until all 8 have one: a worker that starts late on a loaded
    # machine still takes part (unmet, the others could finish the 200 instant trials first).
    s = write_search(tmp_path / "s", model={"model": {"x": 0.0}, "steps": 1,
                                            "meet": {"dir": str(tmp_path / "met"), "workers": 8}},
                     extra={"local": {"workers": 8}}, optuna={"storage": pg_url, "n_trials": 200})
    s.cli("optimize", "hyper.yml", "model.yml", check=True, timeout=600)
    study = _study(s, pg_url)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(200)), "exactly 200 trials, no overshoot, no duplicates"
    assert all(t.state == TS.COMPLETE for t in study.trials)
    files = {int(p.stem.split("_")[1]) for p in (s.save_path / "trials").glob("trial_*.csv")}
    assert files == set(numbers)
    for number in (0, 99, 199):
        rows = read_csv(s.save_path / "trials" / f"trial_{number}.csv")
        assert len(rows) == 1 and int(rows[0]["number"]) == number
        assert float(rows[0]["val_loss"]) == pytest.approx(study.trials[number].value)
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 8
    assert not list((s.save_path / "trials").glob(".*.tmp"))


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.slow
def test_resubmission_after_cancelling_all_jobs_tops_the_study_up(
        tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    # Trials 0-2 run through; later first attempts hold after their first report until `go`, so
    # that the cancel (a Python process, seconds on a loaded machine) always meets a search that
    # is not done (unheld, the 11 trials left could all finish before it).
    go = tmp_path / "go"
    s = write_search(tmp_path / "s", objective=SLEEPY,
                     model={"model": {"x": 0.0}, "sleep": 0.5, "steps": 3, "hold_from": 3, "go": str(go)},
                     extra={"slurm": {"jobs": 2, "batch": {"t": "00:10:00", "J": "hoptest-resubmit", "mem": "400M"}}},
                     optuna={"storage": pg_url, "n_trials": 14})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    _wait_for(lambda: sum(t.state == TS.COMPLETE for t in _study(s, pg_url).trials) >= 3, 120, "3 trials")
    s.cli("cancel", "hyper.yml", check=True)
    _wait_jobs_done(ids, timeout=60)
    before = _study(s, pg_url)
    assert sum(t.state in FINISHED for t in before.trials) == 3 and not _running(before)
    go.touch()  # the resubmitted jobs' trials run through
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--reload", check=True)
    new_ids = _job_ids(proc.stdout)
    _wait_jobs_done(new_ids, timeout=240)
    study = _study(s, pg_url)
    assert sum(t.state in FINISHED for t in study.trials) == 14
    assert not _running(study) and not [t for t in study.trials if t.state == TS.WAITING]
    assert set(_sacct_states(ids).values()) == {"CANCELLED"}
