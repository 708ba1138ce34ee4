"""The validated form of a search's YAML files: frozen spec dataclasses, the keys each section
allows, and the defaults, named.

This module imports nothing from hyper_opt: every other module may use it. ``config.py`` turns
the YAML into these objects; the rest of the package only reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HYPER_SECTIONS = ("log", "save_path", "slurm", "pbs", "local", "optuna", "format")
FORMATS = ("hyper_opt", "echo", "aimlutils")
# Keys only hyper_opt knows: a file that uses one is read the hyper_opt way (see detect_format).
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("local", "format"),
    "log": ("level",),
    "optuna": ("heartbeat_interval", "grace_period", "max_retry", "max_consecutive_failures", "db_retry_seconds",
               "budget", "stop"),
    "slurm": ("array", "folder", "signal_delay_s", "python", "gpus_per_trial", "nodes_per_trial"),
    "pbs": ("gpus_per_trial", "nodes_per_trial"),
}
CWD_ENV = "HYPER_OPT_CWD"  # the submitting process's working directory, for its workers and jobs
DIRECTIONS = ("minimize", "maximize")
STORAGE_TYPES = ("sqlite", "journal", "nfs", "url", "maria", "mysql", "postgresql")

# Allowed ``settings`` per parameter type (``name`` is allowed everywhere).
PARAM_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required, optional)
    "categorical": (("choices",), ()),
    "float": (("low", "high"), ("step", "log")),
    "int": (("low", "high"), ("step", "log")),
    "uniform": (("low", "high"), ()),
    "loguniform": (("low", "high"), ()),
    "discrete_uniform": (("low", "high", "q"), ()),
}

OPTUNA_KEYS = (
    "name", "study_name", "reload", "objective", "metric", "direction", "n_trials", "gpu",
    "save_path", "storage", "storage_type", "sampler", "pruner", "parameters", "enqueue",
    "heartbeat_interval", "grace_period", "max_retry", "max_consecutive_failures",
    "db_retry_seconds", "budget", "stop",
)
SLURM_KEYS = ("jobs", "batch", "bash", "kernel", "gpus_per_node", "tasks_per_worker", "trials_per_job", "array",
              "folder", "signal_delay_s", "python", "gpus_per_trial", "nodes_per_trial")
PBS_KEYS = ("jobs", "batch", "bash", "kernel", "gpus_per_node", "tasks_per_worker", "trials_per_job", "array",
            "python", "gpus_per_trial", "nodes_per_trial")
LOCAL_KEYS = ("workers", "gpus_per_trial")
LOG_KEYS = ("save_path", "level")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# A study name becomes a file name (the journal), a Slurm job name and a #SBATCH/#PBS directive:
# no path separators, no newlines, nothing a shell or a directive parser reads specially.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

# Defaults of optional keys.
DEFAULT_SAVE_DIR = "hyper_opt_results"  # save_path when none is given, beside the YAML
DEFAULT_STUDY_NAME = "hyper_opt"
DEFAULT_SQLITE_FILE = "hyper_opt.db"  # the study's SQLite file under save_path
DEFAULT_METRIC = "val_loss"
DEFAULT_DIRECTION = "minimize"
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_HEARTBEAT_INTERVAL_S = 60
DEFAULT_DB_RETRY_S = 600  # how long a worker waits out a database outage
DEFAULT_MAX_RETRY = 2  # re-queued copies of a trial whose worker died
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10
DEFAULT_SIGNAL_DELAY_S = 120  # Slurm's --signal lead time before the time limit
DEFAULT_SCHEDULER_FOLDER = "slurm"  # under save_path: job scripts, logs, submitit's pickles


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ParameterSpec:
    """One searched parameter: where it goes in the model config and how it is suggested."""

    key: str  # the YAML key: a colon path into the model config, or a plain name
    type: str  # one of PARAM_SETTINGS
    name: str  # optuna's parameter name (``settings.name``, defaulting to the key)
    settings: Mapping[str, Any]  # keyword arguments of the suggest call, without ``name``

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split(":"))


@dataclass(frozen=True)
class ComponentSpec:
    """A sampler or pruner: an optuna class name and its keyword arguments."""

    type: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StorageSpec:
    """Where the study lives.

    ``kind`` is ``sqlite`` (the embedded default, a file under ``save_path``), ``journal``
    (optuna's journal file, for shared file systems) or ``url`` (a database server).
    """

    kind: str
    url: str | None = None  # for sqlite and url
    path: Path | None = None  # for sqlite and journal

    @property
    def is_server(self) -> bool:
        return self.kind == "url" and not (self.url or "").startswith("sqlite")


@dataclass(frozen=True)
class ObjectiveSpec:
    """The user's objective: a Python file or an importable module, and a class name."""

    file: Path | None
    module: str | None
    class_name: str

    def describe(self) -> str:
        where = str(self.file) if self.file else self.module
        return f"{where}:{self.class_name}"


@dataclass(frozen=True)
class OptunaSpec:
    study_name: str
    storage: StorageSpec
    objective: ObjectiveSpec
    metrics: tuple[str, ...]
    directions: tuple[str, ...]
    n_trials: int
    reload: bool
    gpu: bool
    sampler: ComponentSpec | None
    pruner: ComponentSpec | None
    parameters: tuple[ParameterSpec, ...]
    enqueue: tuple[Mapping[str, Any], ...]
    heartbeat_interval: int | None
    grace_period: int | None
    max_retry: int
    max_consecutive_failures: int
    db_retry_seconds: float
    reload_explicit: bool = False  # reload was asked for (file or --reload): the study must exist
    budget: Any = None  # hyper_opt.stopping.BudgetSpec: optuna:budget (GPU-hours, wall time)
    stop: Any = None  # hyper_opt.stopping.StopSpec: optuna:stop (patience, improvement)

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


@dataclass(frozen=True)
class SchedulerSpec:
    """The ``slurm`` (or ``pbs``) section: how many jobs, what each asks for, what runs first."""

    jobs: int
    batch: Mapping[str, Any]
    bash: tuple[str, ...]
    kernel: str | None
    gpus_per_node: int
    tasks_per_worker: int
    array: bool = False
    folder: Path | None = None
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    python: str | None = None
    gpus_per_trial: int = 1  # ranks per trial on each node, one GPU each
    nodes_per_trial: int = 1

    @property
    def workers_per_job(self) -> int:
        """Trials a job runs at a time: one worker per group of gpus_per_trial GPUs, x tasks_per_worker."""
        slots = self.gpus_per_node // self.gpus_per_trial if self.gpus_per_node else 1
        return max(slots, 1) * self.tasks_per_worker


@dataclass(frozen=True)
class HyperConfig:
    """A validated hyperparameter file (with its model file, when one was given)."""

    hyper_path: Path
    model_path: Path | None
    save_path: Path
    log_file: Path | None
    log_level: str
    optuna: OptunaSpec
    slurm: SchedulerSpec | None
    pbs: SchedulerSpec | None
    local_workers: int
    overrides: tuple[str, ...]  # the ``--set`` strings, passed on to workers unchanged
    raw: Mapping[str, Any]  # the hyperparameter YAML after overrides (for the objective)
    format: str = "hyper_opt"  # one of FORMATS: how the file was read (see detect_format)
    base_dir: Path | None = None  # what relative paths in the file were resolved against
    local_gpus_per_trial: int = 1  # local:gpus_per_trial, ranks per trial in a local search

    @property
    def trials_dir(self) -> Path:
        return self.save_path / "trials"

