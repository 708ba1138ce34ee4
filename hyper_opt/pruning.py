"""Pruning helpers: a Keras callback, and a one-call report-and-prune for torch loops."""

from __future__ import annotations

import functools
from typing import Any


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

        def __init__(self, trial: Any, monitor: str, *, interval: int = 1) -> None:
            super().__init__()
            self.trial = trial
            self.monitor = monitor
            self.interval = interval

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if (epoch + 1) % self.interval:
                return
            logs = logs or {}
            if self.monitor not in logs:
                raise KeyError(f"KerasPruningCallback: metric {self.monitor!r} is not in the epoch logs "
                               f"{sorted(logs)}; pass monitor= one of them")
            report_and_prune(self.trial, float(logs[self.monitor]), epoch)

    return _KerasPruningCallback


def KerasPruningCallback(trial: Any, monitor: str, *, interval: int = 1) -> Any:  # noqa: N802 - a class to users
    """A ``keras.callbacks.Callback`` that reports ``monitor`` each epoch and prunes the trial.

    Keras is imported only when this is called, so hyper_opt does not need it otherwise.
    """
    return _keras_callback_class()(trial, monitor, interval=interval)
