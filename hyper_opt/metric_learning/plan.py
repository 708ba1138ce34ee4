"""What one trial trains and what ``hyper-opt test`` evaluates, from YAML components or from an
optuna-metric-learning model-definition file: the folds' trainer builders, fresh models of a
fold (to load saved weights into) and the held-out test set."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper_opt.metric_learning import build as b
from hyper_opt.metric_learning import components as comp
from hyper_opt.metric_learning.settings import Settings, resolve_path
from hyper_opt.metric_learning.splits import class_disjoint_splits, indices_of

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    builders: list[Callable[[Callable[[Any], Any], Callable[[Any], Any]], b.Built]]
    fold_models: Callable[[int], dict[str, Any]]  # fresh (untrained, seeded) models of fold k
    test_dataset: Callable[[], Any] | None  # the held-out test classes (None: none defined)
    splits: dict[str, Any] | None  # class lists, for splits.yml
    test_classes: list[Any] | None = None


class DataCache:
    """Datasets by their YAML spec, so that a worker loads one dataset once for all trials."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, conf: Mapping[str, Any], base_dir: Path | None) -> Any:
        key = json.dumps([conf.get("dataset"), str(base_dir)], sort_keys=True, default=str)
        if key not in self._data:
            self._data.clear()
            self._data[key] = b.load_data(conf, base_dir)
        return self._data[key]


def make_plan(conf: Mapping[str, Any], settings: Settings, *, trial: Any, device: Any, base_dir: Path | None,
              cache: DataCache | None = None) -> Plan:
    if settings.model_def_fn is not None:
        return _model_def_plan(conf, settings, trial=trial, device=device, base_dir=base_dir)
    return _yaml_plan(conf, settings, device=device, base_dir=base_dir, cache=cache or DataCache())


# --------------------------------------------------------------------------- YAML components


def _yaml_plan(conf: Mapping[str, Any], settings: Settings, *, device: Any, base_dir: Path | None,
               cache: DataCache) -> Plan:
    data = cache.get(conf, base_dir)
    sp = settings.splits
    splits = class_disjoint_splits(data.num_classes, test_size=sp.test_size, test_start_idx=sp.test_start_idx,
                                   num_training_partitions=sp.num_training_partitions,
                                   num_training_sets=sp.num_training_sets, shuffle_classes=sp.shuffle_classes,
                                   seed=settings.seed)

    def builder(k: int, iteration_hook: Callable[[Any], Any], epoch_hook: Callable[[Any], Any]) -> b.Built:
        return b.build_trainer(conf, settings, b.fold_data(data, splits.folds[k]), device=device,
                               end_of_iteration_hook=iteration_hook, end_of_epoch_hook=epoch_hook)

    def fold_models(k: int) -> dict[str, Any]:
        fd = b.fold_data(data, splits.folds[k])
        trainer = comp.selected(conf.get("trainer", "MetricLossOnly"), "trainer")
        b.seed_everything(settings.seed + k)
        models, _ = b.build_models(conf, example=b.example_batch(fd.train), num_classes=fd.num_classes,
                                   device=device, batch_size=settings.batch_size,
                                   embedding_sizes=trainer.kwargs.get("embedding_sizes"))
        return models

    test = None
    if splits.test_classes:
        def test() -> Any:
            return data.subset(indices_of(data.labels, splits.test_classes), train=False)

    info = splits.as_dict(data.class_names)
    return Plan(builders=[functools.partial(builder, k) for k in range(len(splits.folds))],
                fold_models=fold_models, test_dataset=test, splits=info, test_classes=info["test_classes"])


# --------------------------------------------------------------------------- model-definition file


def _model_def_plan(conf: Mapping[str, Any], settings: Settings, *, trial: Any, device: Any,
                    base_dir: Path | None) -> Plan:
    from hyper_opt.metric_learning import model_def

    module = model_def.load_model_def(resolve_path(settings.model_def_fn or "", base_dir))
    cons = model_def.constructors(module, conf, trial)
    folds = [model_def.unpack_fold(item, i) for i, item in enumerate(cons["fold_generator"]())]
    trainer_component = comp.selected(conf.get("trainer", "MetricLossOnly"), "trainer")

    def fresh(k: int) -> dict[str, Any]:
        b.seed_everything(settings.seed + k)
        kwargs = model_def.trainer_kwargs(cons["modules"]())
        kwargs["models"] = {name: m.to(device) for name, m in kwargs["models"].items()}
        kwargs["loss_funcs"] = {name: m.to(device) for name, m in kwargs["loss_funcs"].items()}
        return kwargs

    def builder(k: int, iteration_hook: Callable[[Any], Any], epoch_hook: Callable[[Any], Any]) -> b.Built:
        train, dev, sampler, batch_size = folds[k]
        kwargs = fresh(k)
        weights = {name: 1.0 for name in kwargs["loss_funcs"]}
        weights.update(kwargs.pop("loss_weights", None) or {})
        component, options = b.trainer_kwargs(trainer_component, {**kwargs["models"], **kwargs["loss_funcs"]})
        trainer = comp.build("trainer", component, supplied={
            **kwargs, **options, "batch_size": batch_size, "dataset": train, "sampler": sampler,
            "loss_weights": weights,
            "iterations_per_epoch": settings.iterations_per_epoch, "data_device": device,
            "dataloader_num_workers": settings.dataloader_num_workers,
            "end_of_iteration_hook": iteration_hook, "end_of_epoch_hook": epoch_hook})
        return b.Built(trainer=b.maybe_mixed_precision(trainer, settings, device), models=trainer.models, val=dev)

    test = cons.get("test_dataset")
    return Plan(builders=[functools.partial(builder, k) for k in range(len(folds))],
                fold_models=lambda k: fresh(k)["models"], test_dataset=test if callable(test) else None,
                splits=None)


# --------------------------------------------------------------------------- runtime


@contextlib.contextmanager
def quiet_training(*, threads: int | None, verbose: bool = False) -> Iterator[None]:
    """Limit torch (and faiss) threads, and hide pytorch-metric-learning's per-epoch progress
    bars and INFO chatter unless ``verbose``; restored afterwards."""
    import torch

    from hyper_opt.metric_learning.evaluation import faiss_available

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
        if faiss_available():
            import faiss

            faiss.omp_set_num_threads(threads)
    caught = warnings.catch_warnings()
    caught.__enter__()
    # pytorch-metric-learning formats its loss tensor for the progress bar (harmless warning).
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    pml_logger = logging.getLogger("PML")
    old_level = pml_logger.level
    patched = None
    if not verbose:
        pml_logger.setLevel(logging.ERROR)  # e.g. 'optimizers is missing "embedder_optimizer"' 
        import tqdm as tqdm_module
        from pytorch_metric_learning.trainers import base_trainer

        class _QuietTqdm:
            @staticmethod
            def tqdm(*args: Any, **kwargs: Any) -> Any:
                return tqdm_module.tqdm(*args, **{**kwargs, "disable": True})

        patched = (base_trainer, base_trainer.tqdm)
        base_trainer.tqdm = _QuietTqdm
    try:
        yield
    finally:
        if patched is not None:
            patched[0].tqdm = patched[1]
        pml_logger.setLevel(old_level)
        caught.__exit__(None, None, None)
        if threads:
            torch.set_num_threads(old_threads)
