"""Finding, importing and constructing the user's objective class.

``load_module`` imports the objective (a ``.py`` file or an importable module; the predecessors'
``echo.src.*``/``aimlutils.hyper_opt.*`` names resolve through :mod:`hyper_opt.compat`),
``instantiate`` constructs it with whichever constructor the user wrote, and
``check_objective_config`` runs its optional ``validate_config`` hook on the model config.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
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

# A user module is executed once per process: a thread that asks for it while another one is still
# executing it waits for the whole module instead of getting the half that has run (one process
# holding several workers saw "Objective is not a class").
_IMPORT_LOCK = threading.RLock()


def _one_at_a_time(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _IMPORT_LOCK:
            return function(*args, **kwargs)

    return locked


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
        return import_module(spec.module, what="objective module")
    assert spec.file is not None
    return import_file(spec.file, what="objective file")


@_one_at_a_time
def import_module(name: str, *, what: str) -> Any:
    """Import an installed module by its dotted name (``package.module:Class`` objectives: the way
    around objective files with relative imports), with the predecessors' names where its source
    imports them, as for a file (:func:`import_file`)."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        found = importlib.util.find_spec(name)
        source = found.loader.get_source(name) if found is not None and found.loader is not None else None
    except Exception:  # a parent package that fails to import: importing reports it below
        source = None
    return _execute(lambda: importlib.import_module(name), source=source, what=f"{what} {name!r}")


@_one_at_a_time
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
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ObjectiveError(f"cannot load {what} {path}")
    loader = module_spec.loader

    def run() -> Any:
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module

    try:
        source: str | None = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        source = None
    return _execute(run, source=source, what=f"{what} {path}", label=path.name)


def _execute(run: Callable[[], Any], *, source: str | None, what: str, label: str | None = None) -> Any:
    """Run a user module's import with the predecessors' names only where it uses them.

    The stand-ins are installed when ``source`` imports a predecessor's dotted module name, or
    when the import fails on one inside a module the objective imports whose source imports it
    (then the import runs once more, with them). ``sys.exit`` (or a module-level argparse) while
    importing becomes an ObjectiveError naming ``what`` instead of ending hyper-opt silently."""
    if source is not None and compat.references(source):
        compat.install()  # echo.src.* / aimlutils.hyper_opt.* resolve when the predecessor is absent
    before = set(compat.used())
    try:
        try:
            module = run()
        except ModuleNotFoundError as err:
            if compat.installed() or not _imported_by_a_user_of_the_names(err):
                raise
            compat.install()
            module = run()
    except SystemExit as err:
        raise ObjectiveError(_exit_message(what, err)) from None
    except Exception as err:
        hint = compat.shadowing(getattr(err, "name", None)) if isinstance(err, ImportError) else None
        raise ObjectiveError(f"importing {what} failed: {type(err).__name__}: {err}"
                             + (f"; {hint}" if hint else "")) from err
    aliased = [n for n in compat.used() if n not in before]
    if aliased:
        logger.info("%s: %s", label or what, compat.migration_hint(aliased))
    return module


def _imported_by_a_user_of_the_names(err: ModuleNotFoundError) -> bool:
    """The missing module is a predecessor's and the module whose import statement failed (the
    innermost frame outside the import machinery) imports the predecessor's dotted names."""
    if not compat.is_predecessor_name(err.name):
        return False
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(err.__traceback__)]
    files = [f for f in files if not f.startswith("<")]
    if not files:
        return False
    try:
        return bool(compat.references(Path(files[-1]).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return False


def _exit_message(what: str, err: SystemExit) -> str:
    """Why importing a user module ended the process, and what to do."""
    frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(err.__traceback__)]
    if any(Path(f).name == "argparse.py" for f in frames):
        return (f"{what} exited (status {err.code!r}) while hyper-opt imported it: its module-level argparse "
                "parsed hyper-opt's own command line and rejected it (any 'usage:' lines above are the "
                "objective's, not hyper-opt's); parse arguments under `if __name__ == \"__main__\":`")
    return (f"{what} called sys.exit({err.code!r}) while hyper-opt imported it, so no search ran; code at "
            "module level runs on import: move it under `if __name__ == \"__main__\":`")


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
    if config.format == "echo" or any(n.startswith(("echo.", "aimlutils.echo.")) for n in compat.used()):
        # echo-opt's workers made save_path/trial_results/ before constructing the objective, and
        # training code written for it writes its per-epoch logs there without creating it.
        (config.save_path / "trial_results").mkdir(parents=True, exist_ok=True)
    try:
        objective = cls(**kwargs)
    except (Exception, SystemExit) as err:
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
    spec = config.optuna.objective
    try:
        module = load_module(spec)
    except ObjectiveError as err:
        raise ConfigError([f"optuna:objective: {err}"], source=str(config.hyper_path)) from None
    if not inspect.isclass(getattr(module, spec.class_name, None)):  # a file's classes were checked in config
        raise ConfigError([f"optuna:objective: module {spec.module!r} has no class {spec.class_name!r}"],
                          source=str(config.hyper_path))
    if model is None:
        return
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

