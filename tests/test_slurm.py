"""The Slurm path against the real local cluster and PostgreSQL (scripts/local_cluster.sh up)."""

from __future__ import annotations

import itertools
import os
import subprocess
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from .conftest import Search, write_search

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

TS = optuna.trial.TrialState

# With conf["go"], a first attempt numbered conf["hold_from"] or later waits after its first report
# until the test creates that file: a test's fault then lands in a trial that is still training,
# whatever the machine's load does to its timing, never in one that has just ended.
SLEEPY = textwrap.dedent('''
    import os, time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            x = conf["model"]["x"]
            for step in range(int(conf["steps"])):
                time.sleep(float(conf["sleep"]))
                self.report(trial, (x - 2) ** 2 + 1.0 / (step + 1), step)
                while (conf.get("go") and step == 0 and trial.number >= int(conf["hold_from"])
                       and "retry_of" not in trial.user_attrs and not os.path.exists(conf["go"])):
                    time.sleep(0.05)
            return {"val_loss": (x - 2) ** 2}
''')


def _search(tmp_path: Path, pg_url: str, *, slurm: dict, n_trials: int, sleep: float = 0.2, steps: int = 3,
            **optuna_keys: object) -> Search:
    return write_search(tmp_path / "s", objective=SLEEPY, extra={"slurm": slurm},
                        model={"model": {"x": 0.0}, "sleep": sleep, "steps": steps},
                        optuna={"storage": pg_url, "n_trials": n_trials, **optuna_keys})


def _study(s: Search, pg_url: str) -> optuna.Study:
    return optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=pg_url)


def _job_ids(stdout: str) -> list[str]:
    for line in stdout.splitlines():
        if line.startswith("submitted "):
            return line.split(":", 1)[1].split("(")[0].split()
    raise AssertionError(f"no job ids in:\n{stdout}")


def _sacct_states(ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def _wait_jobs_done(ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.time() + timeout
    states: dict[str, str] = {}
    while time.time() < deadline:
        states = _sacct_states(ids)
        if len(states) == len(ids) and all(s not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")
                                           for s in states.values()):
            return states
        time.sleep(2)
    subprocess.run(["scancel", *ids])
    raise AssertionError(f"jobs still running after {timeout} s: {states}")


def test_gpu_jobs_share_the_study_and_reach_exactly_n_trials(tmp_path: Path, pg_url: str,
                                                             slurm_cluster: str) -> None:
    slurm = {"jobs": 3, "gpus_per_node": 2, "bash": ["echo BASH-LINE-RAN $SLURM_JOB_ID"],
             "batch": {"gres": "gpu:2", "t": "00:10:00", "J": "hoptest-gpu", "mem": "500M",
                       "cpus-per-task": 2}}
    s = _search(tmp_path, pg_url, slurm=slurm, n_trials=24)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    # optimize returns once the jobs are submitted, not when they are done: the study is not
    # finished yet (its time is no measure: seconds of start-up on a loaded machine)
    early = [t for t in _study(s, pg_url).trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    assert len(early) < 24, "optimize returns once the jobs are submitted"
    ids = _job_ids(proc.stdout)
    assert len(ids) == 3
    queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
    assert queued.stdout.split() or _sacct_states(ids), "jobs visible to squeue or sacct"
    states = _wait_jobs_done(ids, timeout=240)
    # Options from slurm.batch reach the job (long and short forms): asked of the accounting
    # database, which keeps finished jobs (scontrol forgets them after MinJobAge).
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ids[0], "-o", "JobName,Timelimit,AllocTRES"],
                          capture_output=True, text=True, check=True).stdout
    assert "hoptest-gpu|00:10:00|" in acct and "gres/gpu=2" in acct, acct
    assert set(states.values()) == {"COMPLETED"}, states
    study = _study(s, pg_url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    assert len(finished) == 24
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    for t in finished:
        gpu = t.user_attrs["cuda_visible_devices"]
        assert gpu.isdigit(), f"trial {t.number} saw CUDA_VISIBLE_DEVICES={gpu!r}"
        assert t.user_attrs["slurm_job_id"] in ids
    by_job = {}
    for t in finished:
        by_job.setdefault(t.user_attrs["slurm_job_id"], []).append(t)
    for job, trials in by_job.items():
        for a, b in itertools.combinations(trials, 2):
            overlap = a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
            if overlap:
                assert a.user_attrs["cuda_visible_devices"] != b.user_attrs["cuda_visible_devices"], (job, a.number, b.number)
    logs = "".join(p.read_text() for p in (s.save_path / "slurm").glob("*_log.out"))
    assert "BASH-LINE-RAN" in logs, "slurm.bash lines ran before the worker"
    csvs = sorted((s.save_path / "trials").glob("trial_*.csv"))
    assert len(csvs) == len(study.trials)
    status = s.cli("status", "hyper.yml", check=True)
    assert "finished 24/24" in status.stdout and "COMPLETED" in status.stdout
    password = os.environ.get("PGPASSWORD", "")
    assert password, "scripts/local_cluster.sh env sets PGPASSWORD; the leak check needs it"
    for path in s.save_path.rglob("*"):  # submitit's pickles included: that is where a leak would hide
        if path.is_file():
            data = path.read_bytes()
            assert f":{password}@".encode() not in data and f"PGPASSWORD={password}".encode() not in data, path


def test_job_leaves_before_its_time_limit_with_no_running_trial(tmp_path: Path, pg_url: str,
                                                                slurm_cluster: str) -> None:
    # 2 minutes, 16-s trials: workers stop starting trials 61 s before the limit (signal delay 1 s
    # plus the minute by which Slurm may send its warning early), so the job leaves after ~3 trials.
    slurm = {"jobs": 1, "signal_delay_s": 1, "batch": {"t": "2", "J": "hoptest-walltime", "mem": "500M"}}
    s = _search(tmp_path, pg_url, slurm=slurm, n_trials=50, sleep=4.0, steps=4)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    ids = _job_ids(proc.stdout)
    states = _wait_jobs_done(ids, timeout=150)
    assert states[ids[0]] == "COMPLETED", f"the job was killed instead of leaving: {states}"
    study = _study(s, pg_url)
    finished = [t for t in study.trials if t.state == TS.COMPLETE]
    assert 1 <= len(finished) < 50
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    log = "".join(p.read_text() for p in (s.save_path / "slurm").glob("*_log.err"))
    assert "wall time left" in log


def test_status_and_cancel_on_a_running_study(tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    slurm = {"jobs": 2, "batch": {"t": "00:10:00", "J": "hoptest-cancel", "mem": "500M"}}
    s = _search(tmp_path, pg_url, slurm=slurm, n_trials=40, sleep=1.0, steps=30, max_retry=1)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    ids = _job_ids(proc.stdout)
    deadline = time.time() + 90
    while time.time() < deadline:
        if sum(t.state == TS.RUNNING for t in _study(s, pg_url).trials) >= 2:
            break
        time.sleep(1)
    status = s.cli("status", "hyper.yml", check=True)
    assert "RUNNING 2" in status.stdout and "running trial" in status.stdout
    assert all(i in status.stdout for i in ids)
    cancel = s.cli("cancel", "hyper.yml", check=True)
    assert "cancelled 2 job(s)" in cancel.stdout
    states = _wait_jobs_done(ids, timeout=60)
    assert set(states.values()) == {"CANCELLED"}, states
    study = _study(s, pg_url)
    assert not [t for t in study.trials if t.state == TS.RUNNING], "no trial left RUNNING"
    failed = [t for t in study.trials if t.state == TS.FAIL]
    assert len(failed) >= 2
    waiting = [t for t in study.trials if t.state == TS.WAITING]
    assert {t.params["x"] for t in waiting} >= {t.params["x"] for t in failed[:2]}, "cancelled trials are re-queued"
