"""What a process learns from the Slurm job it runs in (no submitit or cluster needed)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time

logger = logging.getLogger(__name__)

_LEFT = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")


def parse_time_left(text: str) -> float | None:
    """Seconds from squeue's ``%L`` (``[D-][HH:]MM:SS``); None for UNLIMITED/INVALID."""
    match = _LEFT.match(text.strip())
    if not match:
        return None
    parts = {k: int(v or 0) for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


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
