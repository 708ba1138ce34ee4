"""Samplers and pruners by name: optuna's public classes, built from a ``{type: ..., **kwargs}`` spec.

Also the one place for optuna's experimental-API idioms: the retry callback that re-queues a
dead worker's trial, and silencing ``ExperimentalWarning`` around APIs that are stable in practice.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from hyper_opt.schema import ComponentSpec

if TYPE_CHECKING:
    import optuna


def public_classes(module_name: str) -> dict[str, type]:
    """The sampler (``optuna.samplers``) or pruner (``optuna.pruners``) classes users can name."""
    import optuna

    module = getattr(optuna, module_name)
    base = optuna.samplers.BaseSampler if module_name == "samplers" else optuna.pruners.BasePruner
    names = getattr(module, "__all__", dir(module))
    return {n: getattr(module, n) for n in names
            if inspect.isclass(getattr(module, n, None)) and issubclass(getattr(module, n), base)
            and not n.startswith(("Base", "_"))}


def build_component(spec: ComponentSpec, module_name: str) -> Any:
    """Instantiate a sampler/pruner. A keyword value that is itself a ``{type: ...}`` mapping
    naming a pruner (``PatientPruner``'s ``wrapped_pruner``) is built too."""
    classes = public_classes(module_name)
    kwargs: dict[str, Any] = {}
    pruner_classes = public_classes("pruners")
    for key, value in spec.kwargs.items():
        if isinstance(value, Mapping) and value.get("type") in pruner_classes:
            inner = dict(value)
            value = build_component(ComponentSpec(inner.pop("type"), inner), "pruners")
        kwargs[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings only; errors still raise
        return classes[spec.type](**kwargs)



def make_sampler(spec: ComponentSpec | None, *, worker_index: int = 0) -> optuna.samplers.BaseSampler | None:
    """The configured sampler (None: optuna's default). A ``seed`` is offset by the worker index,
    so that workers do not draw the same random start-up trials."""
    if spec is None:
        return None
    if "seed" in spec.kwargs and spec.kwargs["seed"] is not None and worker_index:
        spec = ComponentSpec(spec.type, {**spec.kwargs, "seed": int(spec.kwargs["seed"]) + worker_index})
    return build_component(spec, "samplers")


def make_pruner(spec: ComponentSpec | None) -> optuna.pruners.BasePruner:
    """The configured pruner, or NopPruner: a study never prunes unless a pruner is named."""
    import optuna

    if spec is None:
        return optuna.pruners.NopPruner()
    return build_component(spec, "pruners")



@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence optuna's ExperimentalWarning (heartbeats, retry callbacks: stable since optuna 2.9)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def retry_callback(max_retry: int) -> Any:
    """optuna's callback that re-queues a failed trial's copy, within ``max_retry``; None for 0."""
    import optuna

    with quiet_experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if max_retry > 0 else None


def requeue_callback(storage: Any, max_retry: int) -> Any:
    """What re-queues a failed trial's copy: the storage's own stale-trial callback, else (no
    heartbeat: the journal storage, ``heartbeat_interval: null``) :func:`retry_callback`."""
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    return callback if callback is not None else retry_callback(max_retry)
