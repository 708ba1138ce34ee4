"""The optuna-metric-learning interface: a model-definition file instead of YAML components.

A model-definition file (``model_def_fn: path.py`` in the model YAML, relative to it) defines
``get(conf, trial)``, called once per trial with the trial's model config and the optuna trial
(so it may call ``trial.suggest_*`` itself). It returns a dict:

* ``"modules"``: a function of no arguments returning ``(models, optimizers, loss_funcs)``
  (optionally a fourth item, ``mining_funcs``), or a dict of trainer keyword arguments with at
  least those three keys (``mining_funcs``, ``loss_weights``, ``lr_schedulers`` allowed).
  It is called once per fold, so every fold starts from fresh models.
* ``"fold_generator"``: a generator function of no arguments yielding, per fold,
  ``(train_dataset, dev_dataset, train_sampler, batch_size)``; datasets yield ``(data, label)``.
* optionally ``"test_dataset"``: a function of no arguments returning the held-out test
  Dataset, used by ``hyper-opt test`` (without it that command has nothing to evaluate).

This is the convention of kosuke1701's optuna-metric-learning (``--model-def-fn``). Training,
evaluation, pruning, patience and saving are the same as for YAML-defined searches; the
trainer is the model YAML's ``trainer`` (default MetricLossOnly) and ``max_epochs``,
``patience``, ``iterations_per_epoch`` and ``evaluation`` are read from the model YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from hyper_opt.exceptions import ObjectiveError
from hyper_opt.loader import import_file

TRAINER_KEYS = ("models", "optimizers", "loss_funcs", "mining_funcs", "loss_weights", "lr_schedulers")


def load_model_def(path: Path) -> ModuleType:
    """Import a model-definition file (its folder goes on ``sys.path`` for its own imports)."""
    from hyper_opt.metric_learning.paths import expand_path

    path = expand_path(path).resolve()
    if not path.is_file():
        raise ObjectiveError(f"model_def_fn: file not found: {path}")
    module = import_file(path, what="model_def_fn file")
    if not callable(getattr(module, "get", None)):
        raise ObjectiveError(f"model_def_fn: {path} defines no function get(conf, trial)")
    return module


def constructors(module: ModuleType, conf: Mapping[str, Any], trial: Any) -> dict[str, Callable[..., Any]]:
    """``module.get(conf, trial)``, checked."""
    result = module.get(conf, trial)
    if not isinstance(result, Mapping):
        raise ObjectiveError(f"model_def_fn: get(conf, trial) must return a dict with 'modules' and "
                             f"'fold_generator', got {type(result).__name__}")
    for key in ("modules", "fold_generator"):
        if not callable(result.get(key)):
            raise ObjectiveError(f"model_def_fn: get(conf, trial)[{key!r}] must be a function, got {result.get(key)!r}")
    return dict(result)


def trainer_kwargs(modules_result: Any) -> dict[str, Any]:
    """What ``modules()`` returned, as trainer keyword arguments."""
    if isinstance(modules_result, Mapping):
        unknown = [k for k in modules_result if k not in TRAINER_KEYS]
        missing = [k for k in ("models", "optimizers", "loss_funcs") if k not in modules_result]
        if unknown or missing:
            raise ObjectiveError(f"model_def_fn: modules() returned a dict with keys {sorted(modules_result)}; "
                                 f"it needs models, optimizers, loss_funcs and may have {', '.join(TRAINER_KEYS[3:])}")
        out = dict(modules_result)
    elif isinstance(modules_result, (tuple, list)) and len(modules_result) in (3, 4):
        out = dict(zip(("models", "optimizers", "loss_funcs", "mining_funcs"), modules_result))
    else:
        raise ObjectiveError("model_def_fn: modules() must return (models, optimizers, loss_funcs) "
                             f"or a dict of trainer arguments, got {type(modules_result).__name__}")
    for key, value in out.items():
        if value is not None and not isinstance(value, Mapping):
            raise ObjectiveError(f"model_def_fn: modules()[{key!r}] must be a dict, got {type(value).__name__}")
    if "trunk" not in (out.get("models") or {}):
        raise ObjectiveError("model_def_fn: modules() models must contain 'trunk'")
    out["mining_funcs"] = dict(out.get("mining_funcs") or {})
    return out


def unpack_fold(item: Any, index: int) -> tuple[Any, Any, Any, int]:
    if not isinstance(item, (tuple, list)) or len(item) != 4:
        raise ObjectiveError(f"model_def_fn: fold_generator() item {index} must be (train_dataset, dev_dataset, "
                             f"train_sampler, batch_size), got {type(item).__name__}")
    train, dev, sampler, batch_size = item
    return train, dev, sampler, int(batch_size)
