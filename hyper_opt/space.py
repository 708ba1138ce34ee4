"""The search space: ``optuna:parameters`` checked into specs, specs -> ``trial.suggest_*``, and
the suggested values patched into a copy of the model config.

A parameter key ``optimizer:learning_rate`` is a path into the model config; list items are
addressed by index (``layers:0:units``). A plain name (no colon) that is not a key of the model
config is still suggested, so that ``custom_updates`` can use it, but patches nothing; a colon
path whose first key is in the model config but that does not resolve is refused as a typo
unless the objective file defines ``custom_updates`` (see :func:`broken_path_problems`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hyper_opt.checker import Checker, is_int, is_number
from hyper_opt.keypath import did_you_mean, get_path, has_path, is_broken_path, set_path  # noqa: F401 - re-exported
from hyper_opt.schema import PARAM_SETTINGS, ParameterSpec

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("hyper_opt.config")  # the messages belong to reading the config


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


# --------------------------------------------------------------------------- checking


def broken_paths(model: Mapping[str, Any], parameters: Sequence[ParameterSpec]) -> list[ParameterSpec]:
    """Parameters whose colon path starts in the model config but does not resolve there."""
    return [p for p in parameters if is_broken_path(model, p.path)]


def broken_path_problems(model: Mapping[str, Any], parameters: Sequence[ParameterSpec]) -> list[str]:
    """A colon path that does not resolve is a typo unless ``custom_updates`` reads it: refused."""
    return [f"optuna:parameters:{p.key}: not a key path of the model config ({_first_missing(model, p.path)})"
            f"{did_you_mean(p.path, model)}. A path that custom_updates reads needs custom_updates "
            "defined in the objective file; a plain name (no colon) is suggested without patching."
            for p in broken_paths(model, parameters)]


def _first_missing(model: Mapping[str, Any], path: Sequence[str]) -> str:
    for i in range(2, len(path) + 1):
        if not has_path(model, path[:i]):
            parent = get_path(model, path[:i - 1])
            if isinstance(parent, list):
                return f"{':'.join(path[:i - 1])} has {len(parent)} item(s), no index {path[i - 1]}"
            return f"{':'.join(path[:i - 1])} has no key {path[i - 1]!r}"
    return "?"




def check_parameters(chk: Checker, raw: Any) -> tuple[ParameterSpec, ...]:
    """``optuna:parameters`` -> specs; every problem is added to ``chk`` with its key path."""
    section = chk.mapping(raw, "optuna:parameters")
    specs: list[ParameterSpec] = []
    seen_names: dict[str, str] = {}
    for key, body in section.items():
        path = f"optuna:parameters:{key}"
        key = str(key)
        if not isinstance(body, Mapping):
            chk.add(path, f"must be a mapping with 'type' and 'settings', got {body!r}")
            continue
        chk.unknown_keys(body, ("type", "settings"), path)
        ptype = body.get("type")
        if ptype not in PARAM_SETTINGS:
            chk.add(f"{path}:type", f"got {ptype!r}; allowed: {', '.join(PARAM_SETTINGS)}")
            continue
        settings = body.get("settings")
        if not isinstance(settings, Mapping):
            chk.add(f"{path}:settings", f"must be a mapping of {ptype} settings, got {settings!r}")
            continue
        settings = dict(settings)
        name = settings.pop("name", key)
        if not isinstance(name, str) or not name:
            chk.add(f"{path}:settings:name", f"must be a non-empty string, got {name!r}")
            continue
        if name in seen_names:
            first = next(p for p in specs if p.key == seen_names[name]) if any(
                p.key == seen_names[name] for p in specs) else None
            if first is None or first.type != ptype or dict(first.settings) != settings:
                chk.add(f"{path}:settings:name",
                        f"{name!r} is already the name of parameter {seen_names[name]!r}; names must be "
                        "unique (or the two keys must have the same type and settings)")
                continue
            logger.warning("%s:settings:name: %r is also the name of %r, so both get the same value in "
                           "every trial (as with aimlutils); give it its own name to search it separately",
                           path, name, seen_names[name])
        seen_names.setdefault(name, key)
        required, optional = PARAM_SETTINGS[ptype]
        ok = True
        for req in required:
            if req not in settings:
                chk.add(f"{path}:settings", f"missing {req!r} (a {ptype} parameter needs {', '.join(required)})")
                ok = False
        for extra in settings:
            if extra not in required and extra not in optional:
                chk.add(f"{path}:settings:{extra}",
                        f"not a {ptype} setting (allowed: {', '.join(('name',) + required + optional)})")
                ok = False
        if ok and not _check_values(chk, path, ptype, settings):
            ok = False
        if ok:
            specs.append(ParameterSpec(key=key, type=ptype, name=name, settings=settings))
    return tuple(specs)


def _check_values(chk: Checker, path: str, ptype: str, s: Mapping[str, Any]) -> bool:
    before = len(chk.problems)
    if ptype == "categorical":
        choices = s["choices"]
        if not isinstance(choices, list) or not choices:
            chk.add(f"{path}:settings:choices", f"must be a non-empty list, got {choices!r}")
        elif not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            chk.add(f"{path}:settings:choices",
                    f"choices must be None, bool, int, float or str (optuna stores them), got {choices!r}")
        return len(chk.problems) == before
    low, high = s["low"], s["high"]
    number = is_int if ptype == "int" else is_number
    kind = "an integer" if ptype == "int" else "a number"
    for key, value in (("low", low), ("high", high)):
        if not number(value):
            chk.add(f"{path}:settings:{key}", f"must be {kind}, got {value!r}")
    if len(chk.problems) != before:
        return False
    if low > high:
        chk.add(f"{path}:settings", f"low ({low!r}) must not be greater than high ({high!r})")
    log = ptype == "loguniform" or bool(s.get("log", False))
    if "log" in s and not isinstance(s["log"], bool):
        chk.add(f"{path}:settings:log", f"must be true or false, got {s['log']!r}")
    if log and low <= 0:
        chk.add(f"{path}:settings:low", f"must be > 0 on a log scale, got {low!r}")
    step = s.get("q" if ptype == "discrete_uniform" else "step")
    if step is not None:
        step_key = "q" if ptype == "discrete_uniform" else "step"
        if not number(step) or step <= 0:
            chk.add(f"{path}:settings:{step_key}", f"must be {kind} > 0, got {step!r}")
        elif log and ptype != "int":
            chk.add(f"{path}:settings", "'step' and 'log: true' cannot be used together")
        elif log and ptype == "int" and step != 1:
            chk.add(f"{path}:settings", "an int parameter with 'log: true' needs step 1")
    return len(chk.problems) == before



def value_problem(spec: ParameterSpec, value: Any) -> str | None:
    """Why ``value`` is not a value ``spec`` can take (an enqueued trial's), or None: the type,
    the range, the step, the choices. optuna would run an out-of-range value as it is, and a
    string for a number fails only when the trial runs."""
    s = spec.settings
    if spec.type == "categorical":
        same = [c for c in s["choices"] if c == value and (isinstance(c, bool) == isinstance(value, bool))]
        return None if same else f"{value!r} is not one of the choices {s['choices']!r}"
    number = is_int if spec.type == "int" else is_number
    if not number(value):
        return f"must be {'an integer' if spec.type == 'int' else 'a number'}, got {value!r}"
    low, high = s["low"], s["high"]
    if not low <= value <= high:
        return f"{value!r} is outside the range [{low!r}, {high!r}]"
    step = s.get("q" if spec.type == "discrete_uniform" else "step")
    if step is not None:
        k = (value - low) / step
        if abs(k - round(k)) > 1e-8 * max(1.0, abs(k)):
            return f"{value!r} is not low + a multiple of the step ({low!r} + k x {step!r})"
    return None
