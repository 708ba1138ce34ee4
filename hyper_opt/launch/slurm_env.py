"""What a process learns from the Slurm job it runs in (no submitit or cluster needed)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

logger = logging.getLogger(__name__)

def time_limit_seconds(text: str) -> int | None:
    """A Slurm duration as seconds: sbatch's ``--time`` (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)
    and squeue's ``%L`` alike; None for UNLIMITED/INFINITE. ValueError when it is neither."""
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


def parse_time_left(text: str) -> float | None:
    """Seconds from squeue's ``%L`` (``[D-][HH:]MM:SS``); None for UNLIMITED/INVALID."""
    try:
        return time_limit_seconds(text)
    except ValueError:
        return None


def job_deadline(env: dict[str, str] | None = None) -> float | None:
    """The current job's end as seconds since the epoch, or None outside a time-limited job."""
    env = dict(os.environ) if env is None else env
    if env.get("SLURM_JOB_END_TIME", "").isdigit():
        return float(env["SLURM_JOB_END_TIME"])
    job = env.get("SLURM_JOB_ID")
    if not job or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError) as err:
        logger.warning("cannot read the job's time left from squeue: %s", err)
        return None
    left = parse_time_left(out.splitlines()[0]) if out else None
    return None if left is None else time.time() + left
