"""Submit a study's workers as Slurm jobs through submitit, and watch or cancel them.

The sbatch parameters are a pure function of the ``slurm`` section (:func:`sbatch_parameters`):
every key of ``slurm.batch`` becomes an sbatch option (short forms such as ``t``/``J``/``n`` are
spelled out), values are checked (time format, memory, no newlines) before anything is
submitted, and submitit quotes them. ``slurm.bash`` (then ``slurm.kernel``) lines run before the
worker. Each job runs :class:`JobMain`: ``gpus_per_node x tasks_per_worker`` worker processes
(``python -m hyper_opt.run``), each with ``CUDA_VISIBLE_DEVICES`` set to exactly one of the GPUs
Slurm gave the job (or CPU workers when it gave none). Jobs stop by themselves when the study is
full or their wall time would not fit another trial.

The ids of submitted jobs are appended to ``<save_path>/slurm_jobs.json`` for ``status`` and
``cancel``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt import secrets
from hyper_opt.config import HyperConfig, SchedulerSpec
from hyper_opt.exceptions import ConfigError, SubmissionError
from hyper_opt.results import atomic_write_text

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
JOBS_FILE = "slurm_jobs.json"


def time_limit_seconds(text: str) -> int | None:
    """sbatch's ``--time`` as seconds (None for UNLIMITED/INFINITE)."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = [int(p) for p in rest.split(":")]
    if "-" in text:  # days-hours[:minutes[:seconds]]
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:  # minutes
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:  # minutes:seconds
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


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


PYTHON_VAR = "HYPER_OPT_PYTHON"


def interpreter(spec: SchedulerSpec, *, fallback: str | None = None) -> tuple[list[str], str]:
    """The shell lines that choose the job's Python, and how to name it in the job's command.

    ``python`` in the section names it outright. Otherwise, when ``bash``/``kernel`` lines are
    given they set up the environment (``conda activate env``, ``module load``), as they did with
    echo-opt: the job runs the ``python`` they put on PATH, after checking that it imports
    hyper_opt and submitit; where it does not, the job says so in its log and runs the
    submitting interpreter instead. Without such lines, the submitting interpreter runs.
    """
    fallback = fallback or sys.executable
    if spec.python:
        return [], spec.python
    if not setup_lines(spec):
        return [], shlex.quote(fallback)
    quoted = shlex.quote(fallback)
    lines = [
        f'{PYTHON_VAR}="$(command -v python || command -v python3)"',
        f'if [ -z "${PYTHON_VAR}" ] || ! "${PYTHON_VAR}" -c "import hyper_opt, submitit" >/dev/null 2>&1; then',
        f'  echo "hyper_opt: the python set up by the bash/kernel lines (${{{PYTHON_VAR}:-none on PATH}}) cannot '
        f'import hyper_opt and submitit; running {quoted} instead (install hyper_opt in that environment, '
        f'or set python: in this section)" >&2',
        f"  {PYTHON_VAR}={quoted}",
        "fi",
    ]
    return lines, f'"${PYTHON_VAR}"'


def make_executor(config: HyperConfig, folder: Path | None = None) -> Any:
    """A submitit SlurmExecutor carrying the job parameters (no submission yet)."""
    import submitit

    spec = _spec(config)
    params = sbatch_parameters(config)
    folder = folder or spec.folder or (config.save_path / "slurm")
    # The job process replaces the batch shell (exec), so that Slurm's warning signal, sent to the
    # batch shell ("B:"), reaches submitit's handler, which checkpoints and requeues the job.
    choose, python = interpreter(spec)
    executor = submitit.SlurmExecutor(folder=str(folder), python=f"exec {python}", max_num_timeout=30)
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
    executor = make_executor(config)
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


class JobMain:
    """What each Slurm job runs: its worker processes, one per GPU slot, until they stop."""

    def __init__(self, hyper_path: str, model_path: str | None, overrides: Sequence[str], *,
                 job_index: int, gpus_per_node: int, tasks_per_worker: int, stop_margin_s: int = 0) -> None:
        self.hyper_path = hyper_path
        self.model_path = model_path
        self.overrides = list(overrides)
        self.job_index = job_index
        self.gpus_per_node = gpus_per_node
        self.tasks_per_worker = tasks_per_worker
        self.stop_margin_s = stop_margin_s  # stop starting trials this long before the time limit
        self._procs: list[subprocess.Popen[bytes]] = []

    def plan(self, env: Mapping[str, str]) -> list[str]:
        """CUDA_VISIBLE_DEVICES for each worker of this job ("" for a CPU worker)."""
        gpus = visible_gpus(env)
        if self.gpus_per_node and len(gpus) > self.gpus_per_node:
            gpus = gpus[: self.gpus_per_node]
        if not gpus:
            return [""] * (max(self.gpus_per_node, 1) * self.tasks_per_worker)
        return [gpu for gpu in gpus for _ in range(self.tasks_per_worker)]

    def __call__(self) -> dict[str, Any]:
        plan = self.plan(os.environ)
        n = len(plan)
        base = self.job_index * n
        from hyper_opt.launch.slurm_env import job_deadline

        end = job_deadline()
        deadline = ["--deadline", f"{end - self.stop_margin_s:.0f}"] if end else []
        print(f"hyper_opt job {os.environ.get('SLURM_JOB_ID')}: {n} worker(s), GPUs {plan}", flush=True)
        for i, gpu in enumerate(plan):
            env = dict(os.environ)
            env["CUDA_VISIBLE_DEVICES"] = gpu
            cmd = [sys.executable, "-m", "hyper_opt.run", self.hyper_path]
            if self.model_path:
                cmd.append(self.model_path)
            cmd += ["--worker-index", str(base + i), *deadline]
            for override in self.overrides:
                cmd += ["--set", override]
            self._procs.append(subprocess.Popen(cmd, env=env))
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
                        stop_margin_s=self.stop_margin_s)
        print("hyper_opt job: requeueing to continue the study", flush=True)
        return submitit.helpers.DelayedSubmission(fresh)

    def _study_needs_more(self) -> bool:
        from hyper_opt.config import load_config
        from hyper_opt.study import counts, n_finished, open_study

        try:
            overrides = secrets.take_from_env(self.overrides, keep=True)
            config, _ = load_config(self.hyper_path, self.model_path, overrides=overrides)
            opened = open_study(config, create=False)
            try:
                return n_finished(counts(opened)) < config.optuna.n_trials
            finally:
                opened.lock.close()
        except Exception as err:  # when in doubt, requeue: a surplus job stops at once
            print(f"hyper_opt job: cannot read the study ({err}); requeueing", flush=True)
            return True


def gres_gpus(gres: str) -> int:
    """GPUs per node asked for by an sbatch ``--gres`` value (``gpu:v100:2`` -> 2, ``gpu`` -> 1)."""
    total = 0
    for part in gres.split(","):
        fields = part.strip().split(":")
        if fields[0] != "gpu":
            continue
        count = fields[-1] if len(fields) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs Slurm gave the job: CUDA_VISIBLE_DEVICES, else SLURM_JOB_GPUS; never nvidia-smi."""
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = env.get(key, "").strip()
        if value and value not in ("NoDevFiles", "-1"):
            return [g.strip() for g in value.split(",") if g.strip()]
    return []


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
                     tasks_per_worker=spec.tasks_per_worker, stop_margin_s=stop_margin_s(config))
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
    record_jobs(config, ids, Path(executor.folder))
    print(f"submitted {len(ids)} Slurm job(s): {' '.join(ids)} ({spec.workers_per_job} worker(s) each)")
    print(f"job logs and submitit files: {executor.folder}")
    print(f"follow it with: hyper-opt status {config.hyper_path}")
    return ids


def record_jobs(config: HyperConfig, ids: Sequence[str], folder: Path) -> None:
    """Append the jobs to ``slurm_jobs.json`` (read-modify-write under a file lock: two
    ``optimize`` runs at once must not drop each other's jobs)."""
    import fcntl

    path = config.save_path / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(JOBS_FILE + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        data = _read_jobs(path)
        now = dt.datetime.now().isoformat(timespec="seconds")
        data += [{"job_id": i, "submitted": now, "folder": str(folder), "study": config.optuna.study_name}
                 for i in ids]
        atomic_write_text(path, json.dumps(data, indent=2))


def _read_jobs(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise SubmissionError(f"{path} cannot be read ({err}); it lists the study's Slurm jobs: fix it, "
                              "or move it away to forget them") from None
    if not isinstance(data, list) or not all(isinstance(j, dict) and "job_id" in j for j in data):
        raise SubmissionError(f"{path} is not a list of jobs; fix it, or move it away to forget them")
    return data


def recorded_jobs(config: HyperConfig) -> list[dict[str, Any]]:
    return [j for j in _read_jobs(config.save_path / JOBS_FILE)
            if j.get("study", config.optuna.study_name) == config.optuna.study_name]


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
    jobs = recorded_jobs(config)
    if not jobs:
        return ["no Slurm jobs recorded for this study"]
    states = job_states([j["job_id"] for j in jobs])
    lines = [f"Slurm jobs ({len(jobs)}):"]
    lines += [f"  {j['job_id']:>10}  {states.get(j['job_id'], '?'):<12} submitted {j['submitted']}" for j in jobs]
    return lines


def dry_run(config: HyperConfig) -> None:
    """Print the plan and the job script exactly as it would be submitted; submit nothing."""
    spec = _spec(config)
    n_jobs = _jobs_needed(config, config.optuna.n_trials)
    gpus = spec.gpus_per_node or gres_gpus(str(sbatch_parameters(config).get("gres", "")))
    slots = f"{gpus} GPU slot(s) x {spec.tasks_per_worker} task(s)" if gpus else "CPU workers"
    workers = max(gpus, 1) * spec.tasks_per_worker
    print(f"launch     {n_jobs} Slurm job(s){' as one array' if spec.array else ''}, "
          f"{workers} worker(s) each ({slots}); jobs folder {spec.folder}")
    print("job script:")
    print(sbatch_script(config))
