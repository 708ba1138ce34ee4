"""Submit a study's workers as Slurm jobs through submitit, and watch or cancel them.

The sbatch parameters are a pure function of the ``slurm`` section (:func:`sbatch_parameters`):
every key of ``slurm.batch`` becomes an sbatch option (short forms such as ``t``/``J``/``n`` are
spelled out), values are checked (time format, memory, no newlines) before anything is
submitted, and submitit quotes them. ``slurm.bash`` (then ``slurm.kernel``) lines run before the
worker. Each job runs :class:`JobMain`: ``gpus_per_node x tasks_per_worker`` worker processes
(``python -m hyper_opt.run``), each with ``CUDA_VISIBLE_DEVICES`` set to exactly one of the GPUs
Slurm gave the job (or CPU workers when it gave none). Jobs stop by themselves when the study is
full or their wall time would not fit another trial.

The ids of submitted jobs are appended to ``<save_path>/jobs.json`` (:mod:`hyper_opt.launch.records`,
shared with PBS) for ``status`` and ``cancel``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt import secrets
from hyper_opt.schema import HyperConfig, SchedulerSpec
from hyper_opt.exceptions import ConfigError, SubmissionError
from hyper_opt.launch.slurm_env import time_limit_seconds  # noqa: F401 - re-exported
from hyper_opt.launch.records import record_jobs, recorded_jobs
from hyper_opt.distributed.launch import ONE_NODE_ENV
from hyper_opt.launch.job import (PYTHON_VAR, interpreter, jobs_workers, plan_workers,  # noqa: F401 - re-exported
                                  start_workers, trial_plan, visible_gpus)

logger = logging.getLogger(__name__)

SHORT_OPTIONS = {
    "A": "account", "C": "constraint", "D": "chdir", "G": "gpus", "J": "job-name", "L": "licenses",
    "M": "clusters", "N": "nodes", "c": "cpus-per-task", "d": "dependency", "e": "error",
    "n": "ntasks", "o": "output", "p": "partition", "q": "qos", "t": "time", "w": "nodelist",
    "x": "exclude",
}
# Options hyper_opt sets itself: the job's script, signal and log handling depend on them.
RESERVED = {"signal", "array", "open-mode", "wrap", "parsable", "export"}
DEFAULT_TIME = "12:00:00"
_TIME = re.compile(r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.I)
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def sbatch_parameters(config: HyperConfig) -> dict[str, Any]:
    """The sbatch options of every job (long names, dashes), validated; a pure function."""
    spec = _spec(config)
    problems: list[str] = []
    params: dict[str, Any] = {}
    for key, value in spec.batch.items():
        path = f"slurm:batch:{key}"
        key = str(key)
        if len(key) == 1:
            if key not in SHORT_OPTIONS:
                problems.append(f"{path}: unknown short sbatch option -{key} (known: "
                                f"{', '.join(f'{k}={v}' for k, v in sorted(SHORT_OPTIONS.items()))}); "
                                "use the long name instead")
                continue
            name = SHORT_OPTIONS[key]
        elif not _KEY.match(key):
            problems.append(f"{path}: {key!r} is not an sbatch option name")
            continue
        else:
            name = key.replace("_", "-")
        if name in RESERVED:
            problems.append(f"{path}: --{name} is set by hyper_opt itself and cannot be given")
            continue
        if name in params:
            problems.append(f"{path}: --{name} is given twice (as a short and a long option)")
            continue
        if isinstance(value, bool):
            if value:
                params[name] = True
            continue
        text = str(value)
        if "\n" in text or "\r" in text or "\0" in text:
            problems.append(f"{path}: must not contain a newline, got {text!r}")
            continue
        if name == "time" and not (_TIME.match(text) or text.upper() in ("UNLIMITED", "INFINITE")):
            problems.append(f"{path}: {text!r} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, "
                            "D-HH:MM or D-HH:MM:SS)")
            continue
        if name in ("mem", "mem-per-cpu", "mem-per-gpu") and not _MEM.match(text):
            problems.append(f"{path}: {text!r} is not a memory size (e.g. 16G, 4000M)")
            continue
        if name in ("ntasks", "nodes", "cpus-per-task") and not re.match(r"^\d+(-\d+)?$", text):
            problems.append(f"{path}: {text!r} is not a count")
            continue
        if name in ("output", "error") and not text.startswith("/"):
            text = str((config.base_dir or config.hyper_path.parent) / text)
        params[name] = text
    if problems:
        raise ConfigError(problems, source=str(config.hyper_path))
    params.setdefault("time", DEFAULT_TIME)
    params.setdefault("job-name", f"hyper_opt-{config.optuna.study_name}")
    if spec.gpus_per_node and not any(k in params for k in ("gres", "gpus", "gpus-per-node", "gpus-per-task")):
        params["gres"] = f"gpu:{spec.gpus_per_node}"
    if spec.nodes_per_trial > 1:  # load_config refused a nodes value other than nodes_per_trial
        params.setdefault("nodes", "1" if os.environ.get(ONE_NODE_ENV) else str(spec.nodes_per_trial))
    return params


def _spec(config: HyperConfig) -> SchedulerSpec:
    if config.slurm is None:
        raise ConfigError(["slurm: no slurm section in the hyperparameter file"], source=str(config.hyper_path))
    return config.slurm


SIGNAL_SLACK_S = 60  # Slurm may send the warning signal up to a minute early


def signal_delay(config: HyperConfig) -> int:
    """Seconds before the time limit at which Slurm warns the job (at most a third of the limit)."""
    spec = _spec(config)
    limit = time_limit_seconds(str(sbatch_parameters(config)["time"]))
    return spec.signal_delay_s if limit is None else min(spec.signal_delay_s, max(limit // 3, 1))


def stop_margin_s(config: HyperConfig) -> int:
    """Workers start no trial that would not end before Slurm's warning signal can arrive."""
    return signal_delay(config) + SIGNAL_SLACK_S


def setup_lines(spec: SchedulerSpec) -> list[str]:
    """Shell lines run before the worker: ``slurm.bash``, then ``slurm.kernel``."""
    return [*spec.bash, *([spec.kernel] if spec.kernel else [])]




def make_executor(config: HyperConfig, folder: Path | None = None) -> Any:
    """A submitit SlurmExecutor carrying the job parameters (no submission yet)."""
    import submitit

    spec = _spec(config)
    params = sbatch_parameters(config)
    folder = folder or spec.folder or (config.save_path / "slurm")
    # The job process replaces the batch shell (exec), so that Slurm's warning signal, sent to the
    # batch shell ("B:"), reaches submitit's handler, which checkpoints and requeues the job.
    choose, python = interpreter(spec)
    try:
        executor = submitit.SlurmExecutor(folder=str(folder), python=f"exec {python}", max_num_timeout=30)
    except RuntimeError as err:  # submitit looks for srun: not a Slurm machine
        raise SubmissionError(f"cannot prepare Slurm jobs here ({err}): run this on a Slurm login node, "
                              "or pass --local to run the search on this machine") from None
    delay = signal_delay(config)
    executor.update_parameters(
        setup=[*setup_lines(spec), *choose],
        use_srun=False,  # one job process; it starts the workers itself, one per GPU slot
        stderr_to_stdout=False,
        additional_parameters={**{k.replace("-", "_"): v for k, v in params.items()},
                               "signal": f"B:USR2@{delay}"},
    )
    return executor


def sbatch_script(config: HyperConfig) -> str:
    """The job script exactly as submitit will write it (for --dry-run and the golden test)."""
    return _submitit_script_text(make_executor(config))


def _submitit_script_text(executor: Any) -> str:
    """The one call into submitit's private API (``_make_submission_file_text``, submitit 1.5):
    submitit has no public way to render the sbatch file without submitting. Fenced here, checked
    by the golden test (tests/golden/sbatch_basic.sh) and bounded by ``submitit>=1.5,<2`` in setup.cfg."""
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


class JobMain:
    """What each Slurm job runs: its worker processes, one per GPU slot, until they stop."""

    def __init__(self, hyper_path: str, model_path: str | None, overrides: Sequence[str], *,
                 job_index: int, gpus_per_node: int, tasks_per_worker: int, stop_margin_s: int = 0,
                 gpus_per_trial: int = 1, nodes_per_trial: int = 1) -> None:
        self.hyper_path = hyper_path
        self.model_path = model_path
        self.overrides = list(overrides)
        self.job_index = job_index
        self.gpus_per_node = gpus_per_node
        self.tasks_per_worker = tasks_per_worker
        self.stop_margin_s = stop_margin_s  # stop starting trials this long before the time limit
        self.gpus_per_trial = gpus_per_trial
        self.nodes_per_trial = nodes_per_trial
        self._procs: list[subprocess.Popen[bytes]] = []

    def plan(self, env: Mapping[str, str]) -> list[str]:
        """CUDA_VISIBLE_DEVICES for each worker of this job ("" for a CPU worker)."""
        return plan_workers(env, gpus_per_node=self.gpus_per_node, tasks_per_worker=self.tasks_per_worker,
                            gpus_per_trial=self._size()[0])

    def _size(self) -> tuple[int, int]:
        """gpus_per_trial and nodes_per_trial (a job pickled before they existed has neither)."""
        return getattr(self, "gpus_per_trial", 1), getattr(self, "nodes_per_trial", 1)

    def __call__(self) -> dict[str, Any]:
        plan = self.plan(os.environ)
        n = len(plan)
        from hyper_opt.launch.slurm_env import job_deadline

        end = job_deadline()
        print(f"hyper_opt job {os.environ.get('SLURM_JOB_ID')}: {n} worker(s), GPUs {plan}", flush=True)
        self._procs.extend(start_workers(plan, hyper_path=self.hyper_path, model_path=self.model_path,
                                         overrides=self.overrides, job_index=self.job_index,
                                         deadline=end - self.stop_margin_s if end else None,
                                         gpus_per_trial=self._size()[0], nodes_per_trial=self._size()[1]))
        codes = [p.wait() for p in self._procs]
        print(f"hyper_opt job {os.environ.get('SLURM_JOB_ID')}: workers exited with {codes}", flush=True)
        if codes and all(code != 0 for code in codes):  # sacct then says FAILED, not COMPLETED
            raise SubmissionError(f"every worker of this job failed (exit codes {codes}); their errors are "
                                  "in this job's log")
        return {"exit_codes": codes, "workers": n}

    def checkpoint(self) -> Any:
        """Called by submitit on Slurm's warning signal before a time limit or preemption:
        the workers stop at a safe point (their trials are recorded and re-queued) and the job is
        requeued to continue the study."""
        import submitit

        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        for proc in self._procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if not self._study_needs_more():
            print("hyper_opt job: the study is complete; not requeueing", flush=True)
            return None
        fresh = JobMain(self.hyper_path, self.model_path, self.overrides, job_index=self.job_index,
                        gpus_per_node=self.gpus_per_node, tasks_per_worker=self.tasks_per_worker,
                        stop_margin_s=self.stop_margin_s, gpus_per_trial=self._size()[0],
                        nodes_per_trial=self._size()[1])
        print("hyper_opt job: requeueing to continue the study", flush=True)
        return submitit.helpers.DelayedSubmission(fresh)

    def _study_needs_more(self) -> bool:
        from hyper_opt.config import load_config
        from hyper_opt.study import counts, n_finished, read_study

        try:
            overrides = secrets.take_from_env(self.overrides, keep=True)
            config, _ = load_config(self.hyper_path, self.model_path, overrides=overrides)
            opened = read_study(config)
            try:
                return n_finished(counts(opened)) < config.optuna.n_trials
            finally:
                opened.lock.close()
        except Exception as err:  # when in doubt, requeue: a surplus job stops at once
            print(f"hyper_opt job: cannot read the study ({err}); requeueing", flush=True)
            return True


def _jobs_needed(config: HyperConfig, remaining: int) -> int:
    spec = _spec(config)
    per_job = spec.workers_per_job
    return max(1, min(spec.jobs, -(-remaining // per_job)))


def submit(config: HyperConfig, opened: Any, *, remaining: int | None = None) -> list[str]:
    """Submit the jobs (only as many as the remaining budget needs); record and print their ids."""
    import submitit

    spec = _spec(config)
    if shutil.which("sbatch") is None:
        raise SubmissionError("sbatch is not on PATH: run on a Slurm login node, or pass --local")
    from hyper_opt.storage import cluster_storage_warning

    warning = cluster_storage_warning(config.optuna.storage)
    if warning:
        logger.warning(warning)
    executor = make_executor(config)
    n_jobs = _jobs_needed(config, remaining if remaining is not None else config.optuna.n_trials)
    # A password in an override must not be pickled under save_path/slurm: sbatch passes it to
    # the jobs in their environment (see hyper_opt.secrets).
    overrides, secret_env = secrets.for_worker(config.overrides)
    mains = [JobMain(str(config.hyper_path), str(config.model_path) if config.model_path else None,
                     overrides, job_index=i, gpus_per_node=spec.gpus_per_node,
                     tasks_per_worker=spec.tasks_per_worker, stop_margin_s=stop_margin_s(config),
                     gpus_per_trial=spec.gpus_per_trial, nodes_per_trial=spec.nodes_per_trial)
             for i in range(n_jobs)]
    try:
        with secrets.exported(secret_env):
            if spec.array:
                with executor.batch():
                    jobs = [executor.submit(m) for m in mains]
            else:
                jobs = [executor.submit(m) for m in mains]
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as err:
        raise SubmissionError(f"sbatch refused the job: {str(err).strip()}") from err
    ids = [str(j.job_id) for j in jobs]
    record_jobs(config, ids, Path(executor.folder), scheduler="slurm")
    print(f"submitted {len(ids)} Slurm job(s): {' '.join(ids)} ({spec.workers_per_job} worker(s) each)")
    print(f"job logs and submitit files: {executor.folder}")
    print(f"follow it with: hyper-opt status {config.hyper_path}")
    return ids


def job_states(ids: Sequence[str]) -> dict[str, str]:
    """State of each job (sacct, falling back to squeue); '?' when unknown."""
    if not ids:
        return {}
    states: dict[str, str] = {}
    if shutil.which("sacct"):
        proc = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                              capture_output=True, text=True, timeout=60)
        for line in proc.stdout.splitlines():
            job, _, state = line.partition("|")
            states[job.strip()] = state.split()[0] if state.strip() else "?"
    missing = [i for i in ids if i not in states]
    if missing and shutil.which("squeue"):
        proc = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(missing)],
                              capture_output=True, text=True, timeout=60)
        for line in proc.stdout.splitlines():
            job, _, state = line.partition("|")
            states[job.strip()] = state.strip()
    return {i: states.get(i, "?") for i in ids}


def job_state_lines(config: HyperConfig) -> list[str]:
    jobs = recorded_jobs(config, "slurm")
    if not jobs:
        return ["no Slurm jobs recorded for this study"]
    states = job_states([j["job_id"] for j in jobs])
    lines = [f"Slurm jobs ({len(jobs)}):"]
    lines += [f"  {j['job_id']:>10}  {states.get(j['job_id'], '?'):<12} submitted {j['submitted']}" for j in jobs]
    return lines


def requested_gpus(params: Mapping[str, Any]) -> int | None:
    """GPUs per job asked for through gres/gpus options (None when none are)."""
    for key in ("gres", "gpus", "gpus-per-node"):
        text = str(params.get(key, ""))
        for item in text.split(","):
            parts = item.strip().split(":")
            if key == "gres" and parts[0] != "gpu":
                continue
            if parts and parts[-1].isdigit():
                return int(parts[-1])
    return None


def worker_label(gpus_per_node: int, tasks_per_worker: int, gpus: int | None) -> str:
    """How a job's workers use GPUs, for --dry-run (one worker per GPU the job is given)."""
    if gpus_per_node:
        return f"{gpus_per_node} GPU slot(s) x {tasks_per_worker} task(s)"
    if gpus:
        return f"GPU workers: one per GPU the job gets ({gpus}) x {tasks_per_worker} task(s)"
    return "CPU workers"


def dry_run(config: HyperConfig) -> None:
    """Print the plan and the job script exactly as it would be submitted; submit nothing."""
    spec = _spec(config)
    n_jobs = _jobs_needed(config, config.optuna.n_trials)
    gpus = requested_gpus(sbatch_parameters(config))
    slots = worker_label(spec.gpus_per_node, spec.tasks_per_worker, gpus)
    workers = jobs_workers(spec, gpus)
    print(f"launch     {n_jobs} Slurm job(s){' as one array' if spec.array else ''}, "
          f"{workers} worker(s) each ({slots}); jobs folder {spec.folder}")
    print(f"trials     {trial_plan(spec, workers)}")
    print("job script:")
    print(sbatch_script(config))
