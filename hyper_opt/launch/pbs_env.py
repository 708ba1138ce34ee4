"""What a process learns from the PBS job it runs in, and ``qstat -f`` parsing (no cluster needed).

PBS's commands (``qsub``, ``qstat``, ``qdel``) are looked up on PATH, or in ``$HYPER_OPT_PBS_BIN``
when it is set (:func:`command`): a machine with both Slurm's torque wrapper and PBS Pro, or a PBS
installation that is not first on PATH. A job script exports the same setting, so that the job
asks the server that runs it.

PBS Pro has no early-warning signal before the walltime (Slurm's ``--signal``): at the walltime
it sends SIGTERM and, ``kill_delay`` later, SIGKILL. So a job keeps its own clock: its end is the
job's start (``stime``) plus ``Resource_List.walltime``, or now plus the walltime minus
``resources_used.walltime`` (which MoM updates only every so often), as ``qstat -f`` shows them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

BIN_ENV = "HYPER_OPT_PBS_BIN"

_ATTR = re.compile(r"^\s+([A-Za-z_][\w.]*) = ?(.*)$")
_JOB = re.compile(r"^Job Id:\s*(\S+)\s*$")
_WALLTIME = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+)(?:\.\d+)?$")


def walltime_seconds(text: str) -> int | None:
    """PBS's ``[[hours:]minutes:]seconds[.ms]`` as seconds; None when it is not one."""
    match = _WALLTIME.match(str(text).strip())
    if not match:
        return None
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` (PBS Pro, Torque or Slurm's torque wrapper) as {job id: {attribute: value}}.

    Attributes are indented ``name = value`` lines; PBS Pro wraps long values at a fixed width
    onto lines that start with a tab, which are joined back onto the attribute without that tab
    and nothing else: the wrap may fall inside a word (``finishe`` + ``d``) or before a space
    (``and`` + `` exceeded``).
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        job = _JOB.match(line)
        if job:
            current = jobs.setdefault(job.group(1), {})
            last = None
            continue
        if current is None:
            continue
        attr = _ATTR.match(line)
        if attr:
            last = attr.group(1)
            current[last] = attr.group(2).rstrip()
        elif line.startswith("\t") and last is not None:
            current[last] += line[1:].rstrip("\r\n")
        elif line[:1] == " " and last is not None:  # other qstats' continuation lines
            current[last] += line.strip()
    return jobs


def _epoch(text: str) -> float | None:
    """qstat's ``Mon Dec  2 10:00:01 2024`` (local time) as seconds since the epoch."""
    try:
        return time.mktime(time.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        return None


def deadline_from_attrs(attrs: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The job's end (seconds since the epoch) from its ``qstat -f`` attributes, or None."""
    now = time.time() if now is None else now
    limit = walltime_seconds(attrs.get("Resource_List.walltime", ""))
    if limit is None:
        return None
    started = _epoch(attrs.get("stime", ""))
    if started is not None:
        return started + limit
    used = walltime_seconds(attrs.get("resources_used.walltime", ""))
    if used is not None:
        return now + limit - used
    return None


def job_id(env: Mapping[str, str] | None = None) -> str:
    """This job's id: PBS_JOBID, else SLURM_JOB_ID (Slurm's torque wrapper runs qsub jobs on Slurm)."""
    env = os.environ if env is None else env
    return env.get("PBS_JOBID", "") or env.get("SLURM_JOB_ID", "")


def command(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The path of PBS's ``name`` command (qsub, qstat, qdel): in ``$HYPER_OPT_PBS_BIN`` when that
    is set, else on PATH; None when there is none."""
    env = os.environ if env is None else env
    folder = env.get(BIN_ENV, "").strip()
    if folder:
        path = os.path.join(folder, name)
        return path if os.access(path, os.X_OK) else None
    return shutil.which(name, path=env.get("PATH"))


def job_attrs(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This job's ``qstat -f`` attributes ({} outside a PBS job or when qstat cannot tell)."""
    env = os.environ if env is None else env
    job = env.get("PBS_JOBID")
    qstat = command("qstat", env)
    if not job or qstat is None:
        return {}
    try:
        out = subprocess.run([qstat, "-f", job], capture_output=True, text=True, timeout=60).stdout
    except (subprocess.SubprocessError, OSError) as err:
        logger.warning("cannot read the job's attributes from qstat: %s", err)
        return {}
    jobs = parse_qstat_full(out)
    return jobs.get(job) or (next(iter(jobs.values())) if len(jobs) == 1 else {})


def job_deadline(env: Mapping[str, str] | None = None, attrs: Mapping[str, str] | None = None) -> float | None:
    """The current job's end as seconds since the epoch, or None when no one can tell; ``attrs``:
    its ``qstat -f`` attributes when already read."""
    env = dict(os.environ) if env is None else dict(env)
    end = deadline_from_attrs(job_attrs(env) if attrs is None else attrs)
    if end is not None:
        return end
    if env.get("SLURM_JOB_ID"):  # a qsub job run by Slurm (the torque wrapper): ask Slurm
        from hyper_opt.launch.slurm_env import job_deadline as slurm_deadline

        return slurm_deadline(env)
    return None


def host_gpus(attrs: Mapping[str, str]) -> int | None:
    """GPUs PBS gave the job on its first host (where its workers run), or None for none.

    The ``ngpus`` of the ``exec_vnode`` chunks on the first ``exec_host`` (what the scheduler
    allocated), else the first chunk of ``Resource_List.select`` (what the job asked for, where
    the scheduler does not schedule on ``ngpus``). Never the job-wide ``Resource_List.ngpus``:
    PBS fills it from the queue's ``resources_default`` or ``resources_max`` for a job that asked
    for no GPU at all (seen here: ``select=1:ncpus=1`` with ``Resource_List.ngpus = 4``).
    """
    first = attrs.get("exec_host", "").split("+")[0].split("/")[0]
    total = 0
    for chunk in attrs.get("exec_vnode", "").split("+"):
        vnode, _, resources = chunk.strip().strip("()").partition(":")
        if first and vnode != first and not vnode.startswith(first + "["):
            continue
        total += sum(int(v) for k, _, v in (r.partition("=") for r in resources.split(":"))
                     if k == "ngpus" and v.isdigit())
    if total:
        return total
    chunk = attrs.get("Resource_List.select", "").split("+")[0]
    match = re.search(r"(?:^|:)ngpus=(\d+)", chunk)
    return int(match.group(1)) or None if match else None


def fill_gpus(env: dict[str, str], attrs: Mapping[str, str]) -> str | None:
    """Without PBS Pro's cgroup hook a job gets GPUs (``ngpus``) but no ``CUDA_VISIBLE_DEVICES``:
    then set it to the first N GPUs of the node (N from :func:`host_gpus`) and return a warning
    for the job's log; None when nothing was done (already set, or no GPUs asked for)."""
    if env.get("CUDA_VISIBLE_DEVICES", "").strip():
        return None
    count = host_gpus(attrs)
    if not count:
        return None
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
    return (f"WARNING: PBS gave this job {count} GPU(s) ({attrs.get('exec_vnode') or 'ngpus'}) but set no "
            f"CUDA_VISIBLE_DEVICES (the site runs no cgroup hook): using GPUs {env['CUDA_VISIBLE_DEVICES']} "
            "of the node. Another job on the same node may use the same GPUs; to choose them, export "
            "CUDA_VISIBLE_DEVICES in a pbs:bash line (docs/pbs.md)")
