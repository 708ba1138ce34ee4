"""The record of a search's submitted jobs, for every scheduler: ``save_path/jobs.json``.

``optimize`` appends the ids ``sbatch`` (through submitit) or ``qsub`` printed, one entry per job
(``job_id``, ``submitted``, ``folder``, ``study``, ``scheduler``: ``slurm`` or ``pbs``); ``status``,
``cancel`` and ``optimize --reload`` read them back. Studies started before the record belonged to
no scheduler have ``save_path/slurm_jobs.json`` (the same format; entries without ``scheduler``
are Slurm's): it is still read, never written, so their jobs stay known.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyper_opt.exceptions import SubmissionError
from hyper_opt.results import atomic_write_text
from hyper_opt.schema import HyperConfig

JOBS_FILE = "jobs.json"
LEGACY_JOBS_FILE = "slurm_jobs.json"  # written by hyper_opt before jobs.json (Slurm's and PBS's jobs)


def record_jobs(config: HyperConfig, ids: Sequence[str], folder: Path, *, scheduler: str) -> None:
    """Append submitted job ids to ``save_path/jobs.json``, read-modify-written under a file lock:
    two ``optimize`` runs at once must not drop each other's jobs."""
    import fcntl

    path = config.save_path / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(JOBS_FILE + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        data = read_jobs(path)
        now = dt.datetime.now().isoformat(timespec="seconds")
        data += [{"job_id": str(i), "submitted": now, "folder": str(folder), "study": config.optuna.study_name,
                  "scheduler": scheduler} for i in ids]
        atomic_write_text(path, json.dumps(data, indent=2))


def read_jobs(path: Path) -> list[dict[str, Any]]:
    """The entries of one record file ([] when it does not exist); a damaged file is named."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise SubmissionError(f"{path} cannot be read ({err}); it lists the study's jobs: fix it, "
                              "or move it away to forget them") from None
    if not isinstance(data, list) or not all(isinstance(j, dict) and "job_id" in j for j in data):
        raise SubmissionError(f"{path} is not a list of jobs; fix it, or move it away to forget them")
    return data


def recorded_jobs(config: HyperConfig, scheduler: str | None) -> list[dict[str, Any]]:
    """This study's recorded jobs of one scheduler (``slurm``, ``pbs``; all with None), the old
    ``slurm_jobs.json`` first, in submission order."""
    entries = [*read_jobs(config.save_path / LEGACY_JOBS_FILE), *read_jobs(config.save_path / JOBS_FILE)]
    return [j for j in entries
            if j.get("study", config.optuna.study_name) == config.optuna.study_name
            and scheduler in (None, j.get("scheduler", "slurm"))]
