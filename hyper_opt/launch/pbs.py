"""Submit a study's workers as PBS jobs with ``qsub``, and watch or cancel them.

The job script is a pure function of the ``pbs`` section (:func:`job_script`): every key of
``pbs.batch`` becomes a ``#PBS`` directive (``l`` may be a list: one ``-l`` line each), checked
before anything is submitted (:func:`directives`) and shell-quoted where needed. The script
changes to the directory the search was started from (PBS starts jobs in ``$HOME``; local workers
and Slurm jobs run there too), runs ``pbs.bash`` then ``pbs.kernel``, and then ``python -m hyper_opt.launch.job``,
which runs ``gpus_per_node x tasks_per_worker`` workers, each with one of the job's GPUs
(:mod:`hyper_opt.launch.job`, shared with Slurm). ``jobs`` separate jobs, or one array
(``pbs.array: true``, ``#PBS -J 0-N``).

Job ids go to the same ``save_path/jobs.json`` as Slurm's (``"scheduler": "pbs"``,
:mod:`hyper_opt.launch.records`);
``status`` reads them with ``qstat -x -f``, ``cancel`` ends them with ``qdel``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt.schema import HyperConfig, SchedulerSpec
from hyper_opt.distributed.launch import ONE_NODE_ENV
from hyper_opt.exceptions import ConfigError, SubmissionError
from hyper_opt.launch.pbs_env import BIN_ENV, command, parse_qstat_full, walltime_seconds
from hyper_opt.launch.records import record_jobs, recorded_jobs
from hyper_opt.results import atomic_write_text

logger = logging.getLogger(__name__)

# qsub's options (PBS Pro 2022): with a value, and flags (true: given, false: left out).
VALUE_OPTIONS = {
    "a": "start after date_time", "A": "account", "c": "checkpoint", "e": "stderr path",
    "j": "join (oe, eo, n)", "k": "keep (o, e, oe, d, n)", "l": "resources (a string or a list)",
    "m": "mail points (a, b, e, j or n)", "M": "mail users", "N": "job name", "o": "stdout path",
    "p": "priority", "P": "project", "q": "queue", "r": "rerunnable (y or n)", "R": "remove files",
    "S": "shell path", "u": "user list", "v": "variable list", "W": "attributes (e.g. depend=...)",
}
FLAG_OPTIONS = {"V": "export the submitting environment", "h": "hold", "z": "print no job id"}
# Options that cannot work in a hyper_opt job script.
REFUSED = {
    "I": "an interactive job runs no script", "X": "X11 forwarding needs an interactive job",
    "C": "a directive prefix other than #PBS would hide every directive",
    "J": "the array is set by hyper_opt: use pbs:array: true (and pbs:jobs)",
    "t": "the array is set by hyper_opt: use pbs:array: true (and pbs:jobs)",
}
# Resource names users put directly under batch by mistake (they go under l).
RESOURCES = {"walltime", "select", "ncpus", "ngpus", "mem", "gpu_type", "place", "nodes", "cput"}
STOP_MARGIN_S = 60  # workers start no trial that would end later than this before the walltime
_SELECT = re.compile(r"^\d*(?::?[A-Za-z_][\w.]*=[^:+\s]+)*(?:\+\d*(?::?[A-Za-z_][\w.]*=[^:+\s]+)*)*$")
_RESOURCE = re.compile(r"^([A-Za-z_][\w.]*)=(\S+)$")
_JOB_ID = re.compile(r"^(\d+(?:\[\d*\])?(?:\.[\w.-]+)?)$")
ACTIVE_STATES = {"Q", "R", "H", "E", "B", "S", "W", "T", "M", "U"}
STATE_NAMES = {
    "Q": "QUEUED", "R": "RUNNING", "H": "HELD", "E": "EXITING", "F": "FINISHED", "X": "FINISHED",
    "B": "RUNNING (array)", "S": "SUSPENDED", "W": "WAITING", "T": "TRANSIT", "M": "MOVED",
    "C": "COMPLETED", "U": "UNKNOWN",
}


def _spec(config: HyperConfig) -> SchedulerSpec:
    if config.pbs is None:
        raise ConfigError(["pbs: no pbs section in the hyperparameter file"], source=str(config.hyper_path))
    return config.pbs


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _check_resources(path: str, value: Any, problems: list[str]) -> list[str]:
    """``l`` as a list of ``-l`` arguments, each ``name=value[,name=value]``."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for n, item in enumerate(items):
        where = f"{path}[{n}]" if isinstance(value, list) else path
        if isinstance(item, (dict, list, bool)) or item is None:
            problems.append(f"{where}: must be a string such as 'walltime=12:00:00', got {item!r}")
            continue
        text = _text(item).strip()
        if any(c in text for c in "\n\r\0"):
            problems.append(f"{where}: must not contain a newline, got {text!r}")
            continue
        ok = True
        for part in text.split(","):
            match = _RESOURCE.match(part.strip())
            if not match:
                problems.append(f"{where}: {part!r} is not 'resource=value' (e.g. select=1:ncpus=8:ngpus=1, "
                                "walltime=12:00:00)")
                ok = False
                continue
            name, val = match.groups()
            if name == "walltime" and walltime_seconds(val) is None:
                problems.append(f"{where}: walltime {val!r} is not [[hours:]minutes:]seconds (e.g. 12:00:00)")
                ok = False
            elif name == "select" and not _SELECT.match(val):
                problems.append(f"{where}: select {val!r} is not N:resource=value[:...][+N:...] "
                                "(e.g. 1:ncpus=8:ngpus=1:mem=64GB)")
                ok = False
        if ok:
            out.append(text)
    return out


def directives(config: HyperConfig) -> list[tuple[str, str | None]]:
    """The job's qsub options as (option, value or None for a flag), validated; a pure function.

    Problems are collected and raised as one :class:`ConfigError` naming each key path.
    """
    spec = _spec(config)
    problems: list[str] = []
    opts: list[tuple[str, str | None]] = []
    for key, value in spec.batch.items():
        path = f"pbs:batch:{key}"
        key = str(key)
        if key in REFUSED:
            problems.append(f"{path}: -{key} cannot be given ({REFUSED[key]})")
            continue
        if key in FLAG_OPTIONS:
            if not isinstance(value, bool):
                problems.append(f"{path}: -{key} is a flag ({FLAG_OPTIONS[key]}): true or false, got {value!r}")
            elif value:
                opts.append((key, None))
            continue
        if key not in VALUE_OPTIONS:
            hint = (f"; a resource goes under l, e.g. l: [\"{key}=...\"]" if key in RESOURCES else "")
            problems.append(f"{path}: unknown qsub option -{key} (known: "
                            f"{', '.join(f'{k} ({v})' for k, v in sorted({**VALUE_OPTIONS, **FLAG_OPTIONS}.items()))})"
                            f"{hint}")
            continue
        if key == "l":
            opts += [("l", text) for text in _check_resources(path, value, problems)]
            continue
        if isinstance(value, bool) and key == "r":
            value = "y" if value else "n"
        if value is None or isinstance(value, (bool, list, dict)):
            problems.append(f"{path}: must be a string or number, got {value!r}")
            continue
        text = _text(value)
        if any(c in text for c in "\n\r\0"):
            problems.append(f"{path}: must not contain a newline, got {text!r}")
            continue
        if key == "r" and text not in ("y", "n"):
            problems.append(f"{path}: -r takes y or n, got {text!r}")
            continue
        if key == "j" and text not in ("oe", "eo", "n"):
            problems.append(f"{path}: -j takes oe, eo or n, got {text!r}")
            continue
        if key in ("N", "A", "q", "P") and (not text or any(c.isspace() for c in text)):
            problems.append(f"{path}: {text!r} must be one word (no spaces)")
            continue
        if key == "p" and not re.match(r"^-?\d+$", text):
            problems.append(f"{path}: the priority {text!r} is not an integer (-1024 to 1023)")
            continue
        if key in ("o", "e"):
            text = _resolve_log_path(text, config.save_path)
        opts.append((key, text))
    if problems:
        raise ConfigError(problems, source=str(config.hyper_path))
    given = {k for k, _ in opts}
    if "N" not in given:
        opts.append(("N", _job_name(config.optuna.study_name)))
    resources = [v or "" for k, v in opts if k == "l"]
    k = spec.nodes_per_trial
    if (spec.gpus_per_node or k > 1) and not any("select=" in r or "ngpus=" in r for r in resources):
        gpus = f":ngpus={spec.gpus_per_node}" if spec.gpus_per_node else ""
        opts.append(("l", f"select={k}:ncpus=1{gpus}" if k > 1 else f"select=1{gpus}"))
    if k > 1 and not any("place=" in r for r in resources):  # one chunk per node (tests: all on the one node)
        opts.append(("l", "place=pack" if os.environ.get(ONE_NODE_ENV) else "place=scatter"))
    return opts


def _resolve_log_path(text: str, save_path: Path) -> str:
    """``-o``/``-e``: a relative path is under save_path (echo-opt prefixed save_path too);
    ``host:path`` and absolute paths are kept."""
    if text.startswith("/") or re.match(r"^[\w.-]+:", text) or text == "/dev/null":
        return text
    return str(save_path / text)


def _job_name(study: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"hyper_opt-{study}")
    return name[:236]


def walltime_s(opts: Sequence[tuple[str, str | None]]) -> int | None:
    """The walltime asked for in the ``-l`` options (the last one wins), in seconds."""
    seconds = None
    for key, value in opts:
        if key == "l" and value:
            for part in value.split(","):
                name, _, val = part.strip().partition("=")
                if name == "walltime":
                    seconds = walltime_seconds(val)
    return seconds


def stop_margin_s(walltime: int | None) -> int:
    """Workers stop starting trials this long before the walltime (at most a quarter of it)."""
    return STOP_MARGIN_S if walltime is None else min(STOP_MARGIN_S, max(walltime // 4, 1))


def requested_gpus(opts: Sequence[tuple[str, str | None]]) -> int | None:
    """GPUs per node asked for with ``ngpus`` in ``select`` (the first chunk), or None."""
    for key, value in opts:
        if key == "l" and value:
            match = re.search(r"(?:^|[:,])ngpus=(\d+)", value)
            if match:
                return int(match.group(1))
    return None


def job_script(config: HyperConfig, *, job_index: int = 0, n_jobs: int = 1) -> str:
    """The qsub script of one job (of ``n_jobs``), exactly as it is submitted; a pure function."""
    spec = _spec(config)
    opts = directives(config)
    if spec.array and n_jobs > 1:
        opts.append(("J", f"0-{n_jobs - 1}"))
    lines = ["#!/bin/bash -l"]
    lines += [f"#PBS -{k}" if v is None else f"#PBS -{k} {shlex.quote(v)}" for k, v in opts]
    walltime = walltime_s(opts)
    what = "array of" if spec.array and n_jobs > 1 else f"job {job_index} of"
    from hyper_opt.config import CWD_ENV, working_directory
    from hyper_opt.launch.job import interpreter

    lines += [f"# hyper_opt: study {config.optuna.study_name!r}, {what} {n_jobs} job(s)", "",
              "# PBS starts a job in $HOME: run where the search was started, as local workers and",
              "# Slurm jobs do (the objective's relative paths and imports mean the same everywhere)",
              f"export {CWD_ENV}={shlex.quote(str(working_directory()))}",
              f'cd "${CWD_ENV}"']
    if os.environ.get(BIN_ENV):  # PBS's commands are not first on PATH: the job asks the same ones
        lines.append(f"export {BIN_ENV}={shlex.quote(os.environ[BIN_ENV])}")
    setup = [*spec.bash, *([spec.kernel] if spec.kernel else [])]
    choose, python = interpreter(spec)
    if setup:
        lines += ["", "# setup (pbs:bash, then pbs:kernel), then the python they set up", *setup, *choose]
    cmd = ["-m", "hyper_opt.launch.job", str(config.hyper_path)]
    if config.model_path is not None:
        cmd.append(str(config.model_path))
    cmd += ["--job-index", str(job_index), "--gpus-per-node", str(spec.gpus_per_node),
            "--tasks-per-worker", str(spec.tasks_per_worker), "--stop-margin", str(stop_margin_s(walltime))]
    if spec.gpus_per_trial > 1 or spec.nodes_per_trial > 1:
        cmd += ["--gpus-per-trial", str(spec.gpus_per_trial), "--nodes-per-trial", str(spec.nodes_per_trial)]
    if walltime is not None:
        cmd += ["--walltime", str(walltime)]
    from hyper_opt import secrets

    if secrets.for_worker(config.overrides)[1]:
        raise ConfigError(["--set: an override holds a password; PBS jobs get neither the submitting "
                           "environment nor anything but their script (a file), so it cannot travel safely. "
                           "Put the password in ~/.pgpass (or PGPASSWORD in a pbs:bash line of a private "
                           "file) and leave it out of the URL"], source="the command line")
    for override in config.overrides:
        cmd += ["--set", override]
    lines += ["", "# the workers: gpus_per_node x tasks_per_worker, one GPU each (hyper_opt.launch.job)",
              f"exec {python} " + " ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)


def workers_per_job(config: HyperConfig) -> int:
    """Workers in each job: gpus_per_node x tasks_per_worker, or one per GPU of the ``select``
    (x tasks_per_worker) when gpus_per_node is not given."""
    from hyper_opt.launch.job import jobs_workers

    return jobs_workers(_spec(config), requested_gpus(directives(config)))


def _jobs_needed(config: HyperConfig, remaining: int) -> int:
    spec = _spec(config)
    return max(1, min(spec.jobs, -(-remaining // workers_per_job(config))))


def _is_slurm_wrapper(qsub: str) -> bool:
    """Is this qsub Slurm's torque wrapper (Debian's slurm-wlm-torque), a perl script over sbatch?"""
    try:
        with open(qsub, "rb") as fh:
            head = fh.read(8192)
    except OSError:
        return False
    return head.startswith(b"#!") and b"sbatch" in head and b"Slurm" in head


def qsub_argv(qsub: str, script: str, opts: Sequence[tuple[str, str | None]]) -> list[str]:
    """``qsub SCRIPT``; on Slurm's torque wrapper also ``-l naccelerators=N``: that wrapper (and
    sbatch's #PBS reader) ignores ``ngpus``, so the job would get no GPU."""
    argv = [qsub]
    gpus = requested_gpus(opts)
    if gpus and _is_slurm_wrapper(qsub):
        argv += ["-l", f"naccelerators={gpus}"]
    return argv + [script]


def parse_job_id(stdout: str) -> str | None:
    """qsub's job id (``1234.server``, ``1234[].server`` for an array, or a bare number)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    match = _JOB_ID.match(lines[-1])
    return match.group(1) if match else None


def submit(config: HyperConfig, opened: Any, *, remaining: int | None = None) -> list[str]:
    """Write the job script(s), ``qsub`` them (only as many jobs as the remaining budget needs),
    record and print their ids."""
    spec = _spec(config)
    qsub = command("qsub")
    if qsub is None:
        where = f"not in ${BIN_ENV}" if os.environ.get(BIN_ENV) else "not on PATH"
        raise SubmissionError(f"qsub is {where}: run on a PBS login node, or pass --local to run "
                              "the search on this machine")
    opts = directives(config)
    n_jobs = _jobs_needed(config, remaining if remaining is not None else config.optuna.n_trials)
    folder = config.save_path / "pbs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while any(folder.glob(f"*_{stamp}*.sh")):  # a second submission within the same second
        stamp += "x"
    if spec.array and n_jobs > 1:
        scripts = [(0, f"array_{stamp}.sh")]
    else:
        scripts = [(i, f"job_{stamp}_{i}.sh") for i in range(n_jobs)]
    ids: list[str] = []
    try:
        for index, name in scripts:
            atomic_write_text(folder / name, job_script(config, job_index=index, n_jobs=n_jobs))
            argv = qsub_argv(qsub, f"pbs/{name}", opts)
            try:
                proc = subprocess.run(argv, cwd=config.save_path, capture_output=True, text=True, timeout=120)
            except (subprocess.SubprocessError, OSError) as err:
                raise SubmissionError(f"qsub failed to run: {err}") from err
            job = parse_job_id(proc.stdout) if proc.returncode == 0 else None
            if job is None:
                said = "\n".join(s.strip() for s in (proc.stdout, proc.stderr) if s.strip())
                raise SubmissionError(f"qsub refused the job (exit {proc.returncode}"
                                      f"{'' if not ids else f'; already submitted: {ids}'}):\n{said}")
            ids.append(job)
    finally:
        if ids:
            record_jobs(config, ids, folder, scheduler="pbs")
    kind = "one PBS job array" if spec.array and n_jobs > 1 else f"{len(ids)} PBS job(s)"
    print(f"submitted {kind}: {' '.join(ids)} ({workers_per_job(config)} worker(s) each)")
    print(f"job scripts: {folder}")
    print(f"follow it with: hyper-opt status {config.hyper_path}")
    return ids


def qstat_jobs(ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """``qstat -x -f`` of these jobs (``-x``: finished ones too), falling back to ``qstat -f``
    where ``-x`` is unknown (Torque, Slurm's wrapper); ids missing from the answer are left out."""
    qstat = command("qstat")
    if not ids or qstat is None:
        return {}
    found: dict[str, dict[str, str]] = {}
    for argv in ([qstat, "-x", "-f", *ids], [qstat, "-f", *ids]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (subprocess.SubprocessError, OSError) as err:
            logger.warning("qstat failed: %s", err)
            return found
        found = parse_qstat_full(proc.stdout)
        if found or "-x" not in argv or proc.returncode == 0:
            break
    return found


def _key(job: str) -> str:
    """A job id without its server suffix and array index (``1234[3].srv`` -> ``1234``)."""
    return job.split(".")[0].split("[")[0].split("_")[0]


def job_states(ids: Sequence[str]) -> dict[str, str]:
    """The one-letter PBS state of each job ('?' when qstat no longer knows it)."""
    info = qstat_jobs(ids)
    by_key = {_key(j): attrs for j, attrs in info.items()}
    out = {}
    for i in ids:
        attrs = info.get(i) or by_key.get(_key(i)) or {}
        out[i] = attrs.get("job_state", "?").strip() or "?"
    return out


def job_state_lines(config: HyperConfig) -> list[str]:
    jobs = recorded_jobs(config, "pbs")
    if not jobs:
        return ["no PBS jobs recorded for this study"]
    info = qstat_jobs([j["job_id"] for j in jobs])
    by_key = {_key(j): attrs for j, attrs in info.items()}
    lines = [f"PBS jobs ({len(jobs)}):"]
    for j in jobs:
        attrs = info.get(j["job_id"]) or by_key.get(_key(j["job_id"])) or {}
        state = attrs.get("job_state", "?")
        text = STATE_NAMES.get(state, state) if state != "?" else "? (unknown to qstat: finished)"
        if "Exit_status" in attrs:
            text += f" (exit {attrs['Exit_status']})"
        used = attrs.get("resources_used.walltime")
        if used:
            text += f", walltime used {used} of {attrs.get('Resource_List.walltime', '?')}"
        lines.append(f"  {j['job_id']:>10}  {text:<12} submitted {j['submitted']}")
    return lines


def cancel_jobs(ids: Sequence[str], *, wait_s: float = 60.0) -> list[str]:
    """``qdel`` the jobs qstat does not show as finished; wait until they are gone. Returns them."""
    qdel = command("qdel")
    if qdel is None:
        raise SubmissionError("qdel is not on PATH: run this on a PBS login node")
    states = job_states(ids)
    active = [j for j, s in states.items() if s in ACTIVE_STATES or s == "?"]
    if not active:
        return []
    proc = subprocess.run([qdel, *active], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip()
        gone = [j for j, s in job_states(active).items() if s not in ACTIVE_STATES]
        if len(gone) < len(active) and said and "finished" not in said.lower():
            raise SubmissionError(f"qdel {' '.join(active)} failed: {said}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not any(s in ACTIVE_STATES for s in job_states(active).values()):
            break
        time.sleep(1.0)
    return active


def dry_run(config: HyperConfig) -> None:
    """Print the plan and the first job script exactly as it would be submitted; submit nothing."""
    from hyper_opt.launch.slurm import worker_label

    spec = _spec(config)
    opts = directives(config)
    n_jobs = _jobs_needed(config, config.optuna.n_trials)
    gpus = requested_gpus(opts)
    slots = worker_label(spec.gpus_per_node, spec.tasks_per_worker, gpus)
    workers = workers_per_job(config)
    array = spec.array and n_jobs > 1
    print(f"launch     {n_jobs} PBS job(s){' as one array' if array else ''} with qsub, "
          f"{workers} worker(s) each ({slots}); scripts in {config.save_path / 'pbs'}")
    from hyper_opt.launch.job import trial_plan

    print(f"trials     {trial_plan(spec, workers)}")
    if n_jobs > 1 and not array:
        print(f"job script (job 0; jobs 1-{n_jobs - 1} differ only in --job-index):")
    else:
        print("job script:")
    print(job_script(config, job_index=0, n_jobs=n_jobs))


def as_mapping(opts: Sequence[tuple[str, str | None]]) -> Mapping[str, list[str | None]]:
    """Options grouped by letter (for tests and messages)."""
    grouped: dict[str, list[str | None]] = {}
    for key, value in opts:
        grouped.setdefault(key, []).append(value)
    return grouped
