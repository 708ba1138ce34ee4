"""One trial: train every cross-validation fold, evaluate after each epoch, report, stop early.

After each epoch of a fold (pytorch-metric-learning's ``end_of_epoch_hook``) the fold's
validation classes are embedded and scored. A fold remembers its best epoch by the optimised
metric and keeps that epoch's models; it stops when ``epoch - best_epoch > patience``. The
trial's value is the mean over folds of each fold's best validation metric.

What optuna sees as intermediate values (for pruning):

* ``fold_schedule: sequential`` (folds one after another): after epoch ``e`` (1-based) of fold
  ``k`` the step is ``k * max_epochs + e`` and the value is fold ``k``'s best metric so far. A
  step therefore always means the same fold and epoch in every trial.
* ``fold_schedule: interleaved`` (every fold trains epoch ``e`` before any trains ``e + 1``):
  the step is ``e`` and the value is the mean over folds of each fold's best metric so far
  (a fold stopped by patience keeps its best). The last value reported is the trial's value.

Both curves never decrease, so a pruner compares trials by what they have reached so far. Files
go under ``<save_path>/metric_learning/trial_<number>/``: ``model_config.yml`` (the trial's
config), ``splits.yml``, ``history.csv`` (one row per fold and epoch, rewritten each epoch) and
``fold_<k>/`` with the best epoch's model weights (``<name>.pth``) and ``best.yml``. A pruned
trial keeps its history but not its weights.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyper_opt import results

logger = logging.getLogger(__name__)

BuildFold = Callable[[Callable[[Any], Any], Callable[[Any], Any]], Any]  # (iteration hook, epoch hook) -> Built


@dataclass(frozen=True)
class RunOptions:
    metric: str  # the optimised metric (higher is better)
    metrics: tuple[str, ...]  # every metric recorded
    max_epochs: int
    patience: int | None
    schedule: str  # "sequential" or "interleaved"
    seed: int
    device: Any = "cpu"
    eval_batch_size: int = 256
    normalize_embeddings: bool = True
    num_workers: int = 0
    knn: str = "auto"


@dataclass
class FoldState:
    """Progress of one fold."""

    index: int
    best_value: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    loss_sum: float = 0.0
    loss_count: int = 0
    built: Any = None

    @property
    def stopped(self) -> bool:
        return bool(self.stop_reason)

    def summary(self) -> dict[str, Any]:
        """Per-epoch metrics, columns by name (stored as the trial's ``fold_<k>`` attribute)."""
        keys = [k for k in (self.epochs[0] if self.epochs else {}) if k not in ("fold",)]
        out: dict[str, Any] = {k: [_clean(e.get(k)) for e in self.epochs] for k in keys}
        out["best_epoch"] = self.best_epoch
        out["best_value"] = _clean(self.best_value)
        out["stopped"] = self.stop_reason
        return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrialRun:
    """Trains the folds of one trial (see the module docstring)."""

    def __init__(self, fold_builders: Sequence[BuildFold], options: RunOptions, *, trial: Any,
                 report: Callable[[Any, float, int], None] | None, out_dir: Path | None,
                 recorder: Any | None = None) -> None:
        from hyper_opt.metric_learning.evaluation import make_calculator

        self.builders = list(fold_builders)
        self.options = options
        self.trial = trial
        self.report = report
        self.out_dir = out_dir
        self.folds = [FoldState(index=k) for k in range(len(self.builders))]
        self.calculator = make_calculator(options.metrics, knn=options.knn, device=options.device, seed=options.seed)
        self.rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self.recorder = recorder  # a records.TensorBoardRecorder, or None

    # ------------------------------------------------------------------ public

    def run(self) -> dict[str, Any]:
        import optuna

        try:
            if self.options.schedule == "interleaved":
                self._run_interleaved()
            else:
                self._run_sequential()
        except optuna.TrialPruned:
            self._discard_models()
            self._close_records(pruned=True)
            raise
        finally:
            for fold in self.folds:
                fold.built = None
        out = self.results()
        self._close_records(pruned=False, metrics=out)
        return out

    def _close_records(self, *, pruned: bool, metrics: dict[str, Any] | None = None) -> None:
        if self.recorder is None:
            return
        self.recorder.close()
        params = dict(getattr(self.trial, "params", {}) or {})
        finals = dict(metrics) if metrics is not None else {
            self.options.metric: self._mean_best()}
        try:
            self.recorder.hparams(params, {**finals, "pruned": float(pruned)})
        except Exception as err:  # noqa: BLE001 - records never fail a trial
            logger.warning("could not write the TensorBoard hparams record: %s", err)

    def _mean_best(self) -> float:
        bests = [f.best_value if math.isfinite(f.best_value) else 0.0 for f in self.folds]
        return sum(bests) / len(bests) if bests else math.nan

    def results(self) -> dict[str, Any]:
        """The dict ``train`` returns: each metric's mean over folds at their best epochs (the
        optimised one is the trial's value), and per-fold best values and epochs."""
        opts = self.options
        out: dict[str, Any] = {}
        for name in opts.metrics:
            values = [f.best_metrics.get(name, 0.0 if f.best_epoch == 0 else math.nan) for f in self.folds]
            if name == opts.metric:
                values = [f.best_value if math.isfinite(f.best_value) else 0.0 for f in self.folds]
            out[name] = float(sum(values) / len(values)) if values else math.nan
        for fold in self.folds:
            out[f"fold_{fold.index}_{opts.metric}"] = fold.best_value if math.isfinite(fold.best_value) else 0.0
            out[f"fold_{fold.index}_best_epoch"] = fold.best_epoch
            out[f"fold_{fold.index}_epochs"] = len(fold.epochs)
        out["epochs"] = sum(len(f.epochs) for f in self.folds)
        return out

    # ------------------------------------------------------------------ schedules

    def _build(self, fold: FoldState) -> None:
        from hyper_opt.metric_learning.build import seed_everything

        seed_everything(self.options.seed + fold.index)
        fold.built = self.builders[fold.index](self._iteration_hook(fold), self._epoch_hook(fold))

    def _run_sequential(self) -> None:
        for fold in self.folds:
            self._build(fold)
            logger.info("fold %d: training up to %d epochs", fold.index, self.options.max_epochs)
            fold.built.trainer.train(start_epoch=1, num_epochs=self.options.max_epochs)
            self._finish(fold)
            fold.built = None

    def _run_interleaved(self) -> None:
        from hyper_opt.metric_learning.build import seed_everything

        for fold in self.folds:
            self._build(fold)
        for epoch in range(1, self.options.max_epochs + 1):
            for fold in self.folds:
                if fold.stopped:
                    continue
                seed_everything(self.options.seed + 1000 * epoch + fold.index)
                fold.built.trainer.train(start_epoch=epoch, num_epochs=epoch)
            bests = [f.best_value if math.isfinite(f.best_value) else 0.0 for f in self.folds]
            self._report(sum(bests) / len(bests), epoch)
            if all(f.stopped for f in self.folds):
                break
        for fold in self.folds:
            self._finish(fold)

    def _finish(self, fold: FoldState) -> None:
        if not fold.stopped:
            fold.stop_reason = "max_epochs"
            self._record(fold)
        self._save_fold(fold)

    # ------------------------------------------------------------------ hooks

    def _iteration_hook(self, fold: FoldState) -> Callable[[Any], None]:
        def hook(trainer: Any) -> None:
            loss = trainer.losses.get("total_loss", 0)
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            fold.loss_sum += value
            fold.loss_count += 1
            if self.recorder is not None:
                self.recorder.iteration(fold.index, trainer)
        return hook

    def _epoch_hook(self, fold: FoldState) -> Callable[[Any], bool]:
        def hook(trainer: Any) -> bool:
            return self._end_of_epoch(fold, trainer)
        return hook

    def _end_of_epoch(self, fold: FoldState, trainer: Any) -> bool:
        from hyper_opt.metric_learning.evaluation import evaluate

        opts = self.options
        epoch = int(trainer.epoch)
        started = time.monotonic()
        metrics = evaluate(trainer.models, fold.built.val, self.calculator,
                           device=opts.device, batch_size=opts.eval_batch_size,
                           normalize=opts.normalize_embeddings, num_workers=opts.num_workers)
        value = metrics.get(opts.metric, math.nan)
        train_loss = fold.loss_sum / fold.loss_count if fold.loss_count else math.nan
        fold.loss_sum, fold.loss_count = 0.0, 0
        diverged = not math.isfinite(train_loss)
        improved = math.isfinite(value) and value > fold.best_value
        if improved:
            fold.best_value, fold.best_epoch, fold.best_metrics = value, epoch, dict(metrics)
            fold.best_state = {name: _cpu_state(module) for name, module in trainer.models.items()}
        step = fold.index * opts.max_epochs + epoch if opts.schedule == "sequential" else epoch
        row = {"fold": fold.index, "epoch": epoch, "step": step, **metrics, "train_loss": train_loss,
               "best_epoch": fold.best_epoch, "eval_s": round(time.monotonic() - started, 3),
               "elapsed_s": round(time.monotonic() - self._started, 3)}
        fold.epochs.append(row)
        self.rows.append(row)
        if diverged:
            fold.stop_reason = "non-finite training loss"
        elif opts.patience is not None and epoch - fold.best_epoch > opts.patience:
            fold.stop_reason = f"patience ({opts.patience} epochs without improvement after epoch {fold.best_epoch})"
        logger.info("fold %d epoch %d: %s %.4f (best %.4f at epoch %d)%s", fold.index, epoch, opts.metric,
                    value, fold.best_value, fold.best_epoch, f"; stopping: {fold.stop_reason}" if fold.stopped else "")
        trainer.step_lr_plateau_schedulers(value)
        if self.recorder is not None:
            self.recorder.epoch(fold.index, trainer, metrics, train_loss)
        self._record(fold)
        if opts.schedule == "sequential":
            self._report(fold.best_value if math.isfinite(fold.best_value) else 0.0, step)
        return not fold.stopped

    # ------------------------------------------------------------------ records

    def _report(self, value: float, step: int) -> None:
        if self.report is not None:
            self.report(self.trial, value, step)

    def _record(self, fold: FoldState) -> None:
        if self.trial is not None and hasattr(self.trial, "set_user_attr"):
            self.trial.set_user_attr(f"fold_{fold.index}", fold.summary())
        if self.out_dir is not None:
            header = list(dict.fromkeys(k for row in self.rows for k in row))
            results.atomic_write_text(self.out_dir / "history.csv", results.to_csv(self.rows, header))

    def _save_fold(self, fold: FoldState) -> None:
        if self.out_dir is None or fold.best_state is None:
            return
        import torch

        folder = self.out_dir / f"fold_{fold.index}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, state in fold.best_state.items():
            tmp = folder / f".{name}.pth.tmp"
            torch.save(state, tmp)
            tmp.replace(folder / f"{name}.pth")
        info = {"fold": fold.index, "best_epoch": fold.best_epoch, "epochs_trained": len(fold.epochs),
                "stopped": fold.stop_reason, "metric": self.options.metric,
                "metrics": {k: _clean(v) for k, v in fold.best_metrics.items()}, "models": sorted(fold.best_state)}
        results.atomic_write_text(folder / "best.yml", yaml.safe_dump(info, sort_keys=False))
        fold.best_state = None

    def _discard_models(self) -> None:
        if self.out_dir is None:
            return
        for fold in self.folds:
            shutil.rmtree(self.out_dir / f"fold_{fold.index}", ignore_errors=True)


def _cpu_state(module: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def write_trial_files(out_dir: Path, conf: Mapping[str, Any], splits: Mapping[str, Any] | None) -> None:
    """The trial's config and splits, written when it starts."""
    conf = {k: v for k, v in copy.deepcopy(dict(conf)).items() if k != "optuna"}
    results.atomic_write_text(out_dir / "model_config.yml", yaml.safe_dump(conf, sort_keys=False))
    if splits is not None:
        results.atomic_write_text(out_dir / "splits.yml", yaml.safe_dump(dict(splits), sort_keys=False))
