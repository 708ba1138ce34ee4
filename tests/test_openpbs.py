"""Every PBS path against PBS Pro itself: OpenPBS (its open-source edition: the same server,
scheduler, MoM and qsub/qstat/qdel), built and started by scripts/local_cluster.sh beside Slurm,
end to end with PostgreSQL.

Slurm's torque wrapper stays first on PATH (tests/test_pbs.py uses it); these tests point
hyper_opt at OpenPBS's commands with ``HYPER_OPT_PBS_BIN`` (the ``pbs_cluster`` fixture's folder).
A PBS job gets none of the submitting environment, so each search's ``bash`` lines export what
the job needs: this checkout on PYTHONPATH (the job runs this code, which it prints) and the
database password. The node advertises 16 GPUs (``ngpus``, at most 4 per job) and no cgroup hook, as docs/pbs.md says.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import textwrap
import time
import warnings
from pathlib import Path

import optuna
import pytest

from hyper_opt.launch.pbs_env import parse_qstat_full, walltime_seconds

from .conftest import REPO, Search, write_search
from .test_pbs_unit import CASPER, RESEARCH

pytestmark = [pytest.mark.pbs, pytest.mark.postgres, pytest.mark.slow]

TS = optuna.trial.TrialState
QUEUE = "workq"  # the local server's queue; the only key changed in the projects' sections

# Saves a checkpoint after every step and resumes from it: a retried trial continues. With
# conf["go"], a trial that started from scratch holds after its second step until that file exists.
CHECKPOINTING = textwrap.dedent('''
    import os, time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            x = conf["model"]["x"]
            start = self.load_checkpoint(trial) or 0
            trial.set_user_attr("resumed_from", start)
            for step in range(start, int(conf["steps"])):
                time.sleep(float(conf["sleep"]))
                self.save_checkpoint(trial, step + 1)
                self.report(trial, (x - 2) ** 2 + 1.0 / (step + 1), step)
                while conf.get("go") and start == 0 and step == 1 and not os.path.exists(conf["go"]):
                    time.sleep(0.05)
            return {"val_loss": (x - 2) ** 2}
''')


def _job_env_lines() -> list[str]:
    """What a PBS job needs from the test's environment: this checkout and the password."""
    lines = [f"export PYTHONPATH={REPO}"]
    if os.environ.get("PGPASSWORD"):
        lines.append(f"export PGPASSWORD={os.environ['PGPASSWORD']}")
    return lines


def _search(tmp_path: Path, pg_url: str, name: str, *, pbs: dict, n_trials: int, sleep: float = 0.2,
            steps: int = 2, go: Path | None = None, **optuna_keys: object) -> Search:
    section = copy.deepcopy(pbs)
    section["bash"] = [*section.get("bash", []), *_job_env_lines()]
    return write_search(tmp_path / name, objective=CHECKPOINTING, extra={"pbs": section},
                        model={"model": {"x": 0.0}, "sleep": sleep, "steps": steps, **({"go": str(go)} if go else {})},
                        optuna={"storage": pg_url, "n_trials": n_trials, **optuna_keys})


def _env(pbs_bin: Path) -> dict[str, str]:
    return {"HYPER_OPT_PBS_BIN": str(pbs_bin)}


def _submit(s: Search, pbs_bin: Path) -> list[str]:
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True, env=_env(pbs_bin))
    line = next(x for x in proc.stdout.splitlines() if x.startswith("submitted "))
    return line.split(":", 1)[1].split("(")[0].split()


def _study(s: Search, pg_url: str) -> optuna.Study:
    return optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=pg_url)


def _qstat(pbs_bin: Path, ids: list[str], *flags: str) -> dict[str, dict[str, str]]:
    out = subprocess.run([str(pbs_bin / "qstat"), "-x", "-f", *flags, *ids], capture_output=True,
                         text=True, timeout=60).stdout
    return parse_qstat_full(out)


def _wait_finished(pbs_bin: Path, ids: list[str], timeout: float) -> dict[str, dict[str, str]]:
    """Wait until qstat -x shows every job finished (F); qdel them and fail after ``timeout``."""
    deadline = time.time() + timeout
    jobs: dict[str, dict[str, str]] = {}
    while time.time() < deadline:
        jobs = _qstat(pbs_bin, ids)
        if len(jobs) == len(ids) and all(j.get("job_state") == "F" for j in jobs.values()):
            return jobs
        time.sleep(1)
    subprocess.run([str(pbs_bin / "qdel"), "-W", "force", *ids], capture_output=True)
    raise AssertionError(f"jobs not finished after {timeout} s: "
                         f"{ {i: (j.get('job_state'), j.get('comment')) for i, j in jobs.items()} }")


def _wait_for(what: str, check, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _logs(s: Search) -> str:
    """The jobs' output files, which PBS copies into save_path when a job ends."""
    files = [p for p in s.save_path.iterdir() if p.is_file() and p.suffix not in (".json", ".csv", ".lock")]
    return "".join(p.read_text(errors="replace") for p in sorted(files))


def _ran_this_checkout(log: str) -> None:
    assert f"hyper_opt from {REPO / 'hyper_opt'}" in log, f"the job did not run this checkout's code:\n{log}"


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (TS.COMPLETE, TS.PRUNED)]


# --------------------------------------------------------------------------- real projects' sections


def test_projects_pbs_sections_run_on_pbs_pro_with_one_gpu_per_worker(tmp_path: Path, pbs_cluster: Path,
                                                                        pg_url: str) -> None:
    """The research projects' own sections and echo-opt's torch example, only the queue changed:
    submitted at once, each finishes with exactly n_trials, one GPU per worker, its PBS job id."""
    sections = {**RESEARCH, "echo-opt-torch": CASPER}
    n_trials = {"miles-holodec": 2, "miles-credit": 1, "seals-ml": 4, "mlmicrophysics": 1, "echo-opt-torch": 2}
    searches, ids = {}, {}
    for name, section in sections.items():
        section = copy.deepcopy(section)
        section["batch"]["q"] = QUEUE
        searches[name] = s = _search(tmp_path, pg_url, name, pbs=section, n_trials=n_trials[name])
        ids[name] = _submit(s, pbs_cluster)
        assert all(re.fullmatch(r"\d+\.localhost", i) for i in ids[name]), ids[name]
    assert len(ids["miles-holodec"]) == 2 and len(ids["seals-ml"]) == 1, "only the jobs the budget needs"
    for name, s in searches.items():
        jobs = _wait_finished(pbs_cluster, ids[name], timeout=240)
        study = _study(s, pg_url)
        assert len(_finished(study)) == n_trials[name] == len(study.trials), (name, "exactly n_trials")
        for job_id, attrs in jobs.items():
            assert attrs["Exit_status"] == "0", (name, attrs.get("comment"))
        by_job: dict[str, set[str]] = {}
        for t in study.trials:
            assert t.user_attrs["pbs_job_id"] in ids[name], (name, t.user_attrs)
            assert re.fullmatch(r"[0-3]", t.user_attrs["cuda_visible_devices"]), (name, "one GPU per worker")
            by_job.setdefault(t.user_attrs["pbs_job_id"], set()).add(t.user_attrs["cuda_visible_devices"])
        if name == "seals-ml":  # 4 workers in one job: each its own GPU (a late starter may find no trial left)
            gpu_of = {t.user_attrs["worker_pid"]: t.user_attrs["cuda_visible_devices"] for t in study.trials}
            assert len(set(gpu_of.values())) == len(gpu_of) >= 2 and set(by_job) == {ids[name][0]}, gpu_of
    status = searches["echo-opt-torch"].cli("status", "hyper.yml", check=True, env=_env(pbs_cluster))
    assert "finished 2/2" in status.stdout and "PBS jobs (1):" in status.stdout
    assert "FINISHED (exit 0)" in status.stdout, status.stdout
    log = _logs(searches["echo-opt-torch"])
    _ran_this_checkout(log)
    assert "qstat gave no walltime" not in log and "the walltime ends at" in log, log


@pytest.mark.parametrize("name", ["gdl_storm_mode", "ptype_physical"])
def test_legacy_project_files_run_on_pbs_pro(name: str, tmp_path: Path, pbs_cluster: Path) -> None:
    """Two research projects' own files (tests/fixtures/legacy/: their objective, their SQLite
    study where they kept it, their pbs section with its conda lines) through OpenPBS's qsub with
    only the queue changed; ``-v`` hands the job this checkout (PBS passes no environment).
    Exactly n_trials, one GPU per trial, ``status`` and ``cancel`` on the finished search."""
    import sys

    from .test_legacy_fixtures import FIXTURES, _copy, _env as legacy_env, _expected, assert_finished

    folder = _copy(name, tmp_path)
    hyper_file, model_file = FIXTURES[name]
    env = {**legacy_env(), **_env(pbs_cluster)}
    passed = f"PYTHONPATH={REPO},KERAS_BACKEND={env['KERAS_BACKEND']}"
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", hyper_file, model_file, "--set",
                           f"pbs:batch:q={QUEUE}", "--set", f"pbs:batch:v={passed}"],
                          cwd=folder, env=env, text=True, capture_output=True, timeout=180)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    ids = next(x for x in proc.stdout.splitlines() if x.startswith("submitted ")).split(":", 1)[1].split("(")[0].split()
    jobs = _wait_finished(pbs_cluster, ids, timeout=420)
    assert {j: a["Exit_status"] for j, a in jobs.items()} == dict.fromkeys(ids, "0"), jobs
    assert_finished(folder, name)
    _, db, _ = _expected(folder, name)
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage=url)[0].study_name, storage=url)
    assert all(re.fullmatch(r"[0-3]", t.user_attrs["cuda_visible_devices"]) for t in study.trials)
    assert {t.user_attrs["pbs_job_id"] for t in study.trials} <= set(ids)
    run = {"cwd": folder, "env": env, "text": True, "capture_output": True, "timeout": 180}
    status = subprocess.run([sys.executable, "-m", "hyper_opt", "status", hyper_file], **run)  # type: ignore[call-overload]
    assert f"PBS jobs ({len(ids)}):" in status.stdout and "FINISHED (exit 0)" in status.stdout, status.stdout
    cancel = subprocess.run([sys.executable, "-m", "hyper_opt", "cancel", hyper_file], **run)  # type: ignore[call-overload]
    assert cancel.returncode == 0 and "no active PBS jobs to cancel" in cancel.stdout, cancel.stdout + cancel.stderr


# --------------------------------------------------------------------------- which GPUs a job got


def test_gpus_without_cuda_visible_devices_come_from_ngpus_with_a_warning(tmp_path: Path, pbs_cluster: Path,
                                                                          pg_url: str) -> None:
    """No cgroup hook here: PBS sets no CUDA_VISIBLE_DEVICES. hyper_opt gives the workers the
    first ngpus GPUs of the node and says so; where the job's environment sets it (the hook, or
    an export in pbs:bash), that is used and nothing is said."""
    pbs = {"jobs": 1, "gpus_per_node": 2,
           "batch": {"l": ["select=1:ncpus=2:ngpus=2", "walltime=00:05:00"], "q": QUEUE, "N": "hoptest-gpus"}}
    unset = _search(tmp_path, pg_url, "unset", pbs=pbs, n_trials=2, sleep=1.0, steps=2)
    chosen = copy.deepcopy(pbs)
    chosen["bash"] = ["export CUDA_VISIBLE_DEVICES=2,3"]
    given = _search(tmp_path, pg_url, "set", pbs=chosen, n_trials=2, sleep=1.0, steps=2)
    jobs = {"unset": _submit(unset, pbs_cluster), "set": _submit(given, pbs_cluster)}
    for name, s, gpus in (("unset", unset, {"0", "1"}), ("set", given, {"2", "3"})):
        _wait_finished(pbs_cluster, jobs[name], timeout=180)
        study = _study(s, pg_url)
        assert len(_finished(study)) == 2
        assert {t.user_attrs["cuda_visible_devices"] for t in study.trials} == gpus, name
        log = _logs(s)
        _ran_this_checkout(log)
        warned = "PBS gave this job 2 GPU(s) ((localhost:ncpus=2:ngpus=2)) but set no CUDA_VISIBLE_DEVICES" in log
        assert warned == (name == "unset"), log


# --------------------------------------------------------------------------- status and cancel


def test_status_and_cancel_of_a_job_array(tmp_path: Path, pbs_cluster: Path, pg_url: str) -> None:
    pbs = {"jobs": 2, "array": True, "gpus_per_node": 1,
           "batch": {"l": ["select=1:ncpus=1:ngpus=1", "walltime=00:10:00"], "q": QUEUE, "N": "hoptest-array"}}
    s = _search(tmp_path, pg_url, "array", pbs=pbs, n_trials=20, sleep=1.0, steps=60, max_retry=1)
    ids = _submit(s, pbs_cluster)
    assert len(ids) == 1 and re.fullmatch(r"\d+\[\]\.localhost", ids[0]), ids
    _wait_for("both subjobs' trials to run",
              lambda: sum(t.state == TS.RUNNING for t in _study(s, pg_url).trials) == 2)
    running = [t for t in _study(s, pg_url).trials if t.state == TS.RUNNING]
    key = ids[0].split("[")[0]
    assert {t.user_attrs["pbs_job_id"] for t in running} == {f"{key}[0].localhost", f"{key}[1].localhost"}
    status = s.cli("status", "hyper.yml", check=True, env=_env(pbs_cluster))
    assert "PBS jobs (1):" in status.stdout and f"{ids[0]}  RUNNING (array)" in status.stdout, status.stdout
    cancel = s.cli("cancel", "hyper.yml", check=True, env=_env(pbs_cluster))
    assert f"cancelled 1 PBS job(s): {ids[0]}" in cancel.stdout, cancel.stdout
    jobs = _wait_finished(pbs_cluster, ids, timeout=60)
    subjobs = _qstat(pbs_cluster, ids, "-t")
    assert {j: a["job_state"] for j, a in subjobs.items() if j != ids[0]} == \
        {f"{key}[0].localhost": "F", f"{key}[1].localhost": "F"}, subjobs
    assert jobs[ids[0]]["job_state"] == "F"
    study = _study(s, pg_url)
    assert not [t for t in study.trials if t.state == TS.RUNNING], "no trial left RUNNING"
    waiting = {t.params["x"] for t in study.trials if t.state == TS.WAITING}
    assert {t.params["x"] for t in running} <= waiting, "the cancelled trials are re-queued"
    status = s.cli("status", "hyper.yml", check=True, env=_env(pbs_cluster))
    assert f"{ids[0]}  FINISHED" in status.stdout, status.stdout


# --------------------------------------------------------------------------- walltime


def test_walltime_shorter_than_a_trial_ends_the_job_and_requeues_the_trial(tmp_path: Path, pbs_cluster: Path,
                                                                           pg_url: str) -> None:
    """A 60-s walltime, an 80-s trial: PBS sends SIGTERM at the walltime; the trial is recorded
    FAIL and re-queued with its checkpoint, nothing is left RUNNING. The clock the job read from
    qstat -f is the real one (stime + walltime). (The job starts its worker 10-20 s after stime on
    a busy machine, more under pytest-xdist: a shorter walltime would leave no room for the first
    trial.)

    Jobs run as root here, and MoM does not track root's processes: after the SIGTERM it finds
    none left and ends the job with SIGKILL at once, not kill_delay later (docs/pbs.md). The worker
    recorded and re-queued its trial in that moment in every run seen; where it does not,
    ``status`` fails and re-queues the trial of a job that ended, which this test runs too."""
    pbs = {"jobs": 1, "batch": {"l": ["select=1:ncpus=1", "walltime=00:01:00"], "q": QUEUE,
                                "N": "hoptest-walltime"}}
    s = _search(tmp_path, pg_url, "walltime", pbs=pbs, n_trials=3, sleep=2.0, steps=40, max_retry=2)
    ids = _submit(s, pbs_cluster)
    job = _wait_finished(pbs_cluster, ids, timeout=150)[ids[0]]
    log = _logs(s)
    _ran_this_checkout(log)
    assert "SIGTERM received" in log, log
    match = re.search(r"the walltime ends at (\d+)", log)
    assert match, log
    start = time.mktime(time.strptime(" ".join(job["stime"].split()), "%a %b %d %H:%M:%S %Y"))
    assert abs(int(match.group(1)) - (start + 60)) <= 1, (match.group(1), job["stime"])
    assert walltime_seconds(job["resources_used.walltime"]) >= 60, job["resources_used.walltime"]
    assert job["comment"].endswith("and exceeded resource walltime") and job["Exit_status"] == "-29", job
    status = s.cli("status", "hyper.yml", check=True, env=_env(pbs_cluster))
    assert f"{ids[0]}  FINISHED (exit -29)" in status.stdout, status.stdout
    study = _study(s, pg_url)
    assert not [t for t in study.trials if t.state == TS.RUNNING], "nothing left RUNNING"
    failed = [t for t in study.trials if t.state == TS.FAIL]
    retry = [t for t in study.trials if t.state == TS.WAITING]
    assert len(failed) == 1 and len(retry) == 1, [(t.number, t.state) for t in study.trials]
    assert retry[0].params == failed[0].params
    with warnings.catch_warnings():  # retried_trial_number is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(retry[0]) == failed[0].number
    checkpoint = s.save_path / "checkpoints" / f"trial_{failed[0].number}" / "checkpoint.pkl"
    assert checkpoint.is_file(), "the re-queued trial resumes from this checkpoint"


# --------------------------------------------------------------------------- rerun


def test_a_rerun_job_continues_the_study(tmp_path: Path, pbs_cluster: Path, pg_url: str) -> None:
    """``-r y`` and ``qrerun`` (the nearest thing to a node failure on one machine): the job is
    killed and queued again; its running trial is re-queued and the rerun resumes it from its
    checkpoint, and the study ends with exactly n_trials."""
    pbs = {"jobs": 1, "batch": {"l": ["select=1:ncpus=1", "walltime=00:05:00"], "q": QUEUE, "r": "y",
                                "N": "hoptest-rerun"}}
    # A trial from scratch holds after its second step (checkpoint 2) until `go`: the rerun lands
    # in it however long qrerun takes on a loaded machine (the trial could otherwise end first,
    # and the rerun hit the next one before its checkpoint).
    go = tmp_path / "go"
    s = _search(tmp_path, pg_url, "rerun", pbs=pbs, n_trials=2, sleep=1.0, steps=6, max_retry=2, go=go)
    ids = _submit(s, pbs_cluster)
    assert _qstat(pbs_cluster, ids)[ids[0]]["Rerunable"] == "True"

    def checkpointed() -> bool:
        return any(t.state == TS.RUNNING and len(t.intermediate_values) >= 2 for t in _study(s, pg_url).trials)

    _wait_for("the first trial to pass two steps", checkpointed)
    subprocess.run([str(pbs_cluster / "qrerun"), ids[0]], check=True, capture_output=True, timeout=60)
    _wait_for("the rerun to fail the held trial", lambda: any(t.state == TS.FAIL for t in _study(s, pg_url).trials))
    go.touch()
    job = _wait_finished(pbs_cluster, ids, timeout=180)[ids[0]]
    assert job["run_count"] == "2" and job["Exit_status"] == "0", job
    study = _study(s, pg_url)
    assert len(_finished(study)) == 2, "exactly n_trials"
    [failed] = [t for t in study.trials if t.state == TS.FAIL]
    [resumed] = [t for t in study.trials if t.user_attrs.get("retry_of") == failed.number]
    assert resumed.state == TS.COMPLETE and resumed.user_attrs["resumed_from"] >= 2, resumed.user_attrs
    assert resumed.user_attrs["pbs_job_id"] == failed.user_attrs["pbs_job_id"] == ids[0]


# --------------------------------------------------------------------------- refusal


def test_an_impossible_select_is_refused_by_qsub_with_nothing_submitted(tmp_path: Path, pbs_cluster: Path,
                                                                         pg_url: str) -> None:
    pbs = {"jobs": 2, "gpus_per_node": 1,
           "batch": {"l": ["select=1:ncpus=1:ngpus=64", "walltime=00:05:00"], "q": QUEUE, "N": "hoptest-refused"}}
    s = _search(tmp_path, pg_url, "refused", pbs=pbs, n_trials=4)
    proc = s.cli("optimize", "hyper.yml", "model.yml", env=_env(pbs_cluster))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "qsub refused the job (exit" in proc.stderr and "qsub: Job violates queue and/or server resource limits" in proc.stderr
    assert "already submitted" not in proc.stderr
    assert not (s.save_path / "jobs.json").exists(), "nothing was submitted"
    queued = subprocess.run([str(pbs_cluster / "qselect"), "-x", "-N", "hoptest-refused"],
                            capture_output=True, text=True).stdout
    assert queued.strip() == ""


# --------------------------------------------------------------------------- both schedulers


def test_both_schedulers_on_one_machine(tmp_path: Path, pbs_cluster: Path, slurm_cluster: str) -> None:
    """sbatch and PBS Pro's qsub both reachable: a file with both sections asks for --scheduler;
    with Slurm's torque wrapper as the only qsub, it is a Slurm cluster."""
    s = write_search(tmp_path / "both", extra={"slurm": {"batch": {"t": "10"}},
                                               "pbs": {"batch": {"l": "select=1:ncpus=1", "q": QUEUE}}})
    real_first = {"PATH": f"{pbs_cluster}:{os.environ['PATH']}"}
    for env in (_env(pbs_cluster), real_first):
        proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", env=env)
        assert proc.returncode == 2 and "--scheduler slurm or --scheduler pbs" in proc.stderr, proc.stderr
        proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", "--scheduler", "pbs", check=True, env=env)
        assert "PBS job(s) with qsub" in proc.stdout
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True)  # the wrapper only
    assert "Slurm job(s)" in proc.stdout
