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
import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hyper_opt.checker import Checker as _Checker
from hyper_opt.checker import as_bool as _as_bool
from hyper_opt.checker import is_number as _is_number
from hyper_opt.exceptions import ConfigError
from hyper_opt.keypath import apply_overrides, has_path, parse_override  # noqa: F401 - re-exported
from hyper_opt.registry import build_component, public_classes  # noqa: F401 - re-exported
from hyper_opt.schema import (  # noqa: F401 - the specs and key lists are re-exported from here
    CWD_ENV, DEFAULT_DB_RETRY_S, DEFAULT_DIRECTION, DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_CONSECUTIVE_FAILURES, DEFAULT_MAX_RETRY, DEFAULT_METRIC, DEFAULT_SAVE_DIR,
    DEFAULT_SCHEDULER_FOLDER, DEFAULT_SIGNAL_DELAY_S, DEFAULT_SQLITE_FILE, DEFAULT_STUDY_NAME, DIRECTIONS,
    FORMATS, HYPER_SECTIONS, LOCAL_KEYS, LOG_KEYS, LOG_LEVELS, OPTUNA_KEYS, OWN_KEYS, PARAM_SETTINGS, PBS_KEYS,
    SLURM_KEYS, STORAGE_TYPES, STUDY_NAME, ComponentSpec, HyperConfig, ObjectiveSpec, OptunaSpec, ParameterSpec,
    SchedulerSpec, StorageSpec)
from hyper_opt.stopping import check_budget, check_stop
from hyper_opt.sections import _resolve, check_job_values, check_local, check_scheduler
from hyper_opt.secrets import mask_url  # noqa: F401 - re-exported
from hyper_opt.space import check_parameters as _check_parameters
from hyper_opt.space import value_problem as _value_problem

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- YAML


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


# --------------------------------------------------------------------------- sections


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
        path = save_path / (name or DEFAULT_SQLITE_FILE)
        return StorageSpec(kind="sqlite", url=f"sqlite:///{path}", path=path)
    if not isinstance(storage, str) or not storage.strip():
        chk.add("optuna:storage", f"must be a database URL or a file name, got {storage!r}")
        return StorageSpec(kind="sqlite", url=f"sqlite:///{save_path / DEFAULT_SQLITE_FILE}", path=save_path / DEFAULT_SQLITE_FILE)
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
    # Imported (and its class checked) by hyper_opt.loader, which gives it the predecessors' names
    # when it uses them and turns a sys.exit there into a message: reading YAML imports no user code.
    return ObjectiveSpec(file=None, module=target, class_name=class_name)


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


def format_reason(hyper: Mapping[str, Any]) -> str:
    """Why :func:`detect_format` chose the format: the keys that decided it, in the file's words."""
    if isinstance(hyper.get("format"), str) and hyper["format"] in FORMATS:
        return f"format: {hyper['format']}"
    for section, keys in OWN_KEYS.items():
        node = hyper if not section else hyper.get(section)
        found = [k for k in keys if isinstance(node, Mapping) and k in node]
        if found:
            return f"{(section + ':') if section else ''}{found[0]} is a key only hyper_opt knows"
    opt = hyper.get("optuna") if isinstance(hyper.get("optuna"), Mapping) else {}
    marks = [k for k in ("save_path", "pbs") if k in hyper]
    marks += [f"optuna:{k}" for k in ("study_name", "storage", "storage_type") if k in opt]
    if marks:
        return f"{', '.join(marks)} without any key only hyper_opt knows"
    marks = [f"optuna:{k}" for k in ("name", "save_path") if k in opt]
    if isinstance(hyper.get("log"), Mapping) and "save_path" in hyper["log"]:
        marks.append("log:save_path")
    return f"{', '.join(marks)}" if marks else "no key of echo-opt's or aimlutils' format"


def working_directory() -> Path:
    """The directory the search was started from: the submitting process's, also in its workers."""
    return Path(os.environ.get(CWD_ENV) or os.getcwd()).resolve()


# --------------------------------------------------------------------------- entry point


def load_config(hyper_path: str | Path, model_path: str | Path | None = None, *,
                overrides: Sequence[str] = (), strict: bool = False,
                check_model: ModelCheck | None = None,
                ) -> tuple[HyperConfig, dict[str, Any] | None]:
    """Read, override and validate both files; return the config and the model config.

    Raises :class:`ConfigError` listing every problem found. Nothing is created on disk.
    ``check_model(objective, model, parameters=, model_path=, metrics=)`` returns the model file's
    problems, reported in the same round as the hyperparameter file's (see
    :func:`hyper_opt.loader.load_config`, which passes the objective's ``validate_config``).
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
    if "format" in hyper and hyper["format"] not in FORMATS:
        chk.add("format", f"got {hyper['format']!r}; allowed: {', '.join(FORMATS)}")
    file_format = detect_format(hyper)
    _check_top_level(chk, hyper, file_format, hyper_path)
    # The predecessors read relative paths from the working directory; hyper_opt from the file's folder.
    base = hyper_path.parent if file_format == "hyper_opt" else working_directory()

    opt = chk.mapping(hyper.get("optuna"), "optuna")
    if "optuna" not in hyper:
        chk.add("optuna", "missing section (it holds objective, metric, direction, n_trials and parameters)")
    chk.unknown_keys(opt, OPTUNA_KEYS, "optuna")
    save_path = _check_save_path(chk, hyper, opt, base)
    log_file, log_level = _check_log(chk, hyper.get("log"), base, save_path)
    search = _check_search(chk, opt, base=base, hyper_path=hyper_path, save_path=save_path,
                           url_base=None if file_format == "hyper_opt" else base)
    slurm = check_scheduler(chk, hyper.get("slurm"), "slurm", SLURM_KEYS, base, save_path)
    pbs = check_scheduler(chk, hyper.get("pbs"), "pbs", PBS_KEYS, base, save_path)
    check_job_values(chk, hyper, opt, save_path, slurm, pbs, (hyper_path, model_path), overrides)
    local_workers, local_gpus_per_trial = check_local(chk, hyper.get("local"))
    if model is not None and search["parameters"]:
        _check_model_paths(chk, search["parameters"], model, strict=strict, model_path=model_path)
    running = _check_running(chk, opt, file_format)
    if chk.problems:
        more = []
        objective = search["objective"]
        if objective is not None and model is not None and check_model is not None:
            # the model file's problems in the same round
            model_problems = check_model(objective, model, parameters=search["parameters"],
                                         model_path=model_path, metrics=search["metrics"])
            if model_problems:
                more.append(ConfigError(model_problems, source=str(model_path)))
        raise ConfigError(chk.problems, source=str(hyper_path), more=more)

    assert search["objective"] is not None  # a missing objective was reported above
    config = HyperConfig(
        hyper_path=hyper_path,
        model_path=Path(model_path) if model_path is not None else None,
        save_path=save_path,
        log_file=log_file,
        log_level=log_level,
        optuna=OptunaSpec(**search, **running),
        slurm=slurm,
        pbs=pbs,
        local_workers=local_workers,
        local_gpus_per_trial=local_gpus_per_trial,
        overrides=tuple(overrides),
        raw=copy.deepcopy(hyper),
        format=file_format,
        base_dir=base,
    )
    return config, model


ModelCheck = Callable[..., "list[str]"]


def _check_top_level(chk: _Checker, hyper: Mapping[str, Any], file_format: str, hyper_path: Path) -> None:
    """Unknown top-level keys: refused in hyper_opt's format; in the predecessors' formats a warning,
    as their tools ignored them (projects keep a ``notes:`` entry, or their model config, there),
    unless the key is a misspelt section (``slrum``), which would change where the search runs."""
    for key in [k for k in hyper if k not in HYPER_SECTIONS]:
        close = difflib.get_close_matches(str(key), HYPER_SECTIONS, n=1, cutoff=0.75)
        if file_format == "hyper_opt" or close:
            hint = f"did you mean {close[0]!r}? " if close else ""
            chk.add(str(key), f"unknown key ({hint}allowed: {', '.join(HYPER_SECTIONS)})")
        else:
            logger.warning("%s: top-level key %r is not one hyper_opt reads (%s); ignored, as %s did",
                           hyper_path, key, ", ".join(HYPER_SECTIONS),
                           "echo-opt" if file_format == "echo" else "aimlutils")


def _check_save_path(chk: _Checker, hyper: Mapping[str, Any], opt: Mapping[str, Any], base: Path) -> Path:
    """save_path: top level (echo-opt), else optuna:save_path (aimlutils), else beside the YAML."""
    raw_save = hyper.get("save_path", opt.get("save_path"))
    key = "save_path" if "save_path" in hyper else "optuna:save_path"
    if raw_save is None:
        return base / DEFAULT_SAVE_DIR
    if not isinstance(raw_save, str) or not raw_save.strip():
        chk.add(key, f"must be a folder path, got {raw_save!r}")
        return base / DEFAULT_SAVE_DIR
    return _resolve(base, raw_save)


def _check_log(chk: _Checker, log: Any, base: Path, save_path: Path) -> tuple[Path | None, str]:
    """The ``log`` section: (the log file or None, the level)."""
    log_file = None
    log_level = DEFAULT_LOG_LEVEL
    if isinstance(log, Mapping):
        chk.unknown_keys(log, LOG_KEYS, "log")
        if log.get("save_path") is not None:
            if isinstance(log["save_path"], str):
                log_file = _resolve(base, log["save_path"])
            else:
                chk.add("log:save_path", f"must be a file path, got {log['save_path']!r}")
        level = str(log.get("level", DEFAULT_LOG_LEVEL)).upper()
        if level not in LOG_LEVELS:
            chk.add("log:level", f"got {log.get('level')!r}; allowed: {', '.join(LOG_LEVELS)}")
        else:
            log_level = level
    elif log is not None and _as_bool(log) is None:
        chk.add("log", f"must be true/false or a mapping with save_path, got {log!r}")
    elif _as_bool(log):  # echo-opt: log: true keeps a log.txt in save_path
        log_file = save_path / "log.txt"
    return log_file, log_level


def _check_search(chk: _Checker, opt: Mapping[str, Any], *, base: Path, hyper_path: Path, save_path: Path,
                  url_base: Path | None) -> dict[str, Any]:
    """The ``optuna`` keys that define the search: OptunaSpec's fields up to ``db_retry_seconds``."""
    study_name = _check_study_name(chk, opt)
    metrics, directions = _check_metrics(chk, opt)
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
    enqueue = _check_enqueue(chk, opt.get("enqueue") or [], parameters)
    storage = _check_storage(chk, opt, save_path, study_name, url_base=url_base)
    heartbeat, grace = _check_heartbeat(chk, opt, storage)
    db_retry = opt.get("db_retry_seconds", DEFAULT_DB_RETRY_S)
    if not _is_number(db_retry) or db_retry < 0:
        chk.add("optuna:db_retry_seconds", f"must be a number of seconds >= 0, got {db_retry!r}")
        db_retry = DEFAULT_DB_RETRY_S
    return dict(study_name=study_name, storage=storage, objective=objective, metrics=metrics,
                directions=directions, n_trials=n_trials, sampler=sampler, pruner=pruner,
                parameters=parameters, enqueue=tuple(dict(e) for e in enqueue), heartbeat_interval=heartbeat,
                grace_period=grace, db_retry_seconds=float(db_retry))


def _check_study_name(chk: _Checker, opt: Mapping[str, Any]) -> str:
    study_name = opt.get("study_name")
    if study_name is None:  # aimlutils named the study after its file name, verbatim ("x.db")
        name = opt.get("name")
        study_name = name if isinstance(name, str) and name else DEFAULT_STUDY_NAME
    study_name = (chk.string(study_name, "optuna:study_name", default=DEFAULT_STUDY_NAME)
                  or DEFAULT_STUDY_NAME)
    if not STUDY_NAME.match(study_name):
        chk.add("optuna:study_name" if "study_name" in opt else "optuna:name",
                f"{study_name!r} is not a safe study name: use letters, digits and . _ + - only, starting "
                "with a letter or digit, at most 128 characters (it names files under save_path and the "
                "Slurm job)")
    return study_name


def _check_metrics(chk: _Checker, opt: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    metrics = chk.strings(opt.get("metric", DEFAULT_METRIC), "optuna:metric")
    directions = chk.strings(opt.get("direction", DEFAULT_DIRECTION), "optuna:direction")
    for i, d in enumerate(directions):
        if d not in DIRECTIONS:
            where = "optuna:direction" if isinstance(opt.get("direction"), str) else f"optuna:direction:{i}"
            chk.add(where, f"got {d!r}; allowed: minimize, maximize")
    if metrics and directions and len(metrics) != len(directions):
        chk.add("optuna:direction", f"{len(directions)} direction(s) for {len(metrics)} metric(s) "
                f"{list(metrics)}; give one direction per metric")
    if not metrics:
        chk.add("optuna:metric", "must name at least one metric returned by train()")
    return metrics, directions


def _check_enqueue(chk: _Checker, enqueue: Any, parameters: Sequence[ParameterSpec]) -> list[dict[str, Any]]:
    names = {p.name for p in parameters}
    if not isinstance(enqueue, list) or not all(isinstance(e, Mapping) for e in enqueue):
        chk.add("optuna:enqueue", f"must be a list of parameter mappings, got {enqueue!r}")
        enqueue = []
    kept_enqueue = []
    by_name = {p.name: p for p in parameters}
    for i, params in enumerate(enqueue):
        unknown = [p for p in params if p not in names]
        for pname, value in params.items():  # checked now: optuna runs an out-of-range value as it is
            problem = _value_problem(by_name[pname], value) if pname in by_name else None
            if problem:
                chk.add(f"optuna:enqueue:{i}:{pname}", problem)
        for pname in unknown:  # echo-opt passed them to optuna, which ignored them: so do we, aloud
            logger.warning("optuna:enqueue:%d:%s: not a parameter name (names: %s); ignored",
                           i, pname, ", ".join(sorted(names)))
        kept_enqueue.append({k: v for k, v in params.items() if k not in unknown})
    return [e for e in kept_enqueue if e]


def _check_heartbeat(chk: _Checker, opt: Mapping[str, Any], storage: StorageSpec) -> tuple[int | None, int | None]:
    """(heartbeat_interval, grace_period); (None, None) when the heartbeat is off."""
    heartbeat: int | None = None
    valid = True
    raw_hb = opt.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL_S)
    if storage.kind == "journal":
        if "heartbeat_interval" in opt and raw_hb:
            chk.add("optuna:heartbeat_interval", "the journal storage has no heartbeat; use sqlite or a database URL")
    elif raw_hb not in (None, 0, False):  # null or 0 turns the heartbeat off
        before = len(chk.problems)
        heartbeat = chk.integer(raw_hb, "optuna:heartbeat_interval", minimum=1, default=DEFAULT_HEARTBEAT_INTERVAL_S)
        valid = len(chk.problems) == before  # else no comparison with a default it was not given
    grace = None
    if heartbeat:
        grace = chk.integer(opt.get("grace_period"), "optuna:grace_period", minimum=1, default=heartbeat * 2)
        if valid and grace <= heartbeat:
            chk.add("optuna:grace_period", f"must be longer than heartbeat_interval ({heartbeat}), got {grace}")
    return heartbeat, grace


def _check_running(chk: _Checker, opt: Mapping[str, Any], file_format: str) -> dict[str, Any]:
    """The ``optuna`` keys about running trials: OptunaSpec's reload, gpu and retry fields."""
    reload_explicit = chk.boolean(opt.get("reload"), "optuna:reload", default=False)
    reload = reload_explicit
    if "reload" not in opt and file_format == "echo":
        reload = True  # echo-opt always continued an existing study (said by open_study when it does)
    gpu = _gpu_flag(chk, opt.get("gpu"))
    max_retry = chk.integer(opt.get("max_retry"), "optuna:max_retry", minimum=0, default=DEFAULT_MAX_RETRY)
    max_failures = chk.integer(opt.get("max_consecutive_failures"), "optuna:max_consecutive_failures",
                               minimum=1, default=DEFAULT_MAX_CONSECUTIVE_FAILURES)
    stop = check_stop(chk, opt.get("stop"))
    if stop is not None and isinstance(opt.get("direction"), list) and len(opt["direction"]) > 1:
        chk.add("optuna:stop", "a stop rule follows one best value; this study has several objectives "
                "(optuna:direction); use optuna:budget or n_trials to bound it")
    return dict(reload=reload, gpu=gpu, max_retry=max_retry, max_consecutive_failures=max_failures,
                reload_explicit=reload_explicit, budget=check_budget(chk, opt.get("budget")), stop=stop)


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
    if strict:
        for key in _missing_paths(parameters, model):
            chk.add(f"optuna:parameters:{key}", f"--strict: not a key path of the model config {model_path}")


def _missing_paths(parameters: Sequence[ParameterSpec], model: Mapping[str, Any]) -> list[str]:
    return [p.key for p in parameters if not has_path(model, p.path)]


def missing_model_paths(config: HyperConfig, model: Mapping[str, Any]) -> list[str]:
    """The parameter keys that are not paths of the model config."""
    return _missing_paths(config.optuna.parameters, model)

