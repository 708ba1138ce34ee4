"""TensorBoard records of a trial, per fold, in the layout powerful-benchmarker users know.

With ``tensorboard: true`` in the model YAML (or ``{statistics: true}`` to also collect
pytorch-metric-learning's own statistics) each fold writes event files under
``<save_path>/metric_learning/trial_<N>/tensorboard/fold_<k>/``:

* every iteration: ``train/total_loss`` and each loss term (``train/metric_loss``, ...); with
  statistics, every number the losses, miners, distances and reducers record (pytorch-metric-
  learning's ``_record_these`` and ``_record_these_stats``: the pairs and triplets a miner found,
  the pairs past a reducer's threshold, the mean positive and negative distances, ...) as
  ``<role>/<attribute>`` (``tuple_miner/num_triplets``, ``metric_loss/reducer/num_past_filter``);
* every epoch: ``val/<metric>`` for each recorded metric, ``train/epoch_loss`` and
  ``lr/<optimizer>``;

and the trial's parameters with its final metrics go to TensorBoard's hparams view from
``trial_<N>/tensorboard/``. ``tensorboard --logdir <save_path>/metric_learning`` shows them all.
Needs the ``tensorboard`` package (``pip install 'hyper_opt[tensorboard]'``); without it the
setting is ignored with a warning and the trial runs as usual.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD_LISTS = ("_record_these", "_record_these_stats")


@functools.lru_cache(maxsize=1)
def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


@contextlib.contextmanager
def collecting_statistics(enabled: bool) -> Iterator[None]:
    """Losses, miners, distances and reducers built inside collect their statistics
    (pytorch-metric-learning reads its ``COLLECT_STATS`` flag when they are constructed)."""
    if not enabled:
        yield
        return
    from pytorch_metric_learning.utils import common_functions as c_f

    old = c_f.COLLECT_STATS
    c_f.COLLECT_STATS = True
    try:
        yield
    finally:
        c_f.COLLECT_STATS = old


def recorded_numbers(module: Any, prefix: str) -> dict[str, float]:
    """Every number a pytorch-metric-learning module (and its sub-modules) records."""
    out: dict[str, float] = {}
    modules = module.named_modules() if hasattr(module, "named_modules") else [("", module)]
    for name, sub in modules:
        for list_name in RECORD_LISTS:
            for attr in getattr(sub, list_name, []) or []:
                value = getattr(sub, attr, None)
                if hasattr(value, "numel") and value.numel() == 1:
                    value = value.item()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out["/".join(p for p in (prefix, name.replace(".", "/"), attr) if p)] = float(value)
    return out


class TensorBoardRecorder:
    """Writes one trial's event files (see the module docstring)."""

    def __init__(self, trial_dir: Path, *, statistics: bool) -> None:
        self.trial_dir = trial_dir
        self.statistics = statistics
        self._writers: dict[int, Any] = {}

    @classmethod
    def create(cls, trial_dir: Path | None, *, enabled: bool, statistics: bool) -> TensorBoardRecorder | None:
        if not enabled or trial_dir is None:
            return None
        if not tensorboard_available():
            logger.warning("tensorboard: true, but the tensorboard package is not installed "
                           "(pip install 'hyper_opt[tensorboard]'); no event files are written")
            return None
        return cls(trial_dir, statistics=statistics)

    def writer(self, fold: int) -> Any:
        if fold not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[fold] = SummaryWriter(log_dir=str(self.trial_dir / "tensorboard" / f"fold_{fold}"))
        return self._writers[fold]

    def iteration(self, fold: int, trainer: Any) -> None:
        step = int(trainer.get_global_iteration())
        writer = self.writer(fold)
        for name, value in getattr(trainer, "losses", {}).items():
            value = float(value.detach()) if hasattr(value, "detach") else float(value)
            if math.isfinite(value):
                writer.add_scalar(f"train/{name}", value, step)
        if self.statistics:
            for section in ("loss_funcs", "mining_funcs"):
                for role, module in (getattr(trainer, section, None) or {}).items():
                    for tag, value in recorded_numbers(module, role).items():
                        writer.add_scalar(tag, value, step)

    def epoch(self, fold: int, trainer: Any, metrics: Mapping[str, float], train_loss: float) -> None:
        epoch = int(trainer.epoch)
        writer = self.writer(fold)
        for name, value in metrics.items():
            writer.add_scalar(f"val/{name}", value, epoch)
        if math.isfinite(train_loss):
            writer.add_scalar("train/epoch_loss", train_loss, epoch)
        for name, optimizer in (getattr(trainer, "optimizers", None) or {}).items():
            writer.add_scalar(f"lr/{name}", float(optimizer.param_groups[0]["lr"]), epoch)
        writer.flush()

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """The trial's parameters and final metrics, for TensorBoard's hparams view."""
        from torch.utils.tensorboard import SummaryWriter

        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        finals = {f"hparams/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        with SummaryWriter(log_dir=str(self.trial_dir / "tensorboard")) as writer:
            writer.add_hparams(plain, finals, run_name="hparams")

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
