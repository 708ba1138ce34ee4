"""The legacy fixtures that have a ``slurm:`` section, submitted as jobs on the local cluster.

Each test copies a fixture (tests/fixtures/legacy/, see its README.md) to tmp_path and runs
``python -m hyper_opt optimize HYPER MODEL`` there without ``--local``: the project's own slurm
section (account, ``gres: gpu:v100:1``, mem, ``n``, time, job name, log files, and the
``kernel``/``bash`` lines of NCAR's machines) is submitted unchanged; the local cluster has no
accounting enforcement and fake v100 GPUs (scripts/local_cluster.sh), so nothing in it needs
changing. Only ``slurm:jobs`` is capped (--set) where a project asked for more jobs than the budget
of 3 trials needs. The study is SQLite on local disk (tmp_path), where the predecessor kept it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .test_legacy_fixtures import FIXTURES, _copy, _env, _expected, assert_finished, holodec_vae_user_edits

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# fixture -> extra command-line options (only what the local cluster needs)
SLURM_FIXTURES = {
    "aimlutils_torch": (),
    "echo_readme": ("--set", "slurm:jobs=2"),  # 15 jobs of 8 CPUs for 3 trials would queue on one node
    "holodec_vae": ("--set", "slurm:jobs=2"),  # 20 jobs, likewise
}
PREPARE = {"holodec_vae": holodec_vae_user_edits}
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE")


def _job_ids(stdout: str) -> list[str]:
    for line in stdout.splitlines():
        if line.startswith("submitted "):
            return line.split(":", 1)[1].split("(")[0].split()
    raise AssertionError(f"no job ids in:\n{stdout}")


def _wait_jobs_done(ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.time() + timeout
    states: dict[str, str] = {}
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True).stdout
        states = {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}
        if len(states) == len(ids) and all(s in DONE for s in states.values()):
            return states
        time.sleep(2)
    subprocess.run(["scancel", *ids])
    raise AssertionError(f"jobs still running after {timeout} s: {states}")


@pytest.mark.parametrize("name", sorted(SLURM_FIXTURES))
def test_legacy_fixture_runs_as_slurm_jobs(name: str, tmp_path: Path, slurm_cluster: str) -> None:
    folder = _copy(name, tmp_path)
    hyper_file, model_file = FIXTURES[name]
    assert "slurm" in yaml.safe_load((folder / hyper_file).read_text())
    if name in PREPARE:
        PREPARE[name](folder)
    args = [sys.executable, "-m", "hyper_opt", "optimize", hyper_file, model_file, *SLURM_FIXTURES[name]]
    proc = subprocess.run(args, cwd=folder, env=_env(), text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    ids = _job_ids(proc.stdout)
    states = _wait_jobs_done(ids, timeout=420)
    save_path = _expected(folder, name)[0]
    logs = "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()
                   and (p.suffix in (".out", ".err") or p.name.endswith(("_log.out", "_log.err"))))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs[-6000:]}"
    assert_finished(folder, name)
    assert (save_path / "jobs.json").is_file()


# fixture -> what the local cluster needs: its queue (PBS's -q) instead of NCAR's "casper"
PBS_FIXTURES = {
    "ptype_physical": ("--set", "pbs:batch:q=debug"),
    "gdl_storm_mode": ("--set", "pbs:batch:q=debug", "--set", "pbs:jobs=2"),  # 5 jobs for 3 trials: capped
}


@pytest.mark.parametrize("name", sorted(PBS_FIXTURES))
def test_research_project_pbs_section_runs_through_qsub(name: str, tmp_path: Path, slurm_cluster: str) -> None:
    """Two research projects' own ``pbs:`` sections (select with ncpus/ngpus/mem, walltime,
    gpu_type, account, their ``conda activate`` lines) go through a real qsub (Slurm's torque
    wrapper on the local cluster) and finish: exactly n_trials, each trial on one GPU."""
    import shutil

    if shutil.which("qsub") is None:
        pytest.fail("qsub is not installed (scripts/local_cluster.sh up installs slurm-wlm-torque)")
    folder = _copy(name, tmp_path)
    hyper_file, model_file = FIXTURES[name]
    assert "pbs" in yaml.safe_load((folder / hyper_file).read_text())
    args = [sys.executable, "-m", "hyper_opt", "optimize", hyper_file, model_file, *PBS_FIXTURES[name]]
    proc = subprocess.run(args, cwd=folder, env=_env(), text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "PBS job(s)" in proc.stdout, proc.stdout
    ids = _job_ids(proc.stdout)
    states = _wait_jobs_done(ids, timeout=420)
    logs = "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and ".o" in p.name)
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs[-6000:]}"
    assert_finished(folder, name)
    import optuna

    _, db, _ = _expected(folder, name)
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage=url)[0].study_name, storage=url)
    gpus = [t.user_attrs.get("cuda_visible_devices", "") for t in study.trials]
    assert all(g.isdigit() for g in gpus), f"one GPU per trial: {gpus}"
