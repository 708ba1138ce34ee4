"""``hyper-opt cancel HYPER.yml``: cancel the study's Slurm or PBS jobs; their running trials are retried.

``scancel`` (``qdel`` for PBS jobs) ends the jobs; the trials those jobs were running are then marked FAIL and, within
``optuna:max_retry``, re-queued with the same parameters, so that a later ``optimize --reload``
runs them again instead of finding them RUNNING forever.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import time
from collections.abc import Callable

from hyper_opt.cli.common import add_common_arguments, load_from_args
from hyper_opt.exceptions import SubmissionError

logger = logging.getLogger(__name__)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="none")


def run(args: argparse.Namespace) -> int:
    from hyper_opt.launch.records import recorded_jobs
    from hyper_opt.launch.slurm import job_states
    from hyper_opt.study import open_study

    config, _ = load_from_args(args)
    jobs = [j["job_id"] for j in recorded_jobs(config, "slurm")]
    pbs_jobs = [j["job_id"] for j in recorded_jobs(config, "pbs")]
    if not jobs and not pbs_jobs:
        return cancel_local(config)
    if pbs_jobs:
        from hyper_opt.launch.pbs import cancel_jobs

        cancelled = cancel_jobs(pbs_jobs)
        print(f"cancelled {len(cancelled)} PBS job(s): {' '.join(cancelled)}" if cancelled
              else "no active PBS jobs to cancel")
    if jobs:
        if shutil.which("scancel") is None:
            raise SubmissionError("scancel is not on PATH: run this on a Slurm login node")
        states = job_states(jobs)
        active = [j for j, s in states.items() if s in ACTIVE or s == "?"]
        if active:
            proc = subprocess.run(["scancel", *active], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise SubmissionError(f"scancel {' '.join(active)} failed: {proc.stderr.strip()}")
            print(f"cancelled {len(active)} job(s): {' '.join(active)}")
            _wait_gone(active)
        else:
            print("no active jobs to cancel")
    opened = open_study(config, create=False)
    try:
        retried = fail_trials_of_jobs(opened, jobs + pbs_jobs, max_retry=config.optuna.max_retry)
        retried += fail_trials_of_ended_jobs(opened, max_retry=config.optuna.max_retry)  # jobs of this study not recorded here
    finally:
        opened.lock.close()
    print(f"{len(retried)} running trial(s) marked FAIL and re-queued: {retried}" if retried
          else "no trial was left RUNNING")
    return 0


def cancel_local(config) -> int:  # type: ignore[no-untyped-def]
    """A local search (no jobs recorded): SIGTERM to the ``optimize`` process recorded in
    ``save_path/local_workers.json``, which stops its workers as Ctrl-C does (their trials are
    recorded and re-queued); wait for it to end. 0 once nothing runs; 1 with what to do when it
    cannot be stopped from here (another host) or trials still run."""
    import json
    import os
    import signal
    import socket

    from hyper_opt.launch.local import LOCAL_WORKERS_FILE, STOP_GRACE_S

    path = config.save_path / LOCAL_WORKERS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if record is None:
        return _still_running(config, "no Slurm or PBS jobs and no local search recorded for this study")
    pid, host = int(record["pid"]), str(record["host"])
    if host != socket.gethostname():
        print(f"the local search runs on {host} (optimize pid {pid}): run 'hyper-opt cancel' there, or press "
              "Ctrl-C in its terminal")
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return _still_running(config, f"the local search recorded in {path} (pid {pid}) has ended")
    print(f"stopping the local search (optimize pid {pid}, workers {record.get('workers')}); "
          "their running trials are recorded and re-queued")
    deadline = time.monotonic() + STOP_GRACE_S + 30
    while time.monotonic() < deadline and path.exists():
        time.sleep(0.5)
    if path.exists():
        print(f"optimize pid {pid} did not stop in {STOP_GRACE_S + 30:.0f} s; kill it with: kill {pid}")
        return 1
    print("stopped; continue the search with 'hyper-opt optimize ... --reload'")
    return 0


def _still_running(config, said: str) -> int:  # type: ignore[no-untyped-def]
    """Nothing to cancel from here: 0 when no trial runs, else 1 naming where they run."""
    import optuna

    from hyper_opt.study import read_study

    try:
        opened = read_study(config)
    except Exception:  # noqa: BLE001 - no study, nothing runs
        print(said)
        return 0
    running = opened.storage.get_all_trials(opened.study_id, deepcopy=False,
                                            states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        print(f"{said}; no trial is running")
        return 0
    where = sorted({f"{t.user_attrs.get('hostname', '?')} pid {t.user_attrs.get('worker_pid', '?')}" for t in running})
    print(f"{said}, but {len(running)} trial(s) are RUNNING ({', '.join(where)}): stop those processes "
          "(kill -TERM PID on that host) or press Ctrl-C where optimize runs")
    return 1


def _wait_gone(ids: list[str], timeout: float = 60.0) -> None:
    from hyper_opt.launch.slurm import job_states

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s in ACTIVE for s in job_states(ids).values()):
            return
        time.sleep(1.0)


ENDED_SLURM = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
               "BOOT_FAIL", "DEADLINE"}
ENDED_PBS = {"F", "X"}  # finished job, finished array subjob (qstat -x)


def fail_trials_of_ended_jobs(opened, *, max_retry: int) -> list[int]:  # type: ignore[no-untyped-def]
    """RUNNING trials whose Slurm or PBS job has ended: FAIL them and re-queue copies.

    A killed or preempted job cannot record its trial's end, and without a heartbeat (the journal
    storage, or ``heartbeat_interval: null``) nothing else ever would: ``optimize --reload``,
    ``status`` and ``cancel`` ask the scheduler about the jobs of RUNNING trials and fail the
    trials of jobs that ended. A job the scheduler does not answer for is left alone.
    """
    import optuna

    running = opened.storage.get_all_trials(opened.study_id, deepcopy=False,
                                            states=(optuna.trial.TrialState.RUNNING,))
    slurm_ids = sorted({str(t.user_attrs["slurm_job_id"]) for t in running if t.user_attrs.get("slurm_job_id")})
    pbs_ids = sorted({str(t.user_attrs["pbs_job_id"]) for t in running if t.user_attrs.get("pbs_job_id")})
    ended: dict[str, str] = {}
    if slurm_ids and shutil.which("sacct"):
        from hyper_opt.launch.slurm import job_states

        ended.update({j: s for j, s in job_states(slurm_ids).items() if s in ENDED_SLURM})
    from hyper_opt.launch.pbs_env import command

    if pbs_ids and command("qstat"):
        from hyper_opt.launch.pbs import job_states as pbs_job_states

        ended.update({j: s for j, s in pbs_job_states(pbs_ids).items() if s in ENDED_PBS})
    if not ended:
        return []
    return fail_trials_of_jobs(opened, list(ended), max_retry=max_retry,
                               reason=lambda job: f"job {job} ended ({ended.get(job, '?')}) while the trial ran")


def fail_trials_of_jobs(opened, job_ids: list[str], *, max_retry: int,  # type: ignore[no-untyped-def]
                        reason: Callable[[str], str] | None = None) -> list[int]:
    """Mark RUNNING trials of these jobs FAIL and re-queue copies (within max_retry)."""
    from hyper_opt.study import fail_running_trials

    wanted = {str(j) for j in job_ids} | {_job_key(str(j)) for j in job_ids}

    def why(trial) -> str | None:  # type: ignore[no-untyped-def]
        job = str(trial.user_attrs.get("slurm_job_id", "") or trial.user_attrs.get("pbs_job_id", ""))
        if not job or (job not in wanted and _job_key(job) not in wanted):
            return None
        return reason(job) if reason else f"job {job} was cancelled"

    return fail_running_trials(opened, why, max_retry=max_retry)


def _job_key(job: str) -> str:
    """A job id without array index or server (``77_3`` -> ``77``, ``1234[3].srv`` -> ``1234``)."""
    return job.split(".")[0].split("[")[0].split("_")[0]
