"""``hyper-opt test HYPER.yml MODEL.yml [--trial N]``: a trial's fold models on the held-out test classes.

The test classes never take part in the search: no trial trains or validates on them. This
command loads the trial's best-epoch models of every fold (saved under
``<save_path>/metric_learning/trial_<N>/fold_<k>/``) and scores them on the test set:

* ``fold_<k>``: each fold's models alone;
* ``mean_of_folds``: the mean of those scores;
* ``concatenated``: one embedding per sample, the L2-normalised embeddings of every fold model
  side by side (the paper's "concatenated" evaluation);
* ``untrained``: the same architecture at its seeded initialisation (the baseline training
  must beat);
* ``raw_input``: the test inputs themselves, flattened (as the dataset gives them, i.e. after
  its normalisation) and L2-normalised, scored with the same kNN: what training bought over no
  model at all. Skipped, with a warning, when the flattened test set would exceed
  :data:`RAW_INPUT_LIMIT` values (full-size photographs). ``--no-baseline`` skips both rows.

It reads the study but never changes it, and writes ``test_results.yml`` and
``test_results.csv`` in the trial's folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt.cli.common import add_common_arguments

logger = logging.getLogger(__name__)

RESULTS_YAML = "test_results.yml"
RESULTS_CSV = "test_results.csv"
RAW_INPUT_LIMIT = 2**28  # flattened test-set values (1 GiB of float32) above which raw_input is skipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="optional")
    parser.add_argument("--trial", type=int, metavar="N", help="the trial to test (default: the best trial)")
    parser.add_argument("--model-def-fn", type=Path, metavar="FILE",
                        help="an optuna-metric-learning model-definition file (sets model_def_fn; its get() "
                             "must return a 'test_dataset' function)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu or cuda:0 (default: cuda:0 when the study "
                        "uses a GPU and one is visible, else cpu)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baselines (untrained model, raw inputs)")


def run(args: argparse.Namespace) -> int:
    from hyper_opt.cli.common import load_from_args, setup_logging

    config, model = load_from_args(args)
    setup_logging("WARNING", debug=args.debug)
    require_metric_learning(config)
    report = test_trial(config, model, trial_number=args.trial, model_def_fn=args.model_def_fn,
                        device=args.device, baseline=not args.no_baseline)
    print(format_report(report))
    return 0


def require_metric_learning(config: Any) -> None:
    """``test`` evaluates the fold models the metric-learning objective saves: refuse any other
    objective at once, instead of reading its model config as a metric-learning one."""
    from hyper_opt.exceptions import HyperOptError
    from hyper_opt.loader import load_module
    from hyper_opt.metric_learning.objective import Objective

    spec = config.optuna.objective
    cls = getattr(load_module(spec), spec.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise HyperOptError(
            f"'hyper-opt test' applies to the metric-learning objective (hyper_opt.metric_learning:Objective "
            f"or a subclass of it); this study's objective is {spec.describe()}. To run one of its trials "
            "again, use 'hyper-opt rerun HYPER MODEL --trial N'")


# --------------------------------------------------------------------------- reading the study


def read_trial(config: Any, number: int | None) -> Any:
    """The trial to test (a FrozenTrial), read without changing the study."""
    import optuna

    from hyper_opt.exceptions import HyperOptError
    from hyper_opt.study import read_study

    opened = read_study(config)  # neither locks nor enqueues
    try:
        trials = opened.storage.get_all_trials(opened.study_id)
        if number is None:
            if len(opened.study.directions) > 1:
                raise HyperOptError("the study is multi-objective: pick a trial with --trial N")
            complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            if not complete:
                raise HyperOptError(f"study {config.optuna.study_name!r} has no COMPLETE trial to test yet")
            trial = opened.study.best_trial
        else:
            found = [t for t in trials if t.number == number]
            if not found:
                raise HyperOptError(f"study {config.optuna.study_name!r} has no trial {number} "
                                    f"(trials 0..{len(trials) - 1})")
            trial = found[0]
        if trial.state != optuna.trial.TrialState.COMPLETE:
            raise HyperOptError(f"trial {trial.number} is {trial.state.name}: only COMPLETE trials keep "
                                "their fold models")
        return trial
    finally:
        opened.lock.close()


# --------------------------------------------------------------------------- testing


def test_trial(config: Any, model: Mapping[str, Any] | None, *, trial_number: int | None = None,
               model_def_fn: Path | None = None, device: str | None = None, baseline: bool = True) -> dict[str, Any]:
    """Evaluate one trial's fold models on the test classes; write and return the results."""
    import optuna
    import yaml

    from hyper_opt import results, space
    from hyper_opt.exceptions import HyperOptError
    from hyper_opt.metric_learning.evaluation import knn_backend
    from hyper_opt.metric_learning.objective import model_part
    from hyper_opt.metric_learning.plan import make_plan, quiet_training
    from hyper_opt.metric_learning.settings import validate

    trial = read_trial(config, trial_number)
    trial_dir = config.save_path / "metric_learning" / f"trial_{trial.number}"
    saved = trial_dir / "model_config.yml"
    if saved.is_file():
        conf = yaml.safe_load(saved.read_text()) or {}
    elif model is not None:
        conf = space.patch(model, config.optuna.parameters, trial.params)
    else:
        raise HyperOptError(f"{saved} is missing and no model config was given")
    conf = model_part(conf)
    _apply_model_overrides(conf, config.overrides)
    base_dir = (config.model_path or config.hyper_path).resolve().parent
    if model_def_fn is not None:
        from hyper_opt.metric_learning.paths import expand_path

        conf["model_def_fn"] = str(expand_path(model_def_fn).resolve())
    metric_name = config.optuna.metrics[0] if len(config.optuna.metrics) == 1 else None
    settings = validate(conf, base_dir=base_dir, source=str(saved))
    metric = settings.optimised_metric(metric_name)
    metrics = settings.recorded_metrics(metric)
    if device is None:
        from hyper_opt.objective import trial_device

        device = trial_device(config.optuna.gpu)
    folds = sorted(trial_dir.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    if not folds:
        raise HyperOptError(f"no fold models under {trial_dir} (was trial {trial.number} run with "
                            "hyper_opt.metric_learning:Objective and this save_path?)")
    threads = settings.torch_threads or (1 if device == "cpu" else None)
    with quiet_training(threads=threads):
        plan = make_plan(conf, settings, trial=optuna.trial.FixedTrial(trial.params), device=device,
                         base_dir=base_dir)
        if plan.test_dataset is None:
            raise HyperOptError("there is no test set: splits:test_size is 0" if settings.model_def_fn is None
                                else "the model-definition file's get() returned no 'test_dataset' function")
        scores, labels = _score_folds(plan, folds, settings, metrics, device=device, baseline=baseline)
    report = {
        "study": config.optuna.study_name, "trial": trial.number, "state": trial.state.name,
        "value": trial.value, "params": dict(trial.params), "metric": metric,
        "test_samples": int(len(labels)), "test_classes": plan.test_classes,
        "knn": knn_backend(settings.evaluation.knn), "folds": len(folds),
        "tested_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "results": scores,
    }
    results.atomic_write_text(trial_dir / RESULTS_YAML, yaml.safe_dump(report, sort_keys=False))
    rows = [{"model": name, **values} for name, values in scores.items()]
    results.atomic_write_text(trial_dir / RESULTS_CSV, results.to_csv(rows, ["model", *metrics]))
    report["files"] = [str(trial_dir / RESULTS_YAML), str(trial_dir / RESULTS_CSV)]
    if (trial_dir / "tensorboard").is_dir():
        report["tensorboard"] = f"tensorboard --logdir {trial_dir.parent}"
    return report


def _score_folds(plan: Any, folds: Sequence[Path], settings: Any, metrics: Sequence[str], *, device: str,
                 baseline: bool) -> tuple[dict[str, dict[str, float]], Any]:
    """Test-set scores of each fold's model, their mean and their concatenated embeddings (and,
    with ``baseline``, of the untrained model and of the raw inputs); the test labels."""
    from hyper_opt.metric_learning.evaluation import make_calculator

    test_set = plan.test_dataset()
    calculator = make_calculator(metrics, knn=settings.evaluation.knn, device=device, seed=settings.seed)
    opts = {"device": device, "batch_size": settings.evaluation.batch_size,
            "normalize": True, "num_workers": settings.dataloader_num_workers}
    scores: dict[str, dict[str, float]] = {}
    if baseline:
        streams, labels = _embed(plan.fold_models(0), test_set, opts)
        scores["untrained"] = _score(calculator, streams, labels)
        raw = raw_input_embeddings(test_set, opts)
        if raw is not None:
            scores["raw_input"] = _score(calculator, *raw)
    per_fold = []
    for folder in folds:
        k = int(folder.name.split("_")[1])
        models = _load_models(plan.fold_models(k), folder, device)
        streams, labels = _embed(models, test_set, opts)
        per_fold.append(streams)
        scores[f"fold_{k}"] = _score(calculator, streams, labels)
    fold_rows = [v for k, v in scores.items() if k.startswith("fold_")]
    scores["mean_of_folds"] = {m: float(sum(r[m] for r in fold_rows) / len(fold_rows)) for m in metrics}
    import torch

    concatenated = [torch.cat([s[i] for s in per_fold], dim=1) for i in range(len(per_fold[0]))]
    scores["concatenated"] = _score(calculator, concatenated, labels)
    return scores, labels


def _apply_model_overrides(conf: dict[str, Any], overrides: Sequence[str]) -> None:
    """``--set`` overrides of the model config apply to the trial's saved config too (e.g. a
    dataset that moved: ``--set dataset:cub200:dataset_root=/new/place``)."""
    from hyper_opt.config import HYPER_SECTIONS, apply_overrides, parse_override
    from hyper_opt.exceptions import ConfigError

    wanted = [o for o in overrides if parse_override(o)[0][0] not in (*HYPER_SECTIONS, "hyper")]
    problems = apply_overrides({}, conf, wanted)
    if problems:
        raise ConfigError(problems, source="the command line (applied to the trial's saved model config)")


def raw_input_embeddings(dataset: Any, opts: Mapping[str, Any]) -> tuple[list[Any], Any] | None:
    """The dataset's inputs flattened and L2-normalised (the ``raw_input`` baseline); None when
    they would hold more than RAW_INPUT_LIMIT values."""
    import torch

    first = dataset[0]
    size = int(torch.as_tensor(first["data"] if isinstance(first, Mapping) else first[0]).numel())
    if size * len(dataset) > RAW_INPUT_LIMIT:
        logger.warning("raw_input baseline skipped: %d test samples of %d values exceed %d values",
                       len(dataset), size, RAW_INPUT_LIMIT)
        return None
    return _embed({"trunk": torch.nn.Identity()}, dataset, {**opts, "device": "cpu"})


def _load_models(models: dict[str, Any], folder: Path, device: Any) -> dict[str, Any]:
    import torch

    from hyper_opt.exceptions import HyperOptError

    for name in ("trunk", "embedder"):
        file = folder / f"{name}.pth"
        if name not in models:
            continue
        if not file.is_file():
            if name == "trunk":
                raise HyperOptError(f"{file} is missing")
            continue
        state = torch.load(file, map_location=device, weights_only=True)
        try:
            models[name].load_state_dict(state)
        except RuntimeError as err:
            raise HyperOptError(f"{file} does not fit the model the trial's config builds: {err}") from err
    return models


def _embed(models: Mapping[str, Any], dataset: Any, opts: Mapping[str, Any]) -> tuple[list[Any], Any]:
    from hyper_opt.metric_learning.evaluation import compute_embeddings

    return compute_embeddings(models, dataset, **opts)


def _score(calculator: Any, streams: Sequence[Any], labels: Any) -> dict[str, float]:
    import torch

    from hyper_opt.metric_learning.evaluation import accuracy

    if not all(bool(torch.isfinite(s).all()) for s in streams):
        return {m: 0.0 for m in calculator.get_curr_metrics()}
    if len(streams) == 2:
        return accuracy(calculator, streams[0], labels, streams[1], labels)
    return accuracy(calculator, streams[0], labels)


def format_report(report: Mapping[str, Any]) -> str:
    scores = report["results"]
    metrics = list(next(iter(scores.values())))
    width = max(len(m) for m in metrics) + 2
    value = report.get("value")
    lines = [f"trial {report['trial']} of study {report['study']!r} (validation {report['metric']} "
             f"{value:.4f}); test set: {report['test_samples']} samples of {len(report['test_classes'] or [])} "
             f"held-out classes; kNN: {report['knn']}" if isinstance(value, float) and math.isfinite(value)
             else f"trial {report['trial']} of study {report['study']!r}",
             "model".ljust(16) + "".join(m.rjust(width) for m in metrics)]
    for name, values in scores.items():
        lines.append(name.ljust(16) + "".join(f"{values[m]:.4f}".rjust(width) for m in metrics))
    if report.get("tensorboard"):
        lines.append(f"training records: {report['tensorboard']}")
    lines.append("results: " + ", ".join(report.get("files", [])))
    return "\n".join(lines)
