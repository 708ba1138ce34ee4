"""From the model YAML to one fold's models, losses, miners, sampler, optimizers, schedulers
and pytorch-metric-learning trainer.

Sizes flow from the data: a sample batch goes through each model as it is built, so that the
next one can use ``@input_size`` (and the loss ``@embedding_size``) without the YAML repeating
numbers that a searched parameter may change.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyper_opt.metric_learning import components as comp
from hyper_opt.metric_learning.data import PATH_KWARGS, LabeledData, as_labeled_data
from hyper_opt.metric_learning.settings import DAML_WEIGHTS, SCHEDULER_SUFFIXES, Settings, resolve_path
from hyper_opt.metric_learning.splits import Fold, indices_of

logger = logging.getLogger(__name__)

MODEL_DEFAULTS = {"input_size": "@input_size", "in_features": "@input_size", "in_channels": "@in_channels"}
ROLE_DEFAULTS = {
    "classifier": {"output_size": "@num_classes", "out_features": "@num_classes"},
    "generator": {"output_size": "@trunk_output_size", "out_features": "@trunk_output_size"},
}


def seed_everything(seed: int) -> None:
    """Seed python, numpy (pytorch-metric-learning's samplers draw from numpy's global
    generator) and torch, CPU and GPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(conf: Mapping[str, Any], base_dir: Path | None) -> LabeledData:
    """The dataset the model config names; relative ``root``/``dataset_root`` are resolved
    against ``base_dir`` (the model config's folder)."""
    component = comp.selected(conf.get("dataset"), "dataset")
    if component.name is None:
        raise comp.SpecError("dataset: none selected")
    kwargs = dict(component.kwargs)
    for key in PATH_KWARGS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = str(resolve_path(kwargs[key], base_dir))
    fn = comp.resolve("dataset", component.name)
    try:
        result = fn(**kwargs)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise comp.SpecError(f"dataset: {component.name} failed: {type(err).__name__}: {err}") from err
    return as_labeled_data(result, source=f"dataset {component.name}")


@dataclass
class FoldData:
    """One fold's datasets: training items carry class indices 0..C-1 of the training classes."""

    fold: Fold
    train: Any
    train_labels: np.ndarray
    val: Any
    num_classes: int


def fold_data(data: LabeledData, fold: Fold) -> FoldData:
    train_idx = indices_of(data.labels, fold.train_classes)
    val_idx = indices_of(data.labels, fold.val_classes)
    rank = {c: i for i, c in enumerate(sorted(fold.train_classes))}
    train_labels = np.asarray([rank[int(c)] for c in data.labels[train_idx]], dtype=np.int64)
    return FoldData(fold=fold, train=data.subset(train_idx, train=True, labels=train_labels),
                    train_labels=train_labels, val=data.subset(val_idx, train=False),
                    num_classes=len(rank))


class PairedStreams:
    """Two-stream items ``(anchor, posneg, label)`` for TwoStreamMetricLoss from single-stream
    data: the second stream is another sample of the same class."""

    def __init__(self, dataset: Any, labels: np.ndarray) -> None:
        self.dataset, self.labels = dataset, labels
        self.by_class: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            self.by_class.setdefault(int(label), []).append(i)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i][0], int(self.labels[i])
        others = self.by_class[y]
        j = others[random.randrange(len(others))] if len(others) > 1 else i
        if j == i and len(others) > 1:
            j = others[(others.index(i) + 1) % len(others)]
        return x, self.dataset[j][0], y


# --------------------------------------------------------------------------- models


def example_batch(dataset: Any, n: int = 2) -> Any:
    """The data of the first ``n`` items stacked (for size inference)."""
    import torch

    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([torch.as_tensor(item[0]) for item in items])


def _forward_size(module: Any, x: Any, device: Any) -> tuple[Any, int]:
    import torch

    was = module.training
    module.eval()
    with torch.no_grad():
        out = module(x.to(device))
    module.train(was)
    return out, int(out.reshape(len(out), -1).shape[1])


def build_model(spec: Any, path: str, context: Mapping[str, Any], example: Any, *, device: Any,
                defaults: Mapping[str, Any] | None = None) -> tuple[Any, Any, int]:
    """One model (a component, or a list of components run in sequence); returns the module,
    its output on ``example`` and the output's flattened size."""
    import torch

    context = dict(context)
    if isinstance(spec, list):
        layers = []
        x = example
        for i, item in enumerate(spec):
            layer, x, size = build_model(item, f"{path}:{i}", context, x, device=device,
                                         defaults=defaults if i == len(spec) - 1 else None)
            context["input_size"] = size
            context["in_channels"] = int(x.shape[1]) if x.dim() >= 2 else 1
            layers.append(layer)
        module = torch.nn.Sequential(*layers).to(device)
        out, size = _forward_size(module, example, device)
        return module, out, size
    component = comp.selected(spec, path)
    if component.name is None:
        module = torch.nn.Identity()
    else:
        module = comp.build("model", component, context, defaults={**MODEL_DEFAULTS, **(defaults or {})})
        if not isinstance(module, torch.nn.Module):
            raise comp.SpecError(f"{path}: {component.name} returned {type(module).__name__}, not a torch.nn.Module")
    module = module.to(device)
    out, size = _forward_size(module, example, device)
    return module, out, size


def build_models(conf: Mapping[str, Any], *, example: Any, num_classes: int, device: Any,
                 batch_size: int, embedding_sizes: list[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every model of the ``models`` section; returns (models, placeholder context)."""
    import torch

    section = dict(conf.get("models") or {})
    in_channels = int(example.shape[1]) if example.dim() >= 3 else 1
    context: dict[str, Any] = {"input_size": int(example[0].numel()), "in_channels": in_channels,
                               "num_classes": num_classes, "batch_size": batch_size}
    models: dict[str, Any] = {}
    trunk, trunk_out, trunk_size = build_model(section.get("trunk"), "models:trunk", context, example, device=device)
    models["trunk"] = trunk
    context["trunk_output_size"] = trunk_size
    embedder_spec = section.get("embedder")
    embedder, emb_out, emb_size = build_model(embedder_spec, "models:embedder",
                                              {**context, "input_size": trunk_size,
                                               "in_channels": int(trunk_out.shape[1]) if trunk_out.dim() >= 2 else 1},
                                              trunk_out, device=device)
    if embedder_spec is not None and not isinstance(embedder, torch.nn.Identity):
        models["embedder"] = embedder
    context["embedding_size"] = emb_size
    for role, spec in section.items():
        if role in ("trunk", "embedder"):
            continue
        path = f"models:{role}"
        if role == "generator":
            gen_in = torch.zeros(2, 3 * trunk_size)
            module, _, _ = build_model(spec, path, {**context, "input_size": 3 * trunk_size}, gen_in,
                                       device=device, defaults=ROLE_DEFAULTS["generator"])
        else:
            size = emb_size
            x = emb_out.reshape(len(emb_out), -1)
            if role.startswith("classifier_") and embedding_sizes:
                size = int(embedding_sizes[int(role.split("_")[1])])
                x = torch.zeros(2, size)
            module, _, _ = build_model(spec, path, {**context, "input_size": size}, x, device=device,
                                       defaults=ROLE_DEFAULTS["classifier"] if role.startswith("classifier") else None)
        if not isinstance(module, torch.nn.Identity):
            models[role] = module
    return models, context


# --------------------------------------------------------------------------- the rest of a trainer


def build_losses(conf: Mapping[str, Any], context: Mapping[str, Any], *, device: Any) -> dict[str, Any]:
    losses = {}
    for role, spec in (conf.get("loss_funcs") or {}).items():
        component = comp.selected(spec, f"loss_funcs:{role}")
        if component.name is not None:
            losses[role] = comp.build("loss", component, context).to(device)
    return losses


def build_miners(conf: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    miners = {}
    for role, spec in (conf.get("mining_funcs") or {}).items():
        component = comp.selected(spec, f"mining_funcs:{role}")
        if component.name is not None:
            miners[role] = comp.build("miner", component, context)
    return miners


def build_sampler(conf: Mapping[str, Any], context: Mapping[str, Any], labels: np.ndarray) -> Any:
    component = comp.selected(conf.get("sampler"), "sampler")
    if component.name is None:
        return None
    fn = comp.resolve("sampler", component.name)
    allowed = comp.accepted_kwargs(fn)
    supplied = {"labels": labels} if allowed is None or "labels" in allowed else {}
    return comp.build("sampler", component, context, supplied=supplied)


def build_optimizers(conf: Mapping[str, Any], context: Mapping[str, Any],
                     targets: Mapping[str, Any]) -> dict[str, Any]:
    """``<name>_optimizer`` for each model or loss that has trainable parameters (an optimizer
    for a parameter-free loss, e.g. when the search chose TripletMarginLoss over ArcFaceLoss,
    is skipped)."""
    optimizers = {}
    for key, spec in (conf.get("optimizers") or {}).items():
        target = key[: -len("_optimizer")]
        module = targets.get(target)
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        if not params:
            logger.debug("optimizers:%s skipped: %s has no trainable parameters", key, target)
            continue
        component = comp.selected(spec, f"optimizers:{key}")
        if component.name is not None:
            optimizers[key] = comp.build("optimizer", component, context, args=(params,))
    return optimizers


def build_schedulers(conf: Mapping[str, Any], context: Mapping[str, Any],
                     optimizers: Mapping[str, Any]) -> dict[str, Any]:
    schedulers = {}
    for key, spec in (conf.get("lr_schedulers") or {}).items():
        suffix = next(s for s in SCHEDULER_SUFFIXES if key.endswith(s))
        optimizer = optimizers.get(f"{key[: -len(suffix)]}_optimizer")
        component = comp.selected(spec, f"lr_schedulers:{key}")
        if optimizer is None or component.name is None:
            continue
        schedulers[key] = comp.build("lr_scheduler", component, context, args=(optimizer,))
    return schedulers


def trainer_kwargs(component: comp.Component, modules: Mapping[str, Any]) -> tuple[comp.Component, dict[str, Any]]:
    """The trainer component as it is called, and arguments to supply beside it: the YAML's
    ``gradient_clippers`` as callables on ``modules`` (supplied, so that they are not deep-copied
    away from the modules they clip; see :mod:`hyper_opt.metric_learning.trainer_options`)."""
    import dataclasses

    from hyper_opt.metric_learning import trainer_options

    kwargs = dict(component.kwargs)
    supplied = {}
    if isinstance(kwargs.get("gradient_clippers"), Mapping):
        supplied["gradient_clippers"] = trainer_options.gradient_clippers(kwargs.pop("gradient_clippers"), modules)
    if "freeze_these" in kwargs:
        kwargs["freeze_these"] = tuple(kwargs["freeze_these"])
    return dataclasses.replace(component, kwargs=kwargs), supplied


def maybe_mixed_precision(trainer: Any, settings: Settings, device: Any) -> Any:
    """With ``mixed_precision`` on a CUDA device, the trainer trains under autocast with a
    gradient scaler; on a CPU the setting is ignored with a warning."""
    if not settings.mixed_precision:
        return trainer
    import torch

    if torch.device(device).type != "cuda":
        logger.warning("mixed_precision: ignored on %s (float16 autocast needs a CUDA device)", device)
        return trainer
    from hyper_opt.metric_learning.trainer_options import enable_mixed_precision

    return enable_mixed_precision(trainer)


@dataclass
class Built:
    """What one fold trains: the trainer and the modules it holds."""

    trainer: Any
    models: dict[str, Any]
    val: Any


def build_trainer(conf: Mapping[str, Any], settings: Settings, fd: FoldData, *, device: Any,
                  end_of_iteration_hook: Callable[[Any], Any], end_of_epoch_hook: Callable[[Any], Any]) -> Built:
    """The fold's pytorch-metric-learning trainer, everything built from the model config."""
    trainer_component = comp.selected(conf.get("trainer", "MetricLossOnly"), "trainer")
    embedding_sizes = trainer_component.kwargs.get("embedding_sizes")
    models, context = build_models(conf, example=example_batch(fd.train), num_classes=fd.num_classes,
                                   device=device, batch_size=settings.batch_size, embedding_sizes=embedding_sizes)
    from hyper_opt.metric_learning.records import collecting_statistics

    with collecting_statistics(settings.tensorboard and settings.tensorboard_statistics):
        losses = build_losses(conf, context, device=device)
        miners = build_miners(conf, context)
    sampler = build_sampler(conf, context, fd.train_labels)
    optimizers = build_optimizers(conf, context, {**models, **losses})
    schedulers = build_schedulers(conf, context, optimizers)
    if "embedder" not in models:  # what the trainer would add, without its warning
        import torch

        models["embedder"] = torch.nn.Identity()
    weights = {name: 1.0 for name in losses}
    if trainer_component.name == "DeepAdversarialMetricLearning":
        weights.update({name: 1.0 for name in DAML_WEIGHTS})
    weights.update({k: float(v) for k, v in (conf.get("loss_weights") or {}).items() if k in weights})
    train_dataset = fd.train
    if trainer_component.name == "TwoStreamMetricLoss" and len(fd.train[0]) == 2:
        train_dataset = PairedStreams(fd.train, fd.train_labels)
    trainer_component, options = trainer_kwargs(trainer_component, {**models, **losses})
    trainer = comp.build("trainer", trainer_component, context, supplied={**options,
        "models": models, "optimizers": optimizers, "batch_size": settings.batch_size, "loss_funcs": losses,
        "dataset": train_dataset, "mining_funcs": miners, "iterations_per_epoch": settings.iterations_per_epoch,
        "data_device": device, "loss_weights": weights, "sampler": sampler, "lr_schedulers": schedulers,
        "dataloader_num_workers": settings.dataloader_num_workers,
        "end_of_iteration_hook": end_of_iteration_hook, "end_of_epoch_hook": end_of_epoch_hook,
    })
    trainer = maybe_mixed_precision(trainer, settings, device)
    return Built(trainer=trainer, models=trainer.models, val=fd.val)
