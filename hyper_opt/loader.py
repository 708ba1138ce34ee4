"""Finding, importing and constructing the user's objective class.

``load_module`` imports the objective (a ``.py`` file or an importable module; the predecessors'
``echo.src.*``/``aimlutils.hyper_opt.*`` names resolve through :mod:`hyper_opt.compat`),
``instantiate`` constructs it with whichever constructor the user wrote, and
``check_objective_config`` runs its optional ``validate_config`` hook on the model config.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt import compat
from hyper_opt import config as _config
from hyper_opt.exceptions import ConfigError, ObjectiveError
from hyper_opt.keypath import did_you_mean
from hyper_opt.objective import BaseObjective
from hyper_opt.schema import CWD_ENV, HyperConfig, ObjectiveSpec, ParameterSpec
from hyper_opt.secrets import mask_url
from hyper_opt.space import broken_path_problems, broken_paths

logger = logging.getLogger("hyper_opt.objective")


def load_config(hyper_path: str | Path, model_path: str | Path | None = None, *,
                overrides: Sequence[str] = (), strict: bool = False,
                ) -> tuple[HyperConfig, dict[str, Any] | None]:
    """:func:`hyper_opt.config.load_config`, with the objective's ``validate_config`` problems with
    the model file reported in the same round as the hyperparameter file's."""
    return _config.load_config(hyper_path, model_path, overrides=overrides, strict=strict,
                               check_model=objective_problems)


def load_module(spec: ObjectiveSpec) -> Any:
    """Import the objective's module (a file, or an importable module)."""
    if spec.module is not None:
        try:
            return importlib.import_module(spec.module)
        except Exception as err:
            raise ObjectiveError(f"importing objective module {spec.module!r} failed: {err}") from err
    assert spec.file is not None
    return import_file(spec.file, what="objective file")


def import_file(path: Path, *, what: str) -> Any:
    """Import a user's Python file once per process (its folder goes on sys.path, so that it can
    import its sibling modules; so does the directory the search was started from, as it is for
    ``python -m hyper_opt`` there, in every worker and job whatever their working directory: a
    project's objective importing its own package, ``from ptype.trainer import ...``); errors
    become ObjectiveError naming ``what`` and the file."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    started_in = os.environ.get(CWD_ENV)
    if started_in and started_in not in sys.path:
        sys.path.append(started_in)
    name = f"hyper_opt_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    compat.install()  # echo.src.* / aimlutils.hyper_opt.* resolve when the predecessor is absent
    before = set(compat.used())
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ObjectiveError(f"cannot load {what} {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ObjectiveError(f"importing {what} {path} failed: {type(err).__name__}: {err}") from err
    aliased = [n for n in compat.used() if n not in before]
    if aliased:
        logger.info("%s: %s", path.name, compat.migration_hint(aliased))
    return module


def objective_config(config: HyperConfig, model: Mapping[str, Any]) -> dict[str, Any]:
    """The config an Objective is constructed with: the model config plus, as aimlutils and
    echo-opt did, the hyperparameter file's ``optuna`` section under ``optuna`` (unless the model
    config has its own ``optuna`` key)."""
    conf = copy.deepcopy(dict(model))
    if "optuna" not in conf:
        section = copy.deepcopy(dict(config.raw.get("optuna") or {}))
        section["save_path"] = str(config.save_path)
        if isinstance(section.get("storage"), str):  # user code never sees the database password
            section["storage"] = mask_url(section["storage"])
        conf["optuna"] = section
    return conf


def instantiate(config: HyperConfig, model: Mapping[str, Any], *, study: Any, device: str) -> BaseObjective:
    """Load the user's class and construct it with whichever signature it declares."""
    module = load_module(config.optuna.objective)
    cls = getattr(module, config.optuna.objective.class_name, None)
    if not inspect.isclass(cls):
        raise ObjectiveError(f"{config.optuna.objective.describe()} is not a class")
    metric: str | list[str] = (config.optuna.metrics[0] if len(config.optuna.metrics) == 1
                               else list(config.optuna.metrics))
    conf = objective_config(config, model)
    available = {"study": study, "config": conf, "metric": metric, "device": device}
    try:
        params = [p for p in inspect.signature(cls.__init__).parameters.values()][1:]
    except (TypeError, ValueError):
        params = []
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if named and all(p.name in available for p in named if p.default is p.empty):
        kwargs = {p.name: available[p.name] for p in named if p.name in available}
        if takes_var_kw:
            kwargs.update({k: v for k, v in available.items() if k != "study" and k not in kwargs})
    elif not named and takes_var_kw:
        kwargs = {k: v for k, v in available.items() if k != "study"}
    else:
        raise ObjectiveError(
            f"{config.optuna.objective.describe()}.__init__ takes ({', '.join(p.name for p in params)}); "
            "hyper_opt passes study, config, metric and device by name: use "
            "__init__(self, config, metric='val_loss', device='cpu') or add study first")
    try:
        objective = cls(**kwargs)
    except Exception as err:
        raise ObjectiveError(f"constructing {config.optuna.objective.describe()} failed: "
                             f"{type(err).__name__}: {err}") from err
    if not isinstance(objective, BaseObjective):
        raise ObjectiveError(f"{config.optuna.objective.describe()} must subclass hyper_opt.BaseObjective "
                             "(from hyper_opt import BaseObjective)")
    objective.bind(parameters=config.optuna.parameters,
                   custom_updates=getattr(module, "custom_updates", None),
                   device=device, study=study, save_path=config.save_path)
    objective.model_path = config.model_path  # relative paths in the model config resolve against its folder
    return objective



def check_objective_config(config: HyperConfig, model: Mapping[str, Any] | None) -> None:
    """Let the objective class check the model config before any trial runs.

    An objective class may define ``validate_config(model_config) -> list[str]`` (a classmethod or
    staticmethod returning problems, each naming its key path); the built-in metric-learning
    objective does. Problems are raised as one ConfigError naming the model file.
    """
    if model is None:
        return
    try:
        load_module(config.optuna.objective)
    except ObjectiveError as err:
        raise ConfigError([f"optuna:objective: {err}"], source=str(config.hyper_path)) from None
    problems = objective_problems(config.optuna.objective, model, parameters=config.optuna.parameters,
                                  model_path=config.model_path, metrics=config.optuna.metrics)
    if problems:
        raise ConfigError(problems, source=str(config.model_path or "the model config"))


def objective_problems(objective: ObjectiveSpec, model: Mapping[str, Any], *,
                       parameters: Sequence[ParameterSpec], model_path: Path | None,
                       metrics: Sequence[str]) -> list[str]:
    """The objective class's ``validate_config`` problems with the model config ([] when it has
    none, or when the objective cannot be imported: that is reported for the hyperparameter file)."""
    try:
        module = load_module(objective)
    except ObjectiveError:
        return []
    problems = [] if uses_custom_updates(module, objective) else broken_path_problems(model, parameters)
    validate = getattr(getattr(module, objective.class_name, None), "validate_config", None)
    if validate is None:
        return problems
    accepted = inspect.signature(validate).parameters
    extra: dict[str, Any] = {"parameters": parameters,
                             "base_dir": model_path.parent if model_path else None,
                             "metric": metrics[0] if len(metrics) == 1 else list(metrics)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    return problems + list(validate(model, **{k: v for k, v in extra.items() if takes_any or k in accepted}) or [])


def uses_custom_updates(module: Any, objective: ObjectiveSpec) -> bool:
    """Whether the objective file defines ``custom_updates`` (module-level, or on its class)."""
    cls = getattr(module, objective.class_name, None)
    return callable(getattr(module, "custom_updates", None)) or callable(getattr(cls, "custom_updates", None))


def warn_broken_paths(config: HyperConfig, model: Mapping[str, Any] | None) -> list[str]:
    """At start-up: one warning per colon path that does not resolve, when custom_updates is
    defined (otherwise they were refused). Returns the keys warned about."""
    if model is None:
        return []
    try:
        module = load_module(config.optuna.objective)
    except ObjectiveError:
        return []
    if not uses_custom_updates(module, config.optuna.objective):
        return []
    broken = broken_paths(model, config.optuna.parameters)
    for p in broken:
        logger.warning("optuna:parameters:%s: not a key path of the model config%s; it is suggested for "
                       "custom_updates only and patches nothing", p.key, did_you_mean(p.path, model))
    return [p.key for p in broken]

