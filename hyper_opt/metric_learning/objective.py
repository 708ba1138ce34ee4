"""``Objective``: the built-in metric-learning objective (``hyper_opt.metric_learning:Objective``).

Everything it trains is named in the model YAML (see docs/metric_learning.md); this class
validates that YAML, builds each trial's folds, trains them (pruning, patience, best-epoch
models) and returns the mean over folds of each fold's best validation metric.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt.metric_learning.settings import problems, validate
from hyper_opt.objective import BaseObjective

if TYPE_CHECKING:
    import optuna

    from hyper_opt.config import ParameterSpec

logger = logging.getLogger(__name__)


def model_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model config without the ``optuna`` section hyper_opt adds for objectives."""
    return {k: v for k, v in config.items() if k != "optuna"}


class Objective(BaseObjective):
    """Deep metric learning with pytorch-metric-learning, configured entirely in YAML."""

    def __init__(self, config: Mapping[str, Any], metric: str | Sequence[str] = "mean_average_precision_at_r",
                 device: str = "cpu") -> None:
        BaseObjective.__init__(self, config, metric, device)
        study_metric = metric if isinstance(metric, str) else None
        self.settings = validate(model_part(config), study_metric=study_metric)  # before any trial
        from hyper_opt.metric_learning.plan import DataCache

        self._cache = DataCache()

    @classmethod
    def validate_config(cls, model_config: Mapping[str, Any], *, parameters: Sequence[ParameterSpec] = (),
                        base_dir: Path | None = None, metric: str | Sequence[str] | None = None) -> list[str]:
        """Problems of a model config (and of searched parameters pointing into it), for the core
        to report before a study is created; each line names the key path, value and valid names."""
        return problems(model_part(model_config), parameters=parameters, base_dir=base_dir,
                        study_metric=metric if isinstance(metric, str) else None)

    def bind(self, **kwargs: Any) -> None:
        """Also check the searched parameters that point into the model config: a key path that
        does not exist would change nothing, and a searched ``choose`` must offer its choices."""
        BaseObjective.bind(self, **kwargs)
        found = problems(model_part(self.config), parameters=self._parameters,
                         study_metric=self.metric if isinstance(self.metric, str) else None)
        if found:
            from hyper_opt.exceptions import ConfigError

            raise ConfigError(found, source="the metric-learning model config")

    @property
    def base_dir(self) -> Path | None:
        """The model config's folder: relative paths in it (``model_def_fn``, dataset roots)
        are resolved there. Set from ``model_path`` when the core provides it."""
        model_path = getattr(self, "model_path", None)
        return Path(model_path).resolve().parent if model_path else None

    def trial_dir(self, number: int) -> Path | None:
        if self.save_path is None:
            return None
        return Path(self.save_path) / "metric_learning" / f"trial_{number}"

    @property
    def optimised_metric(self) -> str:
        return self.settings.optimised_metric(self.metric if isinstance(self.metric, str) else None)

    def train(self, trial: optuna.Trial, conf: dict[str, Any]) -> dict[str, Any]:
        from hyper_opt.metric_learning.plan import make_plan, quiet_training
        from hyper_opt.metric_learning.training import RunOptions, TrialRun, write_trial_files

        conf = model_part(conf)
        settings = validate(conf, base_dir=self.base_dir, study_metric=self.metric if isinstance(self.metric, str)
                            else None, source=f"the model config of trial {trial.number}")
        metric = settings.optimised_metric(self.metric if isinstance(self.metric, str) else None)
        self._check_direction()
        device = self.device or "cpu"
        threads = settings.torch_threads or (1 if str(device) == "cpu" else None)
        out_dir = self.trial_dir(trial.number)
        with quiet_training(threads=threads, verbose=logger.isEnabledFor(logging.DEBUG)):
            plan = make_plan(conf, settings, trial=trial, device=device, base_dir=self.base_dir, cache=self._cache)
            if out_dir is not None:
                write_trial_files(out_dir, conf, plan.splits)
            options = RunOptions(metric=metric, metrics=settings.recorded_metrics(metric),
                                 max_epochs=settings.max_epochs, patience=settings.patience,
                                 schedule=settings.fold_schedule, seed=settings.seed, device=device,
                                 eval_batch_size=settings.evaluation.batch_size,
                                 normalize_embeddings=settings.evaluation.normalize_embeddings,
                                 num_workers=settings.dataloader_num_workers, knn=settings.evaluation.knn)
            report = self.report if len(self._metrics) == 1 else None  # optuna cannot prune multi-objective
            from hyper_opt.metric_learning.records import TensorBoardRecorder

            recorder = TensorBoardRecorder.create(out_dir, enabled=settings.tensorboard,
                                                  statistics=settings.tensorboard_statistics)
            return TrialRun(plan.builders, options, trial=trial, report=report, out_dir=out_dir,
                            recorder=recorder).run()

    def _check_direction(self) -> None:
        directions = getattr(self.study, "directions", None) or []
        if any(getattr(d, "name", str(d)).lower() == "minimize" for d in directions):
            logger.warning("the study minimises, but every metric-learning accuracy metric is better when "
                           "higher: set optuna:direction: maximize")
