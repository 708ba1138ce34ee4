"""Components by name: the grammar of a component in the model YAML, the names each kind
accepts, and building one with its keyword arguments.

A component is written in one of these forms::

    trainer: MetricLossOnly                      # a name
    sampler: {MPerClassSampler: {m: 4}}          # a name and its keyword arguments
    tuple_miner: null                            # none (also the string "none")
    metric_loss:                                 # a choice between whole components:
      choose: TripletMarginLoss                  #   the selected one (searchable: a categorical
      TripletMarginLoss: {margin: 0.1}           #   parameter on ...:metric_loss:choose)
      ContrastiveLoss: {pos_margin: 0, neg_margin: 1}

A name is a built-in name of its kind (see :func:`registry`) or an import path,
``package.module:attr`` or ``package.module.attr``; inside a searched colon path only the dotted
form works. Keyword values may be placeholders filled in when the component is built
(:data:`PLACEHOLDERS`), and the keyword arguments ``distance``, ``reducer``, ``*_regularizer``,
``loss`` and ``miner`` of losses and miners are components themselves.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CHOOSE = "choose"
NONE_NAMES = ("none", "None", "null")
PLACEHOLDERS = {
    "@input_size": "the size of this module's input (features of the data for the trunk, the "
                   "trunk's output for the embedder, the embedding for a classifier)",
    "@in_channels": "the channels of image data",
    "@num_classes": "the number of classes of the fold's training set",
    "@embedding_size": "the size of the final embedding",
    "@trunk_output_size": "the size of the trunk's output",
    "@batch_size": "the batch_size setting",
}
KINDS = ("model", "loss", "miner", "sampler", "optimizer", "lr_scheduler", "trainer", "distance",
         "reducer", "regularizer", "dataset")
# Keyword arguments of losses and miners that are components themselves.
NESTED_KWARGS = {"distance": "distance", "reducer": "reducer", "loss": "loss", "miner": "miner",
                 "embedding_regularizer": "regularizer", "weight_regularizer": "regularizer"}
TRAINERS = ("MetricLossOnly", "TrainWithClassifier", "CascadedEmbeddings", "DeepAdversarialMetricLearning",
            "TwoStreamMetricLoss")


class SpecError(ValueError):
    """A component spec that does not follow the grammar, or names nothing usable."""


@dataclass(frozen=True)
class Component:
    """One component as selected in the YAML: its name (None: no component), keyword
    arguments and the key path it was read from (for messages)."""

    name: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""


# --------------------------------------------------------------------------- grammar


def is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in NONE_NAMES)


def alternatives(spec: Any, path: str) -> tuple[list[Component], str | None]:
    """Every component a spec offers, and the name selected (None: none selected).

    Raises SpecError when the spec does not follow the grammar.
    """
    if is_none(spec):
        return [], None
    if isinstance(spec, str):
        return [Component(spec, {}, path)], spec
    if not isinstance(spec, Mapping) or not spec:
        raise SpecError(f"{path}: expected a component name or a mapping {{Name: {{keyword: value}}}}, "
                        f"got {spec!r}")
    options = []
    for name, kwargs in spec.items():
        if name == CHOOSE:
            continue
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}: component names must be strings, got {name!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise SpecError(f"{path}:{name}: keyword arguments must be a mapping (or null), got {kwargs!r}")
        options.append(Component(name, dict(kwargs or {}), f"{path}:{name}"))
    if CHOOSE in spec:
        chosen = spec[CHOOSE]
        names = [c.name for c in options]
        if is_none(chosen):
            return options, None
        if chosen not in names:
            raise SpecError(f"{path}:{CHOOSE}: got {chosen!r}; allowed: {', '.join(map(str, names))} or none")
        return options, chosen
    if len(options) != 1:
        raise SpecError(f"{path}: {len(options)} components given ({', '.join(str(c.name) for c in options)}); "
                        f"add '{CHOOSE}: NAME' to select one of them")
    return options, options[0].name


def selected(spec: Any, path: str) -> Component:
    """The component a spec selects (name None when it selects none)."""
    options, chosen = alternatives(spec, path)
    for option in options:
        if option.name == chosen:
            return option
    return Component(None, {}, path)


# --------------------------------------------------------------------------- names


def is_import_path(name: str) -> bool:
    return ":" in name or "." in name


def import_object(name: str) -> Any:
    """``package.module:attr`` or ``package.module.attr``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise SpecError(f"{name!r} is not an import path 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise SpecError(f"cannot import {module_name!r} (from {name!r}): {type(err).__name__}: {err}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module_name!r} has no {attr!r} (from {name!r})")
        obj = getattr(obj, part)
    return obj


def _public_classes(module: Any, base: type, *, exclude: tuple[str, ...] = ()) -> dict[str, type]:
    out = {}
    for name in dir(module):
        obj = getattr(module, name)
        if (inspect.isclass(obj) and issubclass(obj, base) and not name.startswith(("_", "Base"))
                and name not in exclude and not inspect.isabstract(obj)):
            out[name] = obj
    return out


@functools.lru_cache(maxsize=None)
def registry(kind: str) -> dict[str, Any]:
    """The built-in names of one kind of component (imports torch and pytorch-metric-learning)."""
    if kind == "dataset":
        from hyper_opt.metric_learning.data import BUILTIN_DATASETS

        return dict(BUILTIN_DATASETS)
    import torch

    if kind == "model":
        from hyper_opt.metric_learning.models import BUILTIN_MODELS

        return {**_public_classes(torch.nn, torch.nn.Module, exclude=("Module", "ModuleDict", "ModuleList",
                                                                      "ParameterDict", "ParameterList")),
                **BUILTIN_MODELS}
    if kind == "optimizer":
        return _public_classes(torch.optim, torch.optim.Optimizer, exclude=("Optimizer",))
    if kind == "lr_scheduler":
        sched = torch.optim.lr_scheduler
        return {n: c for n, c in _public_classes(sched, object).items()
                if n.endswith(("LR", "Plateau")) and n != "LRScheduler"}
    from pytorch_metric_learning import distances, losses, miners, reducers, regularizers, samplers, trainers

    if kind == "loss":
        torch_losses = {n: c for n, c in _public_classes(torch.nn, torch.nn.Module).items() if n.endswith("Loss")}
        pml_losses = _public_classes(losses, torch.nn.Module,
                                     exclude=("GenericPairLoss", "EmbeddingRegularizerMixin",
                                              "WeightRegularizerMixin"))
        return {**torch_losses, **pml_losses}  # pytorch-metric-learning's TripletMarginLoss wins
    if kind == "miner":
        return _public_classes(miners, torch.nn.Module)
    if kind == "sampler":
        return _public_classes(samplers, torch.utils.data.Sampler)
    if kind == "trainer":
        return {n: getattr(trainers, n) for n in TRAINERS}
    if kind == "distance":
        return _public_classes(distances, torch.nn.Module, exclude=("BatchedDistance",))
    if kind == "reducer":
        return _public_classes(reducers, torch.nn.Module)
    if kind == "regularizer":
        return _public_classes(regularizers, torch.nn.Module)
    raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")


def resolve(kind: str, name: str) -> Any:
    """The callable a name stands for; SpecError listing the valid names otherwise."""
    names = registry(kind)
    if name in names:
        return names[name]
    if is_import_path(name):
        obj = import_object(name)
        if not callable(obj):
            raise SpecError(f"{name!r} is not callable")
        return obj
    raise SpecError(f"unknown {kind.replace('_', ' ')} {name!r}; valid names: {', '.join(sorted(names))} "
                    "(or an import path 'package.module:name')")


# --------------------------------------------------------------------------- keyword arguments


def accepted_kwargs(fn: Any) -> set[str] | None:
    """The keyword arguments ``fn`` accepts, following ``**kwargs`` up a class's MRO;
    None when anything goes (a ``**kwargs`` that cannot be followed)."""
    classes = list(inspect.getmro(fn)) if inspect.isclass(fn) else [None]
    names: set[str] = set()
    for cls in classes:
        target = fn if cls is None else cls.__dict__.get("__init__")
        if target is None:
            continue
        if cls is not None and cls.__module__.startswith(("torch.nn.modules.module", "builtins")):
            return names
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        params = list(sig.parameters.values())
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if cls is None:
            return None
    return None


def required_kwargs(fn: Any) -> list[str]:
    """Arguments without a default (the first ``params`` of an optimizer, ``labels`` of a sampler
    included)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def check(kind: str, component: Component, *, supplied: tuple[str, ...] = ()) -> list[str]:
    """Problems with one component: its name, its keyword names, placeholders and nested
    components. ``supplied`` are arguments hyper_opt passes itself (refused in the YAML)."""
    if component.name is None:
        return []
    try:
        fn = resolve(kind, component.name)
    except SpecError as err:
        return [f"{component.path}: {err}"]
    problems = []
    allowed = accepted_kwargs(fn)
    for key, value in component.kwargs.items():
        where = f"{component.path}:{key}"
        if key in supplied:
            problems.append(f"{where}: set by hyper_opt, remove it")
            continue
        if allowed is not None and key not in allowed:
            problems.append(f"{where}: {component.name} has no argument {key!r}; its arguments: "
                            f"{', '.join(sorted(a for a in allowed if a not in supplied)) or 'none'}")
            continue
        if key in NESTED_KWARGS and kind in ("loss", "miner") and not _is_plain_value(value):
            try:
                options, _ = alternatives(value, where)
            except SpecError as err:
                problems.append(str(err))
                continue
            for option in options:
                problems += check(NESTED_KWARGS[key], option)
            continue
        problems += _check_placeholders(value, where)
    return problems


def _is_plain_value(value: Any) -> bool:
    return isinstance(value, (int, float, bool)) or value is None


def _check_placeholders(value: Any, where: str) -> list[str]:
    if isinstance(value, str) and value.startswith("@") and value not in PLACEHOLDERS:
        return [f"{where}: unknown placeholder {value!r}; placeholders: {', '.join(PLACEHOLDERS)}"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _check_placeholders(v, f"{where}:{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _check_placeholders(v, f"{where}:{i}")]
    return []


def fill(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """``value`` with placeholders replaced from ``context`` (keys without the ``@``)."""
    if isinstance(value, str) and value.startswith("@") and value in PLACEHOLDERS:
        key = value[1:]
        if context.get(key) is None:
            raise SpecError(f"{where}: {value} is not known here ({PLACEHOLDERS[value]})")
        return context[key]
    if isinstance(value, Mapping):
        return {k: fill(v, context, f"{where}:{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, context, f"{where}:{i}") for i, v in enumerate(value)]
    return value


def build(kind: str, component: Component, context: Mapping[str, Any] | None = None, *,
          args: tuple[Any, ...] = (), supplied: Mapping[str, Any] | None = None,
          defaults: Mapping[str, Any] | None = None) -> Any:
    """Call the component: ``fn(*args, **supplied, **kwargs)``.

    ``defaults`` are used for arguments the YAML leaves out and ``fn`` accepts (placeholders
    allowed); losses get ``num_classes``/``embedding_size`` from the context when they need them.
    """
    if component.name is None:
        return None
    context = dict(context or {})
    fn = resolve(kind, component.name)
    kwargs: dict[str, Any] = {}
    allowed = accepted_kwargs(fn)
    for key, value in (defaults or {}).items():
        if key not in component.kwargs and (allowed is None or key in allowed):
            kwargs[key] = fill(value, context, f"{component.path}:{key}")
    if kind == "loss" and allowed is not None:
        for key in ("num_classes", "embedding_size"):
            if key in required_kwargs(fn) and key not in component.kwargs and context.get(key) is not None:
                kwargs[key] = context[key]
    for key, value in copy.deepcopy(dict(component.kwargs)).items():
        where = f"{component.path}:{key}"
        if key in NESTED_KWARGS and kind in ("loss", "miner") and not _is_plain_value(value):
            kwargs[key] = build(NESTED_KWARGS[key], selected(value, where), context)
        else:
            kwargs[key] = fill(value, context, where)
    kwargs.update(supplied or {})
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in (supplied or {}))
        raise SpecError(f"{component.path}: {component.name}({shown}) failed: {type(err).__name__}: {err}") from err


def describe_callable(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
