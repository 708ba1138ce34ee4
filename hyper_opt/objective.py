"""``BaseObjective``: what a user's ``Objective`` class inherits (:mod:`hyper_opt.loader` loads it).

A user writes one method, ``train(trial, conf)``, returning a dict that holds the metric(s).
The base class suggests the parameters, patches them into a copy of the model config, calls
``custom_updates(trial, conf)`` when the objective file defines one, calls ``train`` and turns
the returned dict into the value(s) optuna records. It accepts both constructor shapes users
have: the aimlutils one ``(study, config, metric, device)`` and echo-opt's
``(config, metric, device)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt import space
from hyper_opt.exceptions import Interrupted, MetricMissingError, MetricValueError, ObjectiveError
from hyper_opt.storage import with_db_retry

if TYPE_CHECKING:
    import optuna

    from hyper_opt.schema import ParameterSpec

logger = logging.getLogger(__name__)

RESUME_ENV = "HYPER_OPT_RESUME_CHECKPOINT"  # set on a distributed trial's ranks (hyper_opt.distributed.launch)

CustomUpdates = Callable[[Any, dict], dict]


class BaseObjective:
    """Subclass this and write ``train(self, trial, conf) -> dict``.

    Attributes set for ``train`` to use: ``self.config`` (the model config, with the
    hyperparameter file's ``optuna`` section under ``config["optuna"]`` as the older tools did),
    ``self.metric`` (a name, or a list for multi-objective), ``self.device`` (``"cuda:0"`` when
    the worker has exactly one visible GPU and torch sees it, else ``"cpu"``), ``self.study``
    (the optuna study, also with echo-opt-style constructors) and ``self.save_path``.
    """

    auto_custom_updates = True  # call the objective file's module-level custom_updates(trial, conf)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = ["study", "config", "metric", "device"]
        if args and isinstance(args[0], Mapping):  # echo-opt: (config, metric, device)
            names = names[1:]
        if len(args) > len(names):
            raise TypeError(f"BaseObjective takes at most 4 arguments (study, config, metric, device), got {len(args)}")
        values = {"study": None, "config": None, "metric": "val_loss", "device": "cpu"}
        values.update(dict(zip(names, args)))
        for key, value in kwargs.items():
            if key not in values:
                raise TypeError(f"BaseObjective got an unexpected argument {key!r}")
            values[key] = value
        if not isinstance(values["config"], Mapping):
            raise TypeError(f"BaseObjective needs the model config (a mapping), got {values['config']!r}")
        self.study = values["study"]
        self.config: dict[str, Any] = values["config"]  # type: ignore[assignment]
        self.metric = values["metric"]
        self.device = values["device"]
        self.save_path: Path | None = None
        self.model_path: Path | None = None  # the model config file; set by instantiate()
        self._parameters: Sequence[ParameterSpec] = ()
        self._custom_updates: CustomUpdates | None = None
        self._stop_event: Any = None  # set by the worker: a threading.Event, set when the job ends
        self._db_retry_seconds = 600.0  # set by the worker: optuna:db_retry_seconds, for report's storage calls
        self._metrics: tuple[str, ...] = (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    # ------------------------------------------------------------------ for users

    def train(self, trial: optuna.Trial, conf: dict[str, Any]) -> Mapping[str, Any]:
        """Train one model with ``conf``; return a dict holding the metric(s)."""
        raise NotImplementedError("write train(self, trial, conf) in your Objective class")

    def report(self, trial: optuna.Trial, value: float, step: int) -> None:
        """Report an intermediate value; raise ``optuna.TrialPruned`` when the pruner says so.

        This is also the trial's safe point: when the job is about to end (Slurm's warning
        signal before a time limit or preemption) the trial stops here, to be resumed from its
        last :meth:`save_checkpoint` when it runs again.
        """
        import optuna

        seconds = self._db_retry_seconds
        inherited = getattr(getattr(trial, "_cached_frozen_trial", None), "intermediate_values", {})
        if step not in inherited:  # a resumed copy keeps its original's curve: a step done again is not re-sent
            with_db_retry(lambda: trial.report(float(value), step), seconds=seconds, what=f"reporting step {step}")
        if self._stop_event is not None and self._stop_event.is_set():
            raise Interrupted(f"the job is ending; trial stopped at step {step}, to be resumed")
        if with_db_retry(trial.should_prune, seconds=seconds, what=f"asking the pruner at step {step}"):
            raise optuna.TrialPruned(f"pruned at step {step} with value {float(value):.6g}")

    def checkpoint_path(self, trial: optuna.Trial) -> Path:
        """A folder for this trial's checkpoints; a retried copy of the trial gets the same one."""
        origin = trial.user_attrs.get("retry_of", trial.number) if hasattr(trial, "user_attrs") else trial.number
        base = self.save_path if self.save_path is not None else Path(".")
        (base / "checkpoints").mkdir(parents=True, exist_ok=True, mode=0o700)
        path = base / "checkpoints" / f"trial_{origin}"
        path.mkdir(exist_ok=True, mode=0o700)  # private: load_checkpoint unpickles what is here
        return path

    def save_checkpoint(self, trial: optuna.Trial, state: Any) -> Path:
        """Save ``state`` (anything picklable; torch tensors too) atomically for this trial."""
        import pickle

        from hyper_opt.results import atomic_open

        path = self.checkpoint_path(trial) / "checkpoint.pkl"
        if os.environ.get("RANK", "0") != "0" and getattr(trial, "distributed", False):
            return path  # a distributed trial's checkpoint is rank 0's; the other ranks load it
        with atomic_open(path, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            pickle.dump(state, fh)
        if hasattr(trial, "set_user_attr"):  # when: the work after it is what a requeued copy redoes
            import time

            from hyper_opt.accounting import CHECKPOINT_ATTR

            with_db_retry(lambda: trial.set_user_attr(CHECKPOINT_ATTR, time.time()), seconds=self._db_retry_seconds,
                          what="recording the checkpoint's time")
        return path

    def load_checkpoint(self, trial: optuna.Trial) -> Any | None:
        """The state last saved for this trial (or the trial it retries), or None."""
        import pickle

        path = self.checkpoint_path(trial) / "checkpoint.pkl"
        if getattr(trial, "distributed", False) and RESUME_ENV in os.environ:  # a rank: the one the trial began with
            if not os.environ[RESUME_ENV]:
                return None
            path = Path(os.environ[RESUME_ENV])
        if not path.exists():
            return None
        _check_private(path)
        with open(path, "rb") as fh:
            return pickle.load(fh)

    # ------------------------------------------------------------------ plumbing

    def bind(self, *, parameters: Sequence[ParameterSpec], custom_updates: CustomUpdates | None,
             device: str, study: Any, save_path: Path) -> None:
        """Called by the worker after construction, whatever constructor the user wrote."""
        self._parameters = tuple(parameters)
        self._custom_updates = custom_updates if self.auto_custom_updates else None
        self.device = device
        if self.study is None:
            self.study = study
        self.save_path = save_path
        if isinstance(self.metric, str):
            self._metrics = (self.metric,)
        else:
            self._metrics = tuple(self.metric)

    def update_config(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every parameter and return a patched deep copy of the model config."""
        with_db_retry(lambda: space.suggest_all(trial, self._parameters), seconds=self._db_retry_seconds,
                      what="suggesting the trial's parameters")  # a parameter suggested again keeps its value
        conf = space.patch(self.config, self._parameters, trial.params)
        if self._custom_updates is not None:
            updated = self._custom_updates(trial, conf)
            if updated is not None:
                conf = updated
        return conf

    def values(self, results: Any) -> float | list[float]:
        """The metric value(s) from ``train``'s dict; a missing metric fails the trial."""
        if not isinstance(results, Mapping):
            raise MetricMissingError(f"train() must return a dict holding {list(self._metrics)}, "
                                     f"got {type(results).__name__}: {results!r:.200}")
        out = []
        for name in self._metrics:
            if name not in results:
                raise MetricMissingError(f"train() returned no {name!r} (the metric being optimised); "
                                         f"it returned: {', '.join(map(str, results)) or 'nothing'}")
            if _is_bool(results[name]):  # float(True) is 1.0: a flag returned by mistake, not a metric
                raise MetricValueError(f"train() returned {name}={results[name]!r}, a boolean, which is not "
                                       "a metric value; return a number")
            try:
                number = float(results[name])
            except (TypeError, ValueError):
                raise MetricValueError(f"train() returned {name}={results[name]!r:.200}, "
                                       "which is not a number") from None
            if not math.isfinite(number):  # optuna would fail a NaN silently; inf would rank first or last
                raise MetricValueError(f"train() returned {name}={number}, which is not a finite number "
                                       "(the training diverged?); the trial fails")
            out.append(number)
        return out[0] if len(out) == 1 else out

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        conf = self.update_config(trial)
        results = self.train(trial, conf)
        values = self.values(results)
        self.record_metrics(trial, self.metrics(results))
        return values

    @staticmethod
    def metrics(results: Mapping[str, Any]) -> dict[str, float | int | str]:
        """What of ``train``'s dict is kept with the trial (the ``metrics`` attribute): its JSON-able values."""
        extra = {str(k): _jsonable(v) for k, v in results.items()}
        return {k: v for k, v in extra.items() if v is not None}

    def record_metrics(self, trial: optuna.Trial, metrics: Mapping[str, Any]) -> None:
        with_db_retry(lambda: trial.set_user_attr("metrics", dict(metrics)),
                      seconds=self._db_retry_seconds, what="recording the trial's metrics")


def _check_private(path: Path) -> None:
    """Unpickling runs code: refuse a checkpoint that another user could have written (the file
    or its folders writable by group or others, or owned by someone else), as ssh does its keys."""
    for part in (path, path.parent, path.parent.parent):
        st = part.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise ObjectiveError(
                f"refusing to load the checkpoint {path}: {part} is writable by other users or owned by "
                f"another (mode {st.st_mode & 0o777:o}, uid {st.st_uid}); loading a checkpoint runs code from "
                f"it. If it is yours, make it private: chmod -R go-w {path.parent.parent}")


def _is_bool(value: Any) -> bool:
    """A Python or numpy boolean (numpy's ``bool_`` is no ``bool``, and ``float()`` takes both)."""
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__.split(".")[0] == "numpy" and kind.__name__ in ("bool_", "bool"))


def _jsonable(value: Any) -> float | int | str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):  # e.g. a per-epoch history beside the metric: kept as JSON text
        import json

        items = [_jsonable(v) for v in value]
        return json.dumps(items) if all(i is not None for i in items) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else str(number)


# --------------------------------------------------------------------------- device


def trial_device(gpu: bool, env: Mapping[str, str] | None = None) -> str:
    """The device trials (and ``rerun``/``test``) run on: with ``optuna:gpu``, or when the
    scheduler gave the process a GPU (``CUDA_VISIBLE_DEVICES``), :func:`pick_device`; else CPU."""
    env = os.environ if env is None else env
    return pick_device(env) if gpu or env.get("CUDA_VISIBLE_DEVICES") else "cpu"


def pick_device(env: Mapping[str, str] | None = None) -> str:
    """``cuda:0`` when exactly one GPU is visible and torch sees it, else ``cpu``; on a rank of a
    distributed trial (which sees the trial's GPUs, as under torchrun) ``cuda:<LOCAL_RANK>``."""
    env = os.environ if env is None else env
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = 0
    local = env.get("LOCAL_RANK", "")
    if len(visible) > 1 and local.isdigit() and int(env.get("LOCAL_WORLD_SIZE", "0") or 0) > 1:
        index, visible = int(local), [visible[int(local)]] if int(local) < len(visible) else []
    if len(visible) != 1 or visible[0].strip() in ("-1", "NoDevFiles"):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    try:
        return f"cuda:{index}" if torch.cuda.is_available() and torch.cuda.device_count() > index else "cpu"
    except Exception:  # a broken driver must not stop the search
        return "cpu"
