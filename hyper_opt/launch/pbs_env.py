"""What a process learns from the PBS job it runs in, and ``qstat -f`` parsing (no cluster needed).

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

    Attributes are indented ``name = value`` lines; PBS Pro wraps long values onto lines that
    start with a tab, which are joined back onto the attribute.
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
        elif line[:1] in ("\t", " ") and last is not None:
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


def job_deadline(env: Mapping[str, str] | None = None) -> float | None:
    """The current job's end as seconds since the epoch, or None when no one can tell."""
    env = dict(os.environ) if env is None else dict(env)
    job = env.get("PBS_JOBID")
    if job and shutil.which("qstat"):
        try:
            out = subprocess.run(["qstat", "-f", job], capture_output=True, text=True, timeout=60).stdout
        except (subprocess.SubprocessError, OSError) as err:
            logger.warning("cannot read the job's walltime from qstat: %s", err)
            out = ""
        jobs = parse_qstat_full(out)
        attrs = jobs.get(job) or (next(iter(jobs.values())) if len(jobs) == 1 else {})
        end = deadline_from_attrs(attrs)
        if end is not None:
            return end
    if env.get("SLURM_JOB_ID"):  # a qsub job run by Slurm (the torque wrapper): ask Slurm
        from hyper_opt.launch.slurm_env import job_deadline as slurm_deadline

        return slurm_deadline(env)
    return None
