"""echo-opt's names (``echo.src.*``), answered by hyper_opt while the real echo-opt is absent.

The behaviour follows echo-opt 1.3 where objective files rely on it; what differs is listed in
docs/migrating.md.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
import yaml

from hyper_opt import pruning
from hyper_opt.compat._legacy import LegacyObjective, supported_trials, trial_suggest_loader
from hyper_opt.exceptions import ConfigError
from hyper_opt.registry import build_component, public_classes
from hyper_opt.schema import ComponentSpec

logger = logging.getLogger("echo")

supported_pruners = sorted(public_classes("pruners"))
supported_samplers = sorted(public_classes("samplers"))

__all__ = ["BaseObjective", "KerasPruningCallback", "configure_pruner", "configure_sampler",
           "configure_storage", "config_check", "pruners", "recursive_config_reader",
           "recursive_update", "samplers", "supported_trials", "trial_suggest_loader", "copy", "glob",
           "defaultdict", "warnings"]


class BaseObjective(LegacyObjective):
    """echo-opt's base class: ``__init__(self, config, metric="val_loss", device="cpu")``."""

    def set_properties(self, node_id: int | None = None, device: Any = "cpu") -> None:
        """echo-opt's second set-up step; hyper_opt sets the device itself, so this only records them."""
        self.worker_index = node_id
        if isinstance(device, list):
            self.device = [f"cuda:{d}" for d in device]  # type: ignore[assignment]
        elif device != "cpu":
            self.device = device if str(device).startswith(("cuda", "cpu")) else f"cuda:{device}"


def KerasPruningCallback(trial: Any, monitor: str, interval: int = 1) -> Any:  # noqa: N802 - a class to users
    """echo-opt's callback: reports ``monitor`` every ``interval`` epochs and prunes; a metric
    missing from the epoch logs is skipped (with one warning), as echo-opt did."""
    return pruning.KerasPruningCallback(trial, monitor, interval=interval, on_missing="warn")


def pruners(pruner: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """A pruner from ``{type: Name, **kwargs}``; an unknown name is refused with the valid ones."""
    return _component(pruner, "pruners")


def samplers(sampler: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    """A sampler from ``{type: Name, **kwargs}``; an unknown name is refused with the valid ones."""
    return _component(sampler, "samplers")


def _component(raw: Mapping[str, Any], kind: str) -> Any:
    kwargs = dict(raw)
    name = kwargs.pop("type", None)
    valid = public_classes(kind)
    if name not in valid:
        raise ConfigError([f"{kind[:-1]} type {name!r} is not valid; allowed: {', '.join(sorted(valid))}"])
    return build_component(ComponentSpec(name, kwargs), kind)


def configure_storage(hyper_config: Mapping[str, Any]) -> Any:
    """echo-opt's storage from ``save_path`` + ``optuna.storage``/``storage_type``."""
    save_path = hyper_config["save_path"]
    opt = hyper_config["optuna"]
    storage_type, storage = opt.get("storage_type", "sqlite"), opt["storage"]
    if storage_type == "sqlite":
        return f"sqlite:///{os.path.join(save_path, storage)}"
    if storage_type == "nfs":
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(os.path.join(save_path, storage)))
    return storage


def configure_sampler(hyper_config: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    opt = hyper_config["optuna"]
    if "sampler" not in opt:
        return optuna.samplers.TPESampler()
    return samplers(opt["sampler"])


def configure_pruner(hyper_config: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    opt = hyper_config["optuna"]
    if "pruner" not in opt:
        return optuna.pruners.NopPruner()
    return pruners(opt["pruner"])


def recursive_config_reader(_dict: Mapping[str, Any], path: list[str] | None = None) -> Iterator[tuple[list[str], Any]]:
    """Yield ``(key path, value)`` for every leaf of a nested mapping."""
    path = [] if path is None else path
    for key, value in _dict.items():
        if isinstance(value, Mapping):
            yield from recursive_config_reader(value, path + [key])
        else:
            yield path + [key], value


def recursive_update(nested_keys: list[str], dictionary: dict[str, Any], update: Any) -> None:
    """Set ``dictionary[k0][k1]...[kn] = update``."""
    if isinstance(dictionary, dict) and len(nested_keys) > 1:
        recursive_update(nested_keys[1:], dictionary[nested_keys[0]], update)
    else:
        dictionary[nested_keys[0]] = update


def config_check(hyper_config: Any, model_config: Any, file_check: bool = False) -> bool:
    """echo-opt's check; hyper_opt validates both files fully before any study is created."""
    if file_check:
        from pathlib import Path

        from hyper_opt.config import load_config

        load_config(Path(hyper_config), Path(model_config))
        return True
    if not isinstance(hyper_config, Mapping) or "optuna" not in hyper_config:
        raise ConfigError(["the hyperparameter config needs an optuna section"])
    return True
