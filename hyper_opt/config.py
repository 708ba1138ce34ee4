"""Load and validate the two YAML files of a search.

The hyperparameter file (``log``/``save_path``/``slurm``/``pbs``/``local``/``optuna``) is read
in both formats users already have: the aimlutils-era one (``log.save_path``, ``optuna.name``,
``optuna.save_path``) and echo-opt's (top-level ``save_path``, ``study_name``, ``storage`` +
``storage_type``, ``pruner``, ``enqueue``, lists for ``metric``/``direction``).

Everything is checked here, before a study is created or a job submitted. Problems are
collected and raised together as one :class:`~hyper_opt.exceptions.ConfigError` whose lines
name the file, the key path, the value found and what is allowed. Relative paths are resolved
against the folder of the YAML file that holds them, never the working directory (with one
documented exception for objective files written for the older tools, see
:func:`_resolve_objective`).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyper_opt.exceptions import ConfigError

logger = logging.getLogger(__name__)

HYPER_SECTIONS = ("log", "save_path", "slurm", "pbs", "local", "optuna", "format")
FORMATS = ("hyper_opt", "echo", "aimlutils")
# Keys only hyper_opt knows: a file that uses one is read the hyper_opt way (see detect_format).
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("local", "format"),
    "log": ("level",),
    "optuna": ("heartbeat_interval", "grace_period", "max_retry", "max_consecutive_failures", "db_retry_seconds"),
    "slurm": ("array", "folder", "signal_delay_s", "python"),
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
    "db_retry_seconds",
)
SLURM_KEYS = ("jobs", "batch", "bash", "kernel", "gpus_per_node", "tasks_per_worker", "array",
              "folder", "signal_delay_s", "python")
PBS_KEYS = ("jobs", "batch", "bash", "kernel", "gpus_per_node", "tasks_per_worker", "array", "python")
LOCAL_KEYS = ("workers",)
LOG_KEYS = ("save_path", "level")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    signal_delay_s: int = 120
    python: str | None = None

    @property
    def workers_per_job(self) -> int:
        return max(self.gpus_per_node, 1) * self.tasks_per_worker


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

    @property
    def trials_dir(self) -> Path:
        return self.save_path / "trials"


# --------------------------------------------------------------------------- YAML + overrides


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read one YAML mapping, or raise a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError([f"{what} file not found: {path}"])
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping, got {type(data).__name__}"],
                          source=str(path))
    return data


_OVERRIDE = re.compile(r"^(?P<path>[^=]+?)=(?P<value>.*)$", re.S)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``a:b:0=value`` -> (("a", "b", "0"), yaml-parsed value)."""
    match = _OVERRIDE.match(text)
    if not match or not match.group("path").strip():
        raise ConfigError([f"--set {text!r}: expected KEY:PATH=VALUE, e.g. optuna:n_trials=50"])
    try:
        value = yaml.safe_load(match.group("value")) if match.group("value") != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError([f"--set {text!r}: the value is not valid YAML ({err})"]) from None
    return tuple(match.group("path").strip().split(":")), value


def apply_overrides(hyper: dict[str, Any], model: dict[str, Any] | None,
                    overrides: Sequence[str]) -> list[str]:
    """Apply ``--set`` overrides in place; return problems (unknown model paths).

    A path whose first part is a section of the hyperparameter file (``optuna``, ``slurm``,
    ...) goes there; prefix ``hyper:`` or ``model:`` to say which file explicitly. Any other
    path must already exist in the model config: an override that would be ignored is an
    error, not a silent no-op.
    """
    from hyper_opt.space import get_path, set_path  # local: space imports this module

    problems = []
    for text in overrides:
        path, value = parse_override(text)
        target = None
        if path[0] in ("hyper", "model"):
            target, path = path[0], path[1:]
        if target is None:
            target = "hyper" if path[0] in HYPER_SECTIONS else "model"
        if not path:
            problems.append(f"--set {text!r}: nothing after the '{target}:' prefix")
            continue
        if target == "hyper":
            problem = _set_hyper(hyper, path, value)
            if problem:
                problems.append(f"--set {text!r}: {problem}")
            continue
        if model is None:
            problems.append(f"--set {text!r}: no model config was given to override")
            continue
        try:
            get_path(model, path)
        except (KeyError, IndexError, TypeError):
            problems.append(
                f"--set {text!r}: {':'.join(path)!r} is not a key path of the model config "
                "(overrides never add keys; prefix 'hyper:' for the hyperparameter file)")
            continue
        set_path(model, path, value)
    return problems


def _set_hyper(hyper: dict[str, Any], path: tuple[str, ...], value: Any) -> str | None:
    """Set a path of the hyperparameter file, creating mappings as needed. Parameter keys hold
    colons themselves (``optimizer:learning_rate``): at each level the longest run of parts that
    names an existing key is taken as one key."""
    node = hyper
    i = 0
    while i < len(path) - 1:
        for j in range(len(path) - 1, i, -1):
            joined = ":".join(path[i:j])
            if j - i > 1 and joined in node:
                break
        else:
            j, joined = i + 1, path[i]
        child = node.setdefault(joined, {})
        if not isinstance(child, dict):
            return f"{joined!r} is not a mapping"
        node, i = child, j
    node[path[-1]] = value
    return None


# --------------------------------------------------------------------------- validation helpers


def _tname(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_bool(value: Any) -> bool | None:
    """YAML booleans and the 0/1 integers the older format uses; None when neither."""
    if isinstance(value, bool):
        return value
    if _is_int(value) and value in (0, 1):
        return bool(value)
    return None


class _Checker:
    """Collects problems with their key paths."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def unknown_keys(self, section: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in section:
            if key not in allowed:
                self.add(f"{path}:{key}" if path else str(key),
                         f"unknown key (allowed: {', '.join(allowed)})")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"must be a mapping, got {_tname(value)} {value!r}")
            return {}
        return value

    def integer(self, value: Any, path: str, *, minimum: int, default: int) -> int:
        if value is None:
            return default
        if not _is_int(value) or value < minimum:
            self.add(path, f"must be an integer >= {minimum}, got {value!r}")
            return default
        return value

    def boolean(self, value: Any, path: str, *, default: bool) -> bool:
        if value is None:
            return default
        result = _as_bool(value)
        if result is None:
            self.add(path, f"must be true/false (or 1/0), got {value!r}")
            return default
        return result

    def string(self, value: Any, path: str, *, default: str | None = None) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(path, f"must be a string or a list of strings, got {value!r}")
            return ()
        return tuple(value)


# --------------------------------------------------------------------------- sections


def _check_parameters(chk: _Checker, raw: Any) -> tuple[ParameterSpec, ...]:
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
        if ok and not _check_parameter_values(chk, path, ptype, settings):
            ok = False
        if ok:
            specs.append(ParameterSpec(key=key, type=ptype, name=name, settings=settings))
    return tuple(specs)


def _check_parameter_values(chk: _Checker, path: str, ptype: str, s: Mapping[str, Any]) -> bool:
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
    number = _is_int if ptype == "int" else _is_number
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


def _check_component(chk: _Checker, raw: Any, path: str, module_name: str) -> ComponentSpec | None:
    """A sampler or pruner: the class must exist in optuna's public namespace and accept the
    keyword arguments given; it is built once here so that bad values fail now."""
    if raw is None:
        return None
    section = chk.mapping(raw, path)
    if not section:
        return None
    kwargs = dict(section)
    name = kwargs.pop("type", None)
    valid = public_classes(module_name)
    if name not in valid:
        chk.add(f"{path}:type", f"got {name!r}; allowed: {', '.join(sorted(valid))}")
        return None
    spec = ComponentSpec(type=name, kwargs=kwargs)
    try:
        build_component(spec, module_name)
    except TypeError as err:
        params = [p for p in inspect.signature(valid[name]).parameters if p not in ("self", "args", "kwargs")]
        chk.add(path, f"{name} does not accept these settings ({err}); its arguments: {', '.join(params)}")
        return None
    except Exception as err:  # the class's own validation (ValueError and friends)
        chk.add(path, f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) was refused: {err}")
        return None
    return spec


def public_classes(module_name: str) -> dict[str, type]:
    """The sampler (``optuna.samplers``) or pruner (``optuna.pruners``) classes users can name."""
    import optuna

    module = getattr(optuna, module_name)
    base = optuna.samplers.BaseSampler if module_name == "samplers" else optuna.pruners.BasePruner
    names = getattr(module, "__all__", dir(module))
    return {n: getattr(module, n) for n in names
            if inspect.isclass(getattr(module, n, None)) and issubclass(getattr(module, n), base)
            and not n.startswith(("Base", "_"))}


def build_component(spec: ComponentSpec, module_name: str) -> Any:
    """Instantiate a sampler/pruner. A keyword value that is itself a ``{type: ...}`` mapping
    naming a pruner (``PatientPruner``'s ``wrapped_pruner``) is built too."""
    import warnings

    classes = public_classes(module_name)
    kwargs: dict[str, Any] = {}
    pruner_classes = public_classes("pruners")
    for key, value in spec.kwargs.items():
        if isinstance(value, Mapping) and value.get("type") in pruner_classes:
            inner = dict(value)
            value = build_component(ComponentSpec(inner.pop("type"), inner), "pruners")
        kwargs[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings only; errors still raise
        return classes[spec.type](**kwargs)


def _check_storage(chk: _Checker, opt: Mapping[str, Any], save_path: Path, study_name: str, *,
                   url_base: Path | None = None) -> StorageSpec:
    """``url_base``: what a relative ``sqlite:///`` URL is read from (the working directory for
    the predecessors' files, as SQLAlchemy reads it); None: ``save_path``."""
    storage = opt.get("storage")
    stype = opt.get("storage_type")
    if stype is not None and stype not in STORAGE_TYPES:
        chk.add("optuna:storage_type", f"got {stype!r}; allowed: {', '.join(STORAGE_TYPES)}")
        stype = None
    if storage is None:
        if stype in ("url", "maria", "mysql", "postgresql"):
            chk.add("optuna:storage", f"storage_type {stype!r} needs a database URL in optuna:storage")
        name = opt.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            chk.add("optuna:name", f"must be a file name, got {name!r}")
            name = None
        if stype in ("journal", "nfs"):
            path = save_path / (name or f"{study_name}.journal")
            return StorageSpec(kind="journal", path=path)
        path = save_path / (name or "hyper_opt.db")
        return StorageSpec(kind="sqlite", url=f"sqlite:///{path}", path=path)
    if not isinstance(storage, str) or not storage.strip():
        chk.add("optuna:storage", f"must be a database URL or a file name, got {storage!r}")
        return StorageSpec(kind="sqlite", url=f"sqlite:///{save_path / 'hyper_opt.db'}", path=save_path / "hyper_opt.db")
    if "://" in storage:
        if stype in ("journal", "nfs"):
            chk.add("optuna:storage", f"storage_type {stype!r} needs a file name, got the URL {mask_url(storage)!r}")
        scheme = storage.split("://", 1)[0]
        if scheme.startswith("sqlite"):
            raw_path = storage.split(":///", 1)[1] if ":///" in storage else ""
            if raw_path in ("", ":memory:") or "mode=memory" in storage:
                chk.add("optuna:storage", f"{storage!r} is an in-memory database that every worker "
                        "would get a private copy of, and that vanishes when it exits: give a file "
                        "(sqlite:///study.db) or a database server URL")
            path = Path(raw_path)
            if raw_path and raw_path != ":memory:" and not path.is_absolute():
                path = (url_base if url_base is not None else save_path) / path
            return StorageSpec(kind="sqlite", url=f"sqlite:///{path}", path=path)
        if not scheme.startswith(("postgresql", "postgres", "mysql", "mariadb")):
            chk.add("optuna:storage", f"unsupported database URL scheme {scheme!r}; use postgresql://, mysql:// or sqlite:///")
        if scheme == "postgres":
            storage = "postgresql" + storage[len("postgres"):]
        return StorageSpec(kind="url", url=storage)
    if stype in ("url", "maria", "mysql", "postgresql"):
        chk.add("optuna:storage", f"storage_type {stype!r} needs a database URL, got {storage!r}")
    path = Path(storage) if Path(storage).is_absolute() else save_path / storage
    if stype in ("journal", "nfs"):
        return StorageSpec(kind="journal", path=path)
    return StorageSpec(kind="sqlite", url=f"sqlite:///{path}", path=path)


# A study name becomes a file name (the journal), a Slurm job name and a #SBATCH/#PBS directive:
# no path separators, no newlines, nothing a shell or a directive parser reads specially.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|sslpassword)=)[^&]*", re.I)


def mask_url(url: str) -> str:
    """The URL with any password (``user:pw@``, ``:pw@``, ``?password=``) replaced by ``***``,
    for logs, messages and the config handed to user code.

    A password may hold an unquoted ``@`` (``u:p@ss@host``): the user part ends at the last ``@``
    before the query. The result is rendered by SQLAlchemy's URL when it parses."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, sep, query = rest.partition("?")
    at = head.rfind("@")
    if at >= 0:
        user, colon, password = head[:at].partition(":")
        head = (f"{user}:***" if colon else user) + "@" + head[at + 1:]
    query = _SECRET_QUERY.sub(r"\1***", sep + query)[1:] if sep else ""
    masked = f"{scheme}://{head}{sep}{query}"
    try:
        import sqlalchemy

        return sqlalchemy.make_url(masked).render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
    except Exception:  # not a URL SQLAlchemy knows: the masked text as it is
        return masked


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_objective(chk: _Checker, value: Any, base: Path, other: Path | None = None) -> ObjectiveSpec | None:
    """``file.py`` / ``file.py:Class`` (relative to ``base``) or ``pkg.module:Class``.

    ``base`` is the YAML's folder for hyper_opt files and the working directory for the
    predecessors' files. When the file is not there but is relative to ``other`` (the other of
    the two), it is used and a notice says so; from then on only the absolute path travels
    (jobs never see a relative one).
    """
    if not isinstance(value, str) or not value.strip():
        chk.add("optuna:objective", f"must be a .py file or an import path 'package.module:Class', got {value!r}")
        return None
    target, _, class_name = value.partition(":") if not re.match(r"^[A-Za-z]:\\", value) else (value, "", "")
    class_name = class_name or "Objective"
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = _resolve(base, target)
        if not path.is_file():
            other_path = _resolve(other if other is not None else working_directory(), target)
            if not Path(target).expanduser().is_absolute() and other_path.is_file():
                logger.warning("optuna:objective %r is not in %s; using %s. Write it relative to %s "
                               "to silence this.", target, base, other_path, base)
                path = other_path
            else:
                chk.add("optuna:objective", f"file not found: {target!r} (looked for {path})")
                return None
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as err:
            chk.add("optuna:objective", f"{path} is not valid Python: {err}")
            return None
        defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        defined |= {t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
        defined |= {(a.asname or a.name) for node in tree.body if isinstance(node, ast.ImportFrom)
                    for a in node.names}
        if class_name not in defined:
            chk.add("optuna:objective", f"{path} defines no class {class_name!r}")
            return None
        return ObjectiveSpec(file=path, module=None, class_name=class_name)
    if not re.match(r"^[A-Za-z_][\w.]*$", target):
        chk.add("optuna:objective", f"{value!r} is neither a .py file nor an import path 'package.module:Class'")
        return None
    try:
        found = importlib.util.find_spec(target) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        chk.add("optuna:objective", f"module {target!r} cannot be imported (is it installed?)")
        return None
    try:
        module = importlib.import_module(target)
    except Exception as err:
        chk.add("optuna:objective", f"importing {target!r} failed: {err}")
        return None
    if not inspect.isclass(getattr(module, class_name, None)):
        chk.add("optuna:objective", f"module {target!r} has no class {class_name!r}")
        return None
    return ObjectiveSpec(file=None, module=target, class_name=class_name)


def _check_scheduler(chk: _Checker, raw: Any, section: str, allowed: Sequence[str],
                     base: Path, save_path: Path) -> SchedulerSpec | None:
    if raw is None:
        return None
    sec = chk.mapping(raw, section)
    chk.unknown_keys(sec, allowed, section)
    batch = chk.mapping(sec.get("batch"), f"{section}:batch")
    for key, value in batch.items():
        bad = (value is None or isinstance(value, (dict,)) or
               (isinstance(value, list) and section == "slurm"))
        if bad:
            chk.add(f"{section}:batch:{key}", f"must be a string or number, got {value!r}")
        elif isinstance(value, str) and ("\n" in value or "\r" in value):
            chk.add(f"{section}:batch:{key}", f"must not contain a newline, got {value!r}")
    bash = chk.strings(sec.get("bash"), f"{section}:bash")
    folder = sec.get("folder")
    return SchedulerSpec(
        jobs=chk.integer(sec.get("jobs"), f"{section}:jobs", minimum=1, default=1),
        batch=dict(batch),
        bash=bash,
        kernel=chk.string(sec.get("kernel"), f"{section}:kernel"),
        gpus_per_node=chk.integer(sec.get("gpus_per_node"), f"{section}:gpus_per_node", minimum=0, default=0),
        tasks_per_worker=chk.integer(sec.get("tasks_per_worker"), f"{section}:tasks_per_worker", minimum=1, default=1),
        array=chk.boolean(sec.get("array"), f"{section}:array", default=False),
        folder=_resolve(base, folder) if isinstance(folder, str) else save_path / "slurm",
        signal_delay_s=chk.integer(sec.get("signal_delay_s"), f"{section}:signal_delay_s", minimum=0, default=120),
        python=chk.string(sec.get("python"), f"{section}:python"),
    )


# --------------------------------------------------------------------------- formats


def detect_format(hyper: Mapping[str, Any]) -> str:
    """Which tool's rules a hyperparameter file is read by: ``hyper_opt``, ``echo`` or ``aimlutils``.

    A top-level ``format:`` says it outright. Otherwise a file that uses any key only hyper_opt
    knows (:data:`OWN_KEYS`) is a hyper_opt file; one with echo-opt's top-level ``save_path`` (or
    its ``study_name``/``storage``/``pbs``) is echo-opt's; one with aimlutils' ``optuna.name``,
    ``optuna.save_path`` or ``log.save_path`` is aimlutils'. The predecessors' files keep their
    tools' rules: relative paths are read from the working directory, and echo-opt files
    without ``reload`` continue an existing study.
    """
    explicit = hyper.get("format")
    if isinstance(explicit, str) and explicit in FORMATS:
        return explicit
    for section, keys in OWN_KEYS.items():
        node = hyper if not section else hyper.get(section)
        if isinstance(node, Mapping) and any(k in node for k in keys):
            return "hyper_opt"
    opt = hyper.get("optuna") if isinstance(hyper.get("optuna"), Mapping) else {}
    if "save_path" in hyper or "pbs" in hyper or any(k in opt for k in ("study_name", "storage", "storage_type")):
        return "echo"
    log = hyper.get("log")
    if "name" in opt or "save_path" in opt or (isinstance(log, Mapping) and "save_path" in log):
        return "aimlutils"
    return "hyper_opt"


def working_directory() -> Path:
    """The directory the search was started from: the submitting process's, also in its workers."""
    return Path(os.environ.get(CWD_ENV) or os.getcwd()).resolve()


# --------------------------------------------------------------------------- entry point


def load_config(hyper_path: str | Path, model_path: str | Path | None = None, *,
                overrides: Sequence[str] = (), strict: bool = False,
                ) -> tuple[HyperConfig, dict[str, Any] | None]:
    """Read, override and validate both files; return the config and the model config.

    Raises :class:`ConfigError` listing every problem found. Nothing is created on disk.
    """
    hyper_path = Path(hyper_path).expanduser().resolve()
    hyper = read_yaml(hyper_path, "hyperparameter")
    model = None
    if model_path is not None:
        model_path = Path(model_path).expanduser().resolve()
        model = read_yaml(model_path, "model config")
    problems = apply_overrides(hyper, model, overrides)
    if problems:
        raise ConfigError(problems, source="the command line")
    chk = _Checker()
    chk.unknown_keys(hyper, HYPER_SECTIONS, "")
    if "format" in hyper and hyper["format"] not in FORMATS:
        chk.add("format", f"got {hyper['format']!r}; allowed: {', '.join(FORMATS)}")
    file_format = detect_format(hyper)
    # The predecessors read relative paths from the working directory; hyper_opt from the file's folder.
    base = hyper_path.parent if file_format == "hyper_opt" else working_directory()

    opt = chk.mapping(hyper.get("optuna"), "optuna")
    if "optuna" not in hyper:
        chk.add("optuna", "missing section (it holds objective, metric, direction, n_trials and parameters)")
    chk.unknown_keys(opt, OPTUNA_KEYS, "optuna")

    # save_path: top level (echo-opt), else optuna:save_path (aimlutils), else beside the YAML.
    raw_save = hyper.get("save_path", opt.get("save_path"))
    key = "save_path" if "save_path" in hyper else "optuna:save_path"
    if raw_save is None:
        save_path = base / "hyper_opt_results"
    elif not isinstance(raw_save, str) or not raw_save.strip():
        chk.add(key, f"must be a folder path, got {raw_save!r}")
        save_path = base / "hyper_opt_results"
    else:
        save_path = _resolve(base, raw_save)

    log_file = None
    log_level = "INFO"
    log = hyper.get("log")
    if isinstance(log, Mapping):
        chk.unknown_keys(log, LOG_KEYS, "log")
        if log.get("save_path") is not None:
            if isinstance(log["save_path"], str):
                log_file = _resolve(base, log["save_path"])
            else:
                chk.add("log:save_path", f"must be a file path, got {log['save_path']!r}")
        level = str(log.get("level", "INFO")).upper()
        if level not in LOG_LEVELS:
            chk.add("log:level", f"got {log.get('level')!r}; allowed: {', '.join(LOG_LEVELS)}")
        else:
            log_level = level
    elif log is not None and _as_bool(log) is None:
        chk.add("log", f"must be true/false or a mapping with save_path, got {log!r}")
    elif _as_bool(log):  # echo-opt: log: true keeps a log.txt in save_path
        log_file = save_path / "log.txt"

    study_name = opt.get("study_name")
    if study_name is None:  # aimlutils named the study after its file name, verbatim ("x.db")
        name = opt.get("name")
        study_name = name if isinstance(name, str) and name else "hyper_opt"
    study_name = chk.string(study_name, "optuna:study_name", default="hyper_opt") or "hyper_opt"
    if not STUDY_NAME.match(study_name):
        chk.add("optuna:study_name" if "study_name" in opt else "optuna:name",
                f"{study_name!r} is not a safe study name: use letters, digits and . _ + - only, starting "
                "with a letter or digit, at most 128 characters (it names files under save_path and the "
                "Slurm job)")

    metrics = chk.strings(opt.get("metric", "val_loss"), "optuna:metric")
    directions = chk.strings(opt.get("direction", "minimize"), "optuna:direction")
    for i, d in enumerate(directions):
        if d not in DIRECTIONS:
            where = "optuna:direction" if isinstance(opt.get("direction"), str) else f"optuna:direction:{i}"
            chk.add(where, f"got {d!r}; allowed: minimize, maximize")
    if metrics and directions and len(metrics) != len(directions):
        chk.add("optuna:direction", f"{len(directions)} direction(s) for {len(metrics)} metric(s) "
                f"{list(metrics)}; give one direction per metric")
    if not metrics:
        chk.add("optuna:metric", "must name at least one metric returned by train()")

    n_trials = opt.get("n_trials")
    if n_trials is None:
        chk.add("optuna:n_trials", "missing (the number of finished trials the study should reach)")
        n_trials = 1
    else:
        n_trials = chk.integer(n_trials, "optuna:n_trials", minimum=1, default=1)

    objective = None
    if "objective" not in opt:
        chk.add("optuna:objective", "missing (a .py file defining class Objective, or 'package.module:Class')")
    else:
        objective = _resolve_objective(chk, opt["objective"], base,
                                       working_directory() if base == hyper_path.parent else hyper_path.parent)

    parameters = _check_parameters(chk, opt.get("parameters"))
    sampler = _check_component(chk, opt.get("sampler"), "optuna:sampler", "samplers")
    pruner = _check_component(chk, opt.get("pruner"), "optuna:pruner", "pruners")
    if pruner is not None and len(directions) > 1:
        chk.add("optuna:pruner", "optuna cannot prune multi-objective studies; remove the pruner")

    enqueue = opt.get("enqueue") or []
    names = {p.name for p in parameters}
    if not isinstance(enqueue, list) or not all(isinstance(e, Mapping) for e in enqueue):
        chk.add("optuna:enqueue", f"must be a list of parameter mappings, got {enqueue!r}")
        enqueue = []
    kept_enqueue = []
    for i, params in enumerate(enqueue):
        unknown = [p for p in params if p not in names]
        for pname in unknown:  # echo-opt passed them to optuna, which ignored them: so do we, aloud
            logger.warning("optuna:enqueue:%d:%s: not a parameter name (names: %s); ignored",
                           i, pname, ", ".join(sorted(names)))
        kept_enqueue.append({k: v for k, v in params.items() if k not in unknown})
    enqueue = [e for e in kept_enqueue if e]

    storage = _check_storage(chk, opt, save_path, study_name,
                             url_base=None if file_format == "hyper_opt" else base)
    heartbeat: int | None = None
    raw_hb = opt.get("heartbeat_interval", 60)
    if storage.kind == "journal":
        if "heartbeat_interval" in opt and raw_hb:
            chk.add("optuna:heartbeat_interval", "the journal storage has no heartbeat; use sqlite or a database URL")
    elif raw_hb not in (None, 0, False):  # null or 0 turns the heartbeat off
        heartbeat = chk.integer(raw_hb, "optuna:heartbeat_interval", minimum=1, default=60)
    grace = None
    if heartbeat:
        grace = chk.integer(opt.get("grace_period"), "optuna:grace_period", minimum=1, default=heartbeat * 2)
        if grace <= heartbeat:
            chk.add("optuna:grace_period", f"must be longer than heartbeat_interval ({heartbeat}), got {grace}")
    db_retry = opt.get("db_retry_seconds", 600)
    if not _is_number(db_retry) or db_retry < 0:
        chk.add("optuna:db_retry_seconds", f"must be a number of seconds >= 0, got {db_retry!r}")
        db_retry = 600

    slurm = _check_scheduler(chk, hyper.get("slurm"), "slurm", SLURM_KEYS, base, save_path)
    pbs = _check_scheduler(chk, hyper.get("pbs"), "pbs", PBS_KEYS, base, save_path)
    local = chk.mapping(hyper.get("local"), "local")
    chk.unknown_keys(local, LOCAL_KEYS, "local")
    local_workers = chk.integer(local.get("workers"), "local:workers", minimum=1, default=1)

    if model is not None and parameters:
        _check_model_paths(chk, parameters, model, strict=strict, model_path=model_path)

    reload_explicit = chk.boolean(opt.get("reload"), "optuna:reload", default=False)
    reload = reload_explicit
    if "reload" not in opt and file_format == "echo":
        reload = True  # echo-opt always continued an existing study (said by open_study when it does)
    gpu = _gpu_flag(chk, opt.get("gpu"))
    max_retry = chk.integer(opt.get("max_retry"), "optuna:max_retry", minimum=0, default=2)
    max_failures = chk.integer(opt.get("max_consecutive_failures"), "optuna:max_consecutive_failures",
                               minimum=1, default=10)
    if chk.problems:
        more = []
        if objective is not None and model is not None:  # the model file's problems in the same round
            model_problems = objective_problems(objective, model, parameters=parameters, model_path=model_path,
                                                metrics=metrics)
            if model_problems:
                more.append(ConfigError(model_problems, source=str(model_path)))
        raise ConfigError(chk.problems, source=str(hyper_path), more=more)

    assert objective is not None  # a missing objective was reported above
    spec = OptunaSpec(
        study_name=study_name,
        storage=storage,
        objective=objective,
        metrics=metrics,
        directions=directions,
        n_trials=n_trials,
        reload=reload,
        gpu=gpu,
        sampler=sampler,
        pruner=pruner,
        parameters=parameters,
        enqueue=tuple(dict(e) for e in enqueue),
        heartbeat_interval=heartbeat,
        grace_period=grace,
        max_retry=max_retry,
        max_consecutive_failures=max_failures,
        db_retry_seconds=float(db_retry),
        reload_explicit=reload_explicit,
    )
    config = HyperConfig(
        hyper_path=hyper_path,
        model_path=Path(model_path) if model_path is not None else None,
        save_path=save_path,
        log_file=log_file,
        log_level=log_level,
        optuna=spec,
        slurm=slurm,
        pbs=pbs,
        local_workers=local_workers,
        overrides=tuple(overrides),
        raw=copy.deepcopy(hyper),
        format=file_format,
        base_dir=base,
    )
    return config, model


_FALSE_WORDS = ("", "0", "false", "no", "off", "none", "cpu")


def _gpu_flag(chk: _Checker, value: Any) -> bool:
    """``optuna:gpu``: true/false/1/0; a GPU model name (``v100``), as the predecessors' files
    have, means true (with a notice)."""
    if isinstance(value, str):
        flag = value.strip().lower() not in _FALSE_WORDS
        logger.warning("optuna:gpu: %r is read as %s (write true or false)", value, str(flag).lower())
        return flag
    return chk.boolean(value, "optuna:gpu", default=False)


def _check_model_paths(chk: _Checker, parameters: Sequence[ParameterSpec], model: Mapping[str, Any],
                       *, strict: bool, model_path: Path | None) -> None:
    """Parameters whose key is not a path of the model config are only suggested (for
    ``custom_updates``); list them once so that a typo is visible, or refuse them with --strict."""
    from hyper_opt.space import has_path

    missing = [p.key for p in parameters if not has_path(model, p.path)]
    if not missing:
        return
    if strict:
        for key in missing:
            chk.add(f"optuna:parameters:{key}", f"--strict: not a key path of the model config {model_path}")


def missing_model_paths(config: HyperConfig, model: Mapping[str, Any]) -> list[str]:
    """The parameter keys that are not paths of the model config."""
    from hyper_opt.space import has_path

    return [p.key for p in config.optuna.parameters if not has_path(model, p.path)]


def check_objective_config(config: HyperConfig, model: Mapping[str, Any] | None) -> None:
    """Let the objective class check the model config before any trial runs.

    An objective class may define ``validate_config(model_config) -> list[str]`` (a classmethod or
    staticmethod returning problems, each naming its key path); the built-in metric-learning
    objective does. Problems are raised as one ConfigError naming the model file.
    """
    from hyper_opt.exceptions import ObjectiveError
    from hyper_opt.objective import load_module

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
    from hyper_opt.exceptions import ObjectiveError
    from hyper_opt.objective import load_module

    try:
        module = load_module(objective)
    except ObjectiveError:
        return []
    validate = getattr(getattr(module, objective.class_name, None), "validate_config", None)
    if validate is None:
        return []
    accepted = inspect.signature(validate).parameters
    extra: dict[str, Any] = {"parameters": parameters,
                             "base_dir": model_path.parent if model_path else None,
                             "metric": metrics[0] if len(metrics) == 1 else list(metrics)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    return list(validate(model, **{k: v for k, v in extra.items() if takes_any or k in accepted}) or [])
