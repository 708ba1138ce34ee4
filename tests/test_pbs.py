"""The PBS path end to end through a real qsub: Debian's slurm-wlm-torque (qsub/qstat/qdel that
translate PBS options onto the local Slurm, installed by scripts/local_cluster.sh) with PostgreSQL.

It is not PBS Pro: sbatch reads the script's ``#PBS`` lines itself (one ``select`` chunk, ``-l
walltime``, ``-A``, ``-q``, ``-N``; it ignores ``ngpus``, so hyper_opt passes ``-l naccelerators``
to this wrapper), qstat has no ``-x`` and no ``stime``, and the job gets no ``PBS_*`` variables.
The syntax it does not cover is tested with golden files and recorded PBS Pro output
(tests/test_pbs_unit.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from .conftest import IN_CI, Search, write_search
from .test_pbs_unit import RESEARCH
from .test_slurm import SLEEPY, _sacct_states, _wait_jobs_done

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

TS = optuna.trial.TrialState

# The echo-opt torch example's pbs section with only the queue and account changed to the local
# cluster's, and its bash lines (source ~/.bashrc, conda activate echo) replaced by harmless ones.
ECHO_OPT_TORCH = {"jobs": 1, "tasks_per_worker": 1, "gpus_per_node": 1,
                  "bash": ["echo BASH-LINE-RAN", "true conda activate echo"],
                  "batch": {"l": ["select=1:ncpus=8:ngpus=1:mem=64GB", "walltime=12:00:00"], "A": "root",
                            "q": "debug", "N": "torch_example", "o": "./out", "e": "./err"}}


@pytest.fixture
def torque_qsub(slurm_cluster: str) -> str:
    """Slurm's torque wrapper qsub (slurm-wlm-torque)."""
    path = shutil.which("qsub")
    if path is None:
        message = "qsub is not installed (scripts/local_cluster.sh up installs slurm-wlm-torque)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _search(tmp_path: Path, pg_url: str, *, pbs: dict, n_trials: int, sleep: float = 0.2, steps: int = 3,
            **optuna_keys: object) -> Search:
    return write_search(tmp_path / "s", objective=SLEEPY, extra={"pbs": pbs},
                        model={"model": {"x": 0.0}, "sleep": sleep, "steps": steps},
                        optuna={"storage": pg_url, "n_trials": n_trials, **optuna_keys})


def _study(s: Search, pg_url: str) -> optuna.Study:
    return optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=pg_url)


def _job_ids(s: Search) -> list[str]:
    return [j["job_id"] for j in json.loads((s.save_path / "jobs.json").read_text())
            if j["scheduler"] == "pbs"]


def _logs(s: Search) -> str:
    return "".join(p.read_text(errors="replace") for p in s.save_path.glob("*.sh.[oe]*"))


def test_echo_opt_torch_pbs_section_submits_through_qsub_and_finishes(tmp_path: Path, pg_url: str,
                                                                       torque_qsub: str) -> None:
    s = _search(tmp_path, pg_url, pbs=ECHO_OPT_TORCH, n_trials=6)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    # optimize returns once the job is submitted, not when it is done: the study is not finished
    # yet (its time is no measure: seconds of start-up on a loaded machine)
    early = [t for t in _study(s, pg_url).trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    assert len(early) < 6, "optimize returns once the job is submitted"
    assert "submitted 1 PBS job(s)" in proc.stdout
    ids = _job_ids(s)
    show = subprocess.run(["scontrol", "show", "job", ids[0]], capture_output=True, text=True).stdout
    if show:  # the #PBS lines reached the job
        assert "JobName=torch_example" in show and "TimeLimit=12:00:00" in show and "gres/gpu=1" in show
    states = _wait_jobs_done(ids, timeout=240)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(s))
    study = _study(s, pg_url)
    finished = [t for t in study.trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    assert len(finished) == 6 and len(study.trials) == 6, "exactly n_trials"
    for t in finished:
        assert t.user_attrs["cuda_visible_devices"].isdigit(), "each trial saw exactly one GPU"
        assert t.user_attrs["slurm_job_id"] == ids[0]
    assert "BASH-LINE-RAN" in _logs(s), "pbs.bash lines ran before the workers"
    status = s.cli("status", "hyper.yml", check=True)
    assert "finished 6/6" in status.stdout and "PBS jobs (1):" in status.stdout


def _research_search(tmp_path: Path, pg_url: str, project: str) -> Search:
    """A project's own section, only queue and account changed and the bash lines made harmless."""
    section = copy.deepcopy(RESEARCH[project])
    section["batch"].update(q="debug", A="root")
    section["bash"] = ["echo BASH-LINE-RAN"]
    return _search(tmp_path, pg_url, pbs=section, n_trials=2, sleep=0.1, steps=2)


def test_research_project_pbs_section_submits_and_finishes(tmp_path: Path, pg_url: str, torque_qsub: str) -> None:
    # miles-holodec: gpu_type=v100 as its own -l line (this wrapper ignores it); jobs: 10 shrink
    # to the 2 that 2 trials need.
    s = _research_search(tmp_path, pg_url, "miles-holodec")
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert "submitted 2 PBS job(s)" in proc.stdout
    ids = _job_ids(s)
    states = _wait_jobs_done(ids, timeout=240)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(s))
    study = _study(s, pg_url)
    finished = [t for t in study.trials if t.state == TS.COMPLETE]
    assert len(finished) == 2 and len(study.trials) == 2
    assert all(t.user_attrs["cuda_visible_devices"].isdigit() for t in finished)


def test_a_refusal_by_the_real_qsub_is_one_clear_error(tmp_path: Path, pg_url: str, torque_qsub: str) -> None:
    # miles-credit's select=1:ncpus=8:ngpus=1:mem=128GB:cpu_type=milan is valid PBS Pro, but
    # sbatch's #PBS reader takes "128GB:cpu_type=milan" for the memory and refuses the job.
    s = _research_search(tmp_path, pg_url, "miles-credit")
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "qsub refused the job" in proc.stderr and "Invalid --mem specification" in proc.stderr
    assert not (s.save_path / "jobs.json").exists(), "nothing was submitted"


def test_gpu_jobs_status_and_cancel(tmp_path: Path, pg_url: str, torque_qsub: str) -> None:
    pbs = {"jobs": 2, "gpus_per_node": 2, "bash": ["echo BASH-LINE-RAN"],
           "batch": {"l": ["select=1:ncpus=2:ngpus=2:mem=500MB", "walltime=00:10:00"], "q": "debug",
                     "N": "hoptest-pbs-cancel"}}
    s = _search(tmp_path, pg_url, pbs=pbs, n_trials=40, sleep=1.0, steps=40, max_retry=1)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    ids = _job_ids(s)
    assert len(ids) == 2
    deadline = time.time() + 120
    while time.time() < deadline:
        if sum(t.state == TS.RUNNING for t in _study(s, pg_url).trials) >= 4:
            break
        time.sleep(1)
    running = [t for t in _study(s, pg_url).trials if t.state == TS.RUNNING]
    assert len(running) == 4, _logs(s)
    for a, b in itertools.combinations(running, 2):
        if a.user_attrs["slurm_job_id"] == b.user_attrs["slurm_job_id"]:
            assert a.user_attrs["cuda_visible_devices"] != b.user_attrs["cuda_visible_devices"], "one GPU each"
    status = s.cli("status", "hyper.yml", check=True)
    assert "RUNNING 4" in status.stdout and "PBS jobs (2):" in status.stdout
    assert all(i in status.stdout for i in ids) and status.stdout.count("RUNNING") >= 3
    cancel = s.cli("cancel", "hyper.yml", check=True)
    assert "cancelled 2 PBS job(s)" in cancel.stdout
    states = _wait_jobs_done(ids, timeout=60)
    assert set(states.values()) == {"CANCELLED"}, states
    study = _study(s, pg_url)
    assert not [t for t in study.trials if t.state == TS.RUNNING], "no trial left RUNNING"
    failed = [t for t in study.trials if t.state == TS.FAIL]
    assert len(failed) >= 4
    waiting = {t.params["x"] for t in study.trials if t.state == TS.WAITING}
    assert {t.params["x"] for t in running} <= waiting, "the cancelled trials are re-queued"


def test_walltime_shorter_than_two_trials_ends_the_job_cleanly(tmp_path: Path, pg_url: str,
                                                                torque_qsub: str) -> None:
    # 2 minutes of walltime, ~65-s trials: after the first trial the worker sees that another one
    # would end after the walltime (minus a 30-s margin) and stops; the job ends by itself.
    pbs = {"jobs": 1, "batch": {"l": ["select=1:ncpus=1:mem=500MB", "walltime=00:02:00"], "q": "debug",
                                "N": "hoptest-pbs-walltime"}}
    s = _search(tmp_path, pg_url, pbs=pbs, n_trials=50, sleep=13.0, steps=5)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    ids = _job_ids(s)
    states = _wait_jobs_done(ids, timeout=170)
    assert states[ids[0]] == "COMPLETED", f"the job was killed instead of leaving: {states}\n{_logs(s)}"
    study = _study(s, pg_url)
    assert len([t for t in study.trials if t.state == TS.COMPLETE]) == 1
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    assert "wall time left" in _logs(s)
    assert _sacct_states(ids)[ids[0]] == "COMPLETED"
