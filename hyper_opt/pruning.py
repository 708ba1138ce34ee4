"""Pruning helpers: a Keras callback, and a one-call report-and-prune for torch loops."""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

ON_MISSING = ("raise", "warn")


def report_and_prune(trial: Any, value: float, step: int) -> None:
    """``trial.report(value, step)``; raise ``optuna.TrialPruned`` when the pruner says so."""
    import optuna

    trial.report(float(value), step)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with value {float(value):.6g}")


@functools.lru_cache(maxsize=1)
def _keras_callback_class() -> type:
    try:
        import keras
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("KerasPruningCallback needs keras: pip install 'hyper_opt[keras]'") from err

    class _KerasPruningCallback(keras.callbacks.Callback):
        """Reports ``logs[monitor]`` after every epoch and prunes the trial when told to."""

        def __init__(self, trial: Any, monitor: str, *, interval: int = 1, on_missing: str = "raise") -> None:
            super().__init__()
            self.trial = trial
            self.monitor = monitor
            self.interval = interval
            self.on_missing = on_missing
            self._warned = False

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if (epoch + 1) % self.interval:
                return
            logs = logs or {}
            if self.monitor not in logs:
                if self.on_missing == "warn":
                    if not self._warned:
                        self._warned = True
                        logger.warning("KerasPruningCallback: metric %r is not in the epoch logs %s; "
                                       "this trial is not reported for pruning", self.monitor, sorted(logs))
                    return
                raise KeyError(f"KerasPruningCallback: metric {self.monitor!r} is not in the epoch logs "
                               f"{sorted(logs)}; pass monitor= one of them")
            report_and_prune(self.trial, float(logs[self.monitor]), epoch)

    return _KerasPruningCallback


def KerasPruningCallback(trial: Any, monitor: str, *, interval: int = 1,  # noqa: N802 - a class to users
                         on_missing: str = "raise") -> Any:
    """A ``keras.callbacks.Callback`` that reports ``monitor`` every ``interval`` epochs and prunes.

    ``on_missing``: what a ``monitor`` absent from the epoch logs does: ``"raise"`` (a KeyError
    naming the metrics there) or ``"warn"`` (one warning, the epoch is not reported; what the
    predecessors' callbacks did). Keras is imported only when this is called.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"KerasPruningCallback: on_missing must be one of {ON_MISSING}, got {on_missing=}")
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"KerasPruningCallback: interval must be an integer >= 1, got {interval=}")
    return _keras_callback_class()(trial, monitor, interval=interval, on_missing=on_missing)
