"""The model YAML of a metric-learning search: its keys, defaults and up-front validation.

:func:`problems` checks a model config (and the searched parameters that point into it) and
returns every problem as ``key:path: message`` lines naming the value found and what is
allowed; :func:`validate` raises them as one :class:`~hyper_opt.exceptions.ConfigError`.
:func:`read_settings` turns the scalar settings into a frozen :class:`Settings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt.exceptions import ConfigError
from hyper_opt.metric_learning import components as comp
from hyper_opt.metric_learning.paths import expand_path, unset_variables

if TYPE_CHECKING:
    from hyper_opt.config import ParameterSpec

METRICS = ("mean_average_precision_at_r", "precision_at_1", "r_precision", "mean_average_precision",
           "mean_reciprocal_rank", "NMI", "AMI")
DEFAULT_METRICS = ("mean_average_precision_at_r", "precision_at_1", "r_precision")
DEFAULT_METRIC = "mean_average_precision_at_r"
KNN_BACKENDS = ("auto", "faiss", "torch")
FOLD_SCHEDULES = ("sequential", "interleaved")

COMPONENT_SECTIONS = ("models", "loss_funcs", "mining_funcs", "sampler", "optimizers", "lr_schedulers",
                      "trainer", "dataset")
SCALAR_KEYS = ("seed", "batch_size", "iterations_per_epoch", "max_epochs", "patience", "fold_schedule",
               "dataloader_num_workers", "torch_threads", "model_def_fn", "loss_weights", "splits",
               "evaluation", "mixed_precision", "tensorboard")
TOP_KEYS = COMPONENT_SECTIONS + SCALAR_KEYS + ("optuna",)
SPLIT_KEYS = ("test_size", "test_start_idx", "num_training_partitions", "num_training_sets", "shuffle_classes")
EVAL_KEYS = ("metric", "metrics", "knn", "normalize_embeddings", "batch_size")

# Trainer arguments hyper_opt fills in itself (refused in trainer kwargs).
TRAINER_SUPPLIED = ("models", "optimizers", "batch_size", "loss_funcs", "dataset", "mining_funcs",
                    "iterations_per_epoch", "data_device", "loss_weights", "sampler", "lr_schedulers",
                    "dataloader_num_workers", "end_of_iteration_hook", "end_of_epoch_hook", "dataset_labels",
                    "set_min_label_to_zero", "collate_fn", "data_and_label_getter", "dtype")

# Keys each trainer accepts in models / loss_funcs / mining_funcs (regular expressions as PML's).
_BASE_ROLES = {"models": ["trunk", "embedder"], "loss_funcs": ["metric_loss"],
               "mining_funcs": ["subset_batch_miner", "tuple_miner"]}
TRAINER_ROLES: dict[str, dict[str, list[str]]] = {
    "MetricLossOnly": _BASE_ROLES,
    "TrainWithClassifier": {"models": ["trunk", "embedder", "classifier"],
                            "loss_funcs": ["metric_loss", "classifier_loss"],
                            "mining_funcs": _BASE_ROLES["mining_funcs"]},
    "CascadedEmbeddings": {"models": ["trunk", "embedder", r"classifier_[0-9]+"],
                           "loss_funcs": [r"metric_loss_[0-9]+", r"classifier_loss_[0-9]+"],
                           "mining_funcs": [r"tuple_miner_[0-9]+"]},
    "DeepAdversarialMetricLearning": {"models": ["trunk", "embedder", "classifier", "generator"],
                                      "loss_funcs": ["metric_loss", "classifier_loss", "synth_loss", "g_adv_loss"],
                                      "mining_funcs": _BASE_ROLES["mining_funcs"]},
    "TwoStreamMetricLoss": {"models": ["trunk", "embedder"], "loss_funcs": ["metric_loss"],
                            "mining_funcs": ["tuple_miner"]},
}
TRAINER_REQUIRED = {"DeepAdversarialMetricLearning": {"models": ["generator"],
                                                      "loss_funcs": ["synth_loss", "g_adv_loss"]}}
DAML_WEIGHTS = ("g_hard_loss", "g_reg_loss")  # DeepAdversarialMetricLearning's own loss terms
SCHEDULER_SUFFIXES = ("_scheduler_by_iteration", "_scheduler_by_epoch", "_scheduler_by_plateau")


@dataclass(frozen=True)
class SplitSettings:
    test_size: float | int = 0.5  # fraction of the classes (float < 1) or a number of classes
    test_start_idx: float | int = 0.5  # where the test block starts (fraction or position); wraps
    num_training_partitions: int = 4  # class-disjoint partitions of the non-test classes
    num_training_sets: int = 4  # folds: validate on partition k, train on the others
    shuffle_classes: bool = False  # shuffle the class order with ``seed`` before splitting


@dataclass(frozen=True)
class EvalSettings:
    metric: str | None = None  # the metric to optimise (None: the study's metric, else MAP@R)
    metrics: tuple[str, ...] = DEFAULT_METRICS  # computed and recorded every epoch
    knn: str = "auto"  # faiss when installed, else pytorch-metric-learning's torch kNN
    normalize_embeddings: bool = True  # L2-normalise embeddings before the kNN
    batch_size: int = 256  # batch size when computing embeddings


@dataclass(frozen=True)
class Settings:
    seed: int = 0  # seeds splits, weights and batches (fold k uses seed + k)
    batch_size: int = 32
    iterations_per_epoch: int | None = None  # None: one pass over the training data
    max_epochs: int = 10
    patience: int | None = None  # stop a fold when epoch - best_epoch > patience (None: never)
    fold_schedule: str = "sequential"  # or "interleaved": every fold trains one epoch in turn
    dataloader_num_workers: int = 0
    torch_threads: int | None = None  # None: 1 thread on CPU (workers share the cores)
    model_def_fn: str | None = None  # an optuna-metric-learning model-definition file
    mixed_precision: bool = False  # autocast float16 + GradScaler on CUDA devices (ignored on CPU)
    tensorboard: bool = False  # event files per trial and fold (see hyper_opt.metric_learning.records)
    tensorboard_statistics: bool = False  # also the losses' and miners' own statistics
    splits: SplitSettings = SplitSettings()
    evaluation: EvalSettings = EvalSettings()

    def optimised_metric(self, study_metric: str | Sequence[str] | None = None) -> str:
        """``evaluation:metric``, else the study's metric when it is an accuracy metric, else MAP@R."""
        if self.evaluation.metric:
            return self.evaluation.metric
        if isinstance(study_metric, str) and study_metric in METRICS:
            return study_metric
        return DEFAULT_METRIC

    def recorded_metrics(self, metric: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys((metric, *self.evaluation.metrics)))


# --------------------------------------------------------------------------- reading


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Problems(list):  # type: ignore[type-arg]
    def int(self, conf: Mapping[str, Any], key: str, path: str, default: Any, *, minimum: int,
            nullable: bool = False) -> Any:
        value = conf.get(key, default)
        if value is None and nullable:
            return None
        if not _is_int(value) or value < minimum:
            self.append(f"{path}: must be an integer >= {minimum}{' or null' if nullable else ''}, got {value!r}")
            return default
        return value

    def bool(self, conf: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = conf.get(key, default)
        if not isinstance(value, bool):
            self.append(f"{path}: must be true or false, got {value!r}")
            return default
        return value

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.append(f"{path}: must be a mapping, got {value!r}")
            return {}
        return value

    def unknown(self, section: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in section:
            if key not in allowed:
                self.append(f"{path + ':' if path else ''}{key}: unknown key (allowed: {', '.join(allowed)})")


def _read(conf: Mapping[str, Any], out: _Problems) -> Settings:
    d = Settings()
    splits = _read_splits(conf, out)
    evaluation = _read_evaluation(conf, out)

    schedule = conf.get("fold_schedule", d.fold_schedule)
    if schedule not in FOLD_SCHEDULES:
        out.append(f"fold_schedule: got {schedule!r}; allowed: {', '.join(FOLD_SCHEDULES)}")
        schedule = d.fold_schedule
    seed = conf.get("seed", d.seed)
    if not _is_int(seed):
        out.append(f"seed: must be an integer, got {seed!r}")
        seed = d.seed
    model_def_fn = conf.get("model_def_fn")
    if model_def_fn is not None and (not isinstance(model_def_fn, str) or not model_def_fn.endswith(".py")):
        out.append(f"model_def_fn: must be the path of a .py file, got {model_def_fn!r}")
        model_def_fn = None
    return Settings(
        seed=seed,
        batch_size=out.int(conf, "batch_size", "batch_size", d.batch_size, minimum=2),
        iterations_per_epoch=out.int(conf, "iterations_per_epoch", "iterations_per_epoch", None, minimum=1,
                                     nullable=True),
        max_epochs=out.int(conf, "max_epochs", "max_epochs", d.max_epochs, minimum=1),
        patience=out.int(conf, "patience", "patience", None, minimum=0, nullable=True),
        fold_schedule=schedule,
        dataloader_num_workers=out.int(conf, "dataloader_num_workers", "dataloader_num_workers", 0, minimum=0),
        torch_threads=out.int(conf, "torch_threads", "torch_threads", None, minimum=1, nullable=True),
        model_def_fn=model_def_fn,
        mixed_precision=out.bool(conf, "mixed_precision", "mixed_precision", False),
        **_tensorboard(conf.get("tensorboard", False), out),
        splits=splits,
        evaluation=evaluation,
    )


def _read_splits(conf: Mapping[str, Any], out: _Problems) -> SplitSettings:
    """The ``splits`` section: the held-out test classes and the cross-validation folds."""
    sp = out.mapping(conf.get("splits"), "splits")
    out.unknown(sp, SPLIT_KEYS, "splits")
    ds = SplitSettings()
    test_size = sp.get("test_size", ds.test_size)
    for key, value in (("test_size", test_size), ("test_start_idx", sp.get("test_start_idx", ds.test_start_idx))):
        if not (_is_int(value) and value >= 0) and not (_is_number(value) and 0.0 <= value < 1.0):
            out.append(f"splits:{key}: must be a fraction in [0, 1) or a whole number of classes, got {value!r}")
    partitions = out.int(sp, "num_training_partitions", "splits:num_training_partitions",
                         ds.num_training_partitions, minimum=2)
    sets = sp.get("num_training_sets", partitions)
    if not _is_int(sets) or not 1 <= sets <= partitions:
        out.append(f"splits:num_training_sets: must be an integer between 1 and num_training_partitions "
                   f"({partitions}), got {sets!r}")
        sets = partitions
    splits = SplitSettings(test_size=test_size if _is_number(test_size) else ds.test_size,
                           test_start_idx=sp.get("test_start_idx", ds.test_start_idx)
                           if _is_number(sp.get("test_start_idx", ds.test_start_idx)) else ds.test_start_idx,
                           num_training_partitions=partitions, num_training_sets=sets,
                           shuffle_classes=out.bool(sp, "shuffle_classes", "splits:shuffle_classes", False))
    return splits


def _read_evaluation(conf: Mapping[str, Any], out: _Problems) -> EvalSettings:
    """The ``evaluation`` section: the metrics, the kNN backend and the embedding batch size."""
    ev = out.mapping(conf.get("evaluation"), "evaluation")
    out.unknown(ev, EVAL_KEYS, "evaluation")
    de = EvalSettings()
    metric = ev.get("metric")
    if metric is not None and metric not in METRICS:
        out.append(f"evaluation:metric: got {metric!r}; allowed: {', '.join(METRICS)}")
        metric = None
    metrics = ev.get("metrics", list(de.metrics))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        out.append(f"evaluation:metrics: must be a list of metric names, got {metrics!r}")
        metrics = list(de.metrics)
    for i, m in enumerate(metrics):
        if m not in METRICS:
            out.append(f"evaluation:metrics:{i}: got {m!r}; allowed: {', '.join(METRICS)}")
    knn = ev.get("knn", de.knn)
    if knn not in KNN_BACKENDS:
        out.append(f"evaluation:knn: got {knn!r}; allowed: {', '.join(KNN_BACKENDS)}")
        knn = de.knn
    elif knn == "faiss":
        from hyper_opt.metric_learning.evaluation import faiss_available

        if not faiss_available():
            out.append("evaluation:knn: 'faiss' but faiss is not installed "
                       "(pip install 'hyper_opt[faiss]' or faiss-gpu; or use knn: auto)")
    evaluation = EvalSettings(
        metric=metric, metrics=tuple(m for m in metrics if m in METRICS) or de.metrics, knn=knn,
        normalize_embeddings=out.bool(ev, "normalize_embeddings", "evaluation:normalize_embeddings", True),
        batch_size=out.int(ev, "batch_size", "evaluation:batch_size", de.batch_size, minimum=1))
    return evaluation


def _tensorboard(value: Any, out: _Problems) -> dict[str, bool]:
    """``tensorboard: true | false | {statistics: true}``."""
    if isinstance(value, bool):
        return {"tensorboard": value, "tensorboard_statistics": False}
    if isinstance(value, Mapping):
        out.unknown(value, ("statistics",), "tensorboard")
        return {"tensorboard": True,
                "tensorboard_statistics": out.bool(value, "statistics", "tensorboard:statistics", False)}
    out.append(f"tensorboard: must be true, false or {{statistics: true}}, got {value!r}")
    return {"tensorboard": False, "tensorboard_statistics": False}


def read_settings(conf: Mapping[str, Any]) -> Settings:
    """The scalar settings of a model config; ConfigError when any is invalid."""
    out = _Problems()
    settings = _read(conf, out)
    if out:
        raise ConfigError(list(out), source="the metric-learning model config")
    return settings


# --------------------------------------------------------------------------- validation


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """``~`` and ``$VARIABLES`` expanded; relative to ``base_dir`` (the model config's folder)."""
    path = expand_path(value)
    if path.is_absolute() or base_dir is None:
        return path
    return (base_dir / path).resolve()


def problems(conf: Mapping[str, Any], *, parameters: Sequence[ParameterSpec] = (),
             base_dir: Path | None = None, study_metric: str | Sequence[str] | None = None) -> list[str]:
    """Every problem of a metric-learning model config, as ``key:path: message`` lines."""
    out = _Problems()
    if not isinstance(conf, Mapping):
        return [f"the model config must be a mapping, got {type(conf).__name__}"]
    settings = _read(conf, out)
    model_def = settings.model_def_fn is not None
    if not model_def:
        out.unknown(conf, TOP_KEYS, "")
    if model_def and base_dir is not None:
        path = resolve_path(settings.model_def_fn or "", base_dir)
        if not path.is_file():
            out.append(f"model_def_fn: file not found: {settings.model_def_fn!r} (looked for {path})")
    if isinstance(study_metric, str) and settings.evaluation.metric is None and study_metric not in METRICS:
        out.append(f"optuna:metric is {study_metric!r}, which the metric-learning objective does not compute; "
                   f"use one of {', '.join(METRICS)} (or set evaluation:metric in the model config and "
                   "name it in optuna:metric)")
    try:
        trainer = comp.selected(conf.get("trainer", "MetricLossOnly"), "trainer")
    except comp.SpecError as err:
        out.append(str(err))
        trainer = comp.Component("MetricLossOnly", {}, "trainer")
    if trainer.name is None:
        out.append("trainer: must name a trainer (MetricLossOnly, TrainWithClassifier, ...)")
        trainer = comp.Component("MetricLossOnly", {}, "trainer")
    out.extend(comp.check("trainer", trainer, supplied=TRAINER_SUPPLIED))
    roles = TRAINER_ROLES.get(trainer.name or "", None)
    if not model_def:
        for section, required in (("dataset", True), ("models", True), ("loss_funcs", True),
                                  ("optimizers", True)):
            if required and conf.get(section) in (None, {}, []):
                out.append(f"{section}: missing (see docs/metric_learning.md for an example)")
    _check_dataset(conf, out, base_dir)
    model_roles = _check_roles(conf, out, "models", "model", roles)
    loss_roles = _check_roles(conf, out, "loss_funcs", "loss", roles)
    _check_roles(conf, out, "mining_funcs", "miner", roles)
    if not model_def and conf.get("models") and "trunk" not in model_roles:
        out.append("models:trunk: missing (the network whose output is embedded)")
    if trainer.name in TRAINER_REQUIRED and not model_def:
        for section, keys in TRAINER_REQUIRED[trainer.name].items():
            present = model_roles if section == "models" else loss_roles
            for key in keys:
                if key not in present:
                    out.append(f"{section}:{key}: {trainer.name} needs it")
    from hyper_opt.metric_learning import trainer_options

    out.extend(trainer_options.problems(trainer.kwargs, trainer.path or "trainer",
                                        targets=None if model_def else [*model_roles, *loss_roles]))
    if trainer.name == "DeepAdversarialMetricLearning":
        try:
            g_adv = comp.selected((conf.get("loss_funcs") or {}).get("g_adv_loss"), "loss_funcs:g_adv_loss")
            if g_adv.name not in (None, "TripletMarginLoss"):
                out.append("loss_funcs:g_adv_loss: DeepAdversarialMetricLearning needs TripletMarginLoss, "
                           f"got {g_adv.name!r}")
        except comp.SpecError:
            pass
    if conf.get("sampler") is not None:
        try:
            options, _ = comp.alternatives(conf.get("sampler"), "sampler")
            for option in options:
                out.extend(comp.check("sampler", option, supplied=("labels",)))
        except comp.SpecError as err:
            out.append(str(err))
    targets = set(model_roles) | set(loss_roles)
    _check_keyed(conf, out, "optimizers", "optimizer", targets, ("_optimizer",), supplied=("params",))
    _check_keyed(conf, out, "lr_schedulers", "lr_scheduler", targets, SCHEDULER_SUFFIXES, supplied=("optimizer",))
    weights = out.mapping(conf.get("loss_weights"), "loss_weights")
    weighted = list(loss_roles) + list(DAML_WEIGHTS if trainer.name == "DeepAdversarialMetricLearning" else ())
    for key, value in weights.items():
        if key not in weighted:
            out.append(f"loss_weights:{key}: not a key of loss_funcs ({', '.join(weighted) or 'none'})")
        elif not _is_number(value) or value < 0:
            out.append(f"loss_weights:{key}: must be a number >= 0, got {value!r}")
    out.extend(_check_parameters(conf, parameters))
    return list(out)


def _check_dataset(conf: Mapping[str, Any], out: _Problems, base_dir: Path | None) -> None:
    if conf.get("dataset") is None:
        return
    try:
        options, chosen = comp.alternatives(conf["dataset"], "dataset")
    except comp.SpecError as err:
        out.append(str(err))
        return
    from hyper_opt.metric_learning.data import PATH_KWARGS

    for option in options:
        out.extend(comp.check("dataset", option))
        if option.name != chosen:  # the roots of datasets the config does not use need not exist here
            continue
        for key in PATH_KWARGS:
            value = option.kwargs.get(key)
            if not isinstance(value, str) or base_dir is None:
                continue
            unset = unset_variables(value)
            if unset:
                out.append(f"{option.path}:{key}: environment variable {', '.join('$' + v for v in unset)} "
                           f"is not set (in {value!r})")
            elif not resolve_path(value, base_dir).exists():
                out.append(f"{option.path}:{key}: folder not found: {value!r} (looked for "
                           f"{resolve_path(value, base_dir)})")


def _role_allowed(key: str, patterns: Sequence[str]) -> bool:
    import re

    return any(re.fullmatch(p, key) for p in patterns)


def _check_roles(conf: Mapping[str, Any], out: _Problems, section: str, kind: str,
                 roles: Mapping[str, Sequence[str]] | None) -> list[str]:
    """Check a role -> component section; return the roles that select a component."""
    present: list[str] = []
    for role, spec in out.mapping(conf.get(section), section).items():
        path = f"{section}:{role}"
        if roles is not None and not _role_allowed(str(role), roles[section]):
            out.append(f"{path}: not a {section} key of the trainer; allowed: {', '.join(roles[section])}")
            continue
        if kind == "model" and isinstance(spec, list):
            for i, item in enumerate(spec):
                try:
                    opts, _ = comp.alternatives(item, f"{path}:{i}")
                except comp.SpecError as err:
                    out.append(str(err))
                    continue
                for opt in opts:
                    out.extend(comp.check(kind, opt))
            present.append(str(role))
            continue
        try:
            options, chosen = comp.alternatives(spec, path)
        except comp.SpecError as err:
            out.append(str(err))
            continue
        for option in options:
            out.extend(comp.check(kind, option))
        if chosen is not None:
            present.append(str(role))
    return present


def _check_keyed(conf: Mapping[str, Any], out: _Problems, section: str, kind: str, targets: set[str],
                 suffixes: Sequence[str], *, supplied: tuple[str, ...]) -> None:
    for key, spec in out.mapping(conf.get(section), section).items():
        path = f"{section}:{key}"
        suffix = next((s for s in suffixes if str(key).endswith(s)), None)
        target = str(key)[: -len(suffix)] if suffix else None
        if suffix is None or target not in targets:
            wanted = " or ".join(f"<name>{s}" for s in suffixes)
            out.append(f"{path}: keys are {wanted} where <name> is a key of models or loss_funcs "
                       f"({', '.join(sorted(targets)) or 'none'})")
            continue
        try:
            options, _ = comp.alternatives(spec, path)
        except comp.SpecError as err:
            out.append(str(err))
            continue
        for option in options:
            out.extend(comp.check(kind, option, supplied=supplied))


def _check_parameters(conf: Mapping[str, Any], parameters: Sequence[ParameterSpec]) -> list[str]:
    """Searched keys that point into the metric-learning sections must exist (the search only
    patches existing keys), and a searched ``choose`` may only pick offered components."""
    from hyper_opt.space import get_path, has_path

    found = []
    for spec in parameters:
        path = spec.path
        where = f"optuna:parameters:{spec.key}"
        if path[0] not in TOP_KEYS or path[0] == "optuna":
            continue
        if not has_path(conf, path):
            found.append(f"{where}: not a key path of the model config, so the search would change nothing; "
                         "write the key there with a default value (for a component's argument: "
                         "SECTION:ROLE:ComponentName:argument)")
            continue
        if path[-1] == comp.CHOOSE and spec.type == "categorical":
            parent = get_path(conf, path[:-1])
            offered = [k for k in parent if k != comp.CHOOSE] if isinstance(parent, Mapping) else []
            for choice in spec.settings.get("choices", []):
                if not comp.is_none(choice) and choice not in offered:
                    found.append(f"{where}: choice {choice!r} is not offered under {':'.join(path[:-1])} "
                                 f"(offered: {', '.join(map(str, offered))} or none); add it with its arguments")
    return found


def validate(conf: Mapping[str, Any], *, parameters: Sequence[ParameterSpec] = (),
             base_dir: Path | None = None, study_metric: str | Sequence[str] | None = None,
             source: str = "the metric-learning model config") -> Settings:
    """Check a model config; raise ConfigError with every problem, else return its settings."""
    found = problems(conf, parameters=parameters, base_dir=base_dir, study_metric=study_metric)
    if found:
        raise ConfigError(found, source=source)
    return read_settings(conf)
