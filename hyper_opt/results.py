"""Results on disk, derived from the study: one CSV per finished trial, and the merged table.

Each finished trial (COMPLETE, PRUNED or FAIL) gets ``<save_path>/trials/trial_<number>.csv``,
written once, atomically (temp file + rename), by the process that ran it, so that no two
workers ever write the same file. ``trials.csv`` is rebuilt from the study, never appended to.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

# Run context recorded as user attributes when a trial starts.
CONTEXT_ATTRS = ("hostname", "slurm_job_id", "pbs_job_id", "cuda_visible_devices")
FIXED_HEAD = ("number", "state")
FIXED_TAIL = ("duration_s", "gpus", "gpu_hours", *CONTEXT_ATTRS, "retry_of", "stopped", "error")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (readers see the old
    file or the new one, never a part), with the permissions the umask gives new files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _metric_names(trials: Iterable[optuna.trial.FrozenTrial], first: Sequence[str]) -> list[str]:
    names = list(first)
    for trial in trials:
        for key in (trial.user_attrs.get("metrics") or {}):
            if key not in names:
                names.append(key)
    return names


def trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as a flat row (parameters by name, metrics by name)."""
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    row.update(trial.params)
    row.update(trial.user_attrs.get("metrics") or {})
    if trial.values is not None:
        if len(trial.values) == 1:
            row["value"] = trial.values[0]
        else:
            row.update({f"value_{i}": v for i, v in enumerate(trial.values)})
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        row["duration_s"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 3)
    for key in CONTEXT_ATTRS:
        row[key] = trial.user_attrs.get(key, "")
    row["retry_of"] = trial.system_attrs.get("failed_trial", trial.user_attrs.get("retry_of", ""))
    # A retried copy inherits its original's user attributes: only a FAIL trial's error is its own.
    error = (trial.user_attrs.get("error") or "") if trial.state.name == "FAIL" else ""
    row["error"] = error.strip().splitlines()[-1] if error else ""
    from hyper_opt.accounting import STOPPED_ATTR, devices, trial_hours

    row["gpus"] = devices(trial)  # a CPU trial counts as one device (hyper_opt.accounting)
    row["gpu_hours"] = round(trial_hours(trial), 6) if trial.datetime_complete is not None else ""
    row["stopped"] = trial.user_attrs.get(STOPPED_ATTR, "") if trial.state.name == "FAIL" else ""
    return row


def columns(trials: Sequence[optuna.trial.FrozenTrial], param_names: Sequence[str],
            metric_names: Sequence[str], n_values: int) -> list[str]:
    values = ["value"] if n_values == 1 else [f"value_{i}" for i in range(n_values)]
    params = list(param_names)
    for trial in trials:
        params += [p for p in trial.params if p not in params]
    metrics = [m for m in _metric_names(trials, metric_names) if m not in params]
    return [*FIXED_HEAD, *params, *metrics, *values, *FIXED_TAIL]


def to_csv(rows: Iterable[Mapping[str, Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in header})
    return buf.getvalue()


def trial_csv_path(trials_dir: Path, number: int) -> Path:
    return trials_dir / f"trial_{number}.csv"


def write_trial_csv(trials_dir: Path, trial: optuna.trial.FrozenTrial, *, param_names: Sequence[str],
                    metric_names: Sequence[str], n_values: int) -> Path:
    """The per-trial file; called once by the process that ran the trial."""
    header = columns([trial], param_names, metric_names, n_values)
    path = trial_csv_path(trials_dir, trial.number)
    atomic_write_text(path, to_csv([trial_row(trial)], header))
    return path


def write_trials_csv(path: Path, trials: Sequence[optuna.trial.FrozenTrial], *, param_names: Sequence[str],
                     metric_names: Sequence[str], n_values: int) -> Path:
    """The merged table of all trials, derived from the study."""
    trials = sorted(trials, key=lambda t: t.number)
    header = columns(trials, param_names, metric_names, n_values)
    atomic_write_text(path, to_csv((trial_row(t) for t in trials), header))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))
