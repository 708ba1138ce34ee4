"""The search space: parameter specs -> ``trial.suggest_*``, and colon paths into the model config.

A parameter key ``optimizer:learning_rate`` is a path into the model config; list items are
addressed by index (``layers:0:units``). A key that is not a path of the model config is still
suggested, so that ``custom_updates`` can use it, but patches nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from hyper_opt.config import ParameterSpec


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        if part in node:
            return node[part]
        # YAML keys may be ints or bools; a colon path is always text.
        for key in node:
            if str(key) == part:
                return node[key]
        raise KeyError(part)
    if isinstance(node, list):
        return node[_index(part, len(node))]
    raise TypeError(f"cannot step into {type(node).__name__} with {part!r}")


def _index(part: str, length: int) -> int:
    index = int(part)  # ValueError -> not a list index
    if not -length <= index < length:
        raise IndexError(part)
    return index


def get_path(config: Any, path: Sequence[str]) -> Any:
    """The value at ``path``; KeyError/IndexError/TypeError/ValueError when it is not there."""
    node = config
    for part in path:
        node = _step(node, part)
    return node


def has_path(config: Any, path: Sequence[str]) -> bool:
    try:
        get_path(config, path)
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return True


def set_path(config: Any, path: Sequence[str], value: Any) -> None:
    """Set an existing path in place (the path must exist: see :func:`has_path`)."""
    parent = get_path(config, path[:-1])
    last = path[-1]
    if isinstance(parent, list):
        parent[_index(last, len(parent))] = value
        return
    assert isinstance(parent, MutableMapping)
    for key in parent:
        if key == last or str(key) == last:
            parent[key] = value
            return
    parent[last] = value


def suggest(trial: optuna.trial.BaseTrial, spec: ParameterSpec) -> Any:
    """Suggest one parameter with optuna's current (non-deprecated) API."""
    s = spec.settings
    if spec.type == "categorical":
        return trial.suggest_categorical(spec.name, s["choices"])
    if spec.type == "int":
        return trial.suggest_int(spec.name, s["low"], s["high"], step=s.get("step", 1), log=s.get("log", False))
    if spec.type == "float":
        return trial.suggest_float(spec.name, s["low"], s["high"], step=s.get("step"), log=s.get("log", False))
    if spec.type == "uniform":
        return trial.suggest_float(spec.name, s["low"], s["high"])
    if spec.type == "loguniform":
        return trial.suggest_float(spec.name, s["low"], s["high"], log=True)
    if spec.type == "discrete_uniform":
        return trial.suggest_float(spec.name, s["low"], s["high"], step=s["q"])
    raise ValueError(f"unknown parameter type {spec.type!r}")  # config.py refuses these earlier


def suggest_all(trial: optuna.trial.BaseTrial, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Suggest every parameter; return {key: value} (keys as written in the YAML)."""
    return {spec.key: suggest(trial, spec) for spec in specs}


def patch(model_config: Mapping[str, Any], specs: Sequence[ParameterSpec],
          values_by_name: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the model config with each parameter value written at its path.

    ``values_by_name`` is keyed by optuna parameter name (``trial.params``); parameters whose
    key is not a path of the config are left out of the copy.
    """
    conf = copy.deepcopy(dict(model_config))
    for spec in specs:
        if spec.name in values_by_name and has_path(conf, spec.path):
            set_path(conf, spec.path, values_by_name[spec.name])
    return conf
