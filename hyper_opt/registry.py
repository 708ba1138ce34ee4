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



SEED_MAX = 2**32  # numpy's seeds (every optuna sampler seeds a numpy RandomState) are below 2**32


def worker_seed(seed: int, worker_index: int, start: int = 0) -> int:
    """The seed of one worker's sampler, from the configured ``seed``.

    ``worker_index`` is unique among the workers of one launch (a job's workers are numbered
    ``job_index x workers_per_job + i``, see :func:`hyper_opt.launch.job.start_workers`), but not
    across launches: a requeued job, a second ``optimize --reload`` or a ``--local`` run on a
    study that Slurm jobs started numbers its workers from 0 again. Seeded alike, such a worker
    would draw exactly the trials its earlier namesake drew (RandomSampler, QMC, TPE's start-up
    trials). ``start``, the number of trials in the study when the worker opened it, tells the
    launches apart: a later launch of the same slot always finds more trials than its namesake
    left. On a fresh study this is ``seed + worker_index`` (worker 0 of a single worker keeps
    ``seed``: the very trials plain optuna draws with that seed); otherwise a stable hash of
    the three, so that two launches never meet.
    """
    if start == 0:
        return (int(seed) + worker_index) % SEED_MAX
    import hashlib

    digest = hashlib.sha256(f"hyper_opt:{int(seed)}:{worker_index}:{start}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % SEED_MAX


def make_sampler(spec: ComponentSpec | None, *, worker_index: int = 0,
                 start: int = 0) -> optuna.samplers.BaseSampler | None:
    """The configured sampler (None: optuna's default, TPESampler(): multivariate with constant
    liar in optuna 5, seeded from the OS). A ``seed`` becomes :func:`worker_seed`, so that no two
    workers, in this launch or an earlier one, draw the same random trials."""
    if spec is None:
        return None
    if spec.kwargs.get("seed") is not None and (worker_index or start):
        spec = ComponentSpec(spec.type, {**spec.kwargs, "seed": worker_seed(spec.kwargs["seed"], worker_index, start)})
    return build_component(spec, "samplers")


def study_trial_count(storage: Any, study_name: str, *, conn: Any = None) -> int:
    """Trials (of any state) in a study: one ``COUNT`` on an RDB storage (optuna's
    ``get_n_trials`` reads every trial there), optuna's ``get_n_trials`` elsewhere; 0 for a study
    that is not there. ``conn``: a connection to run it on (the claim's, inside its transaction)."""
    import optuna

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy

        try:
            query = sqlalchemy.text("SELECT COUNT(*) FROM trials WHERE study_id = :sid")
            if conn is not None:  # optuna's schema, checked when the storage opened
                return int(conn.execute(query, {"sid": study_id}).scalar() or 0)
            with storage.engine.connect() as own:
                return int(own.execute(query, {"sid": study_id}).scalar() or 0)
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError):
            pass  # another schema: optuna's own count below (a lost connection raises there too)
    return storage.get_n_trials(study_id)


def worker_sampler(spec: ComponentSpec | None, storage: Any, study_name: str, *,
                   worker_index: int = 0, conn: Any = None) -> optuna.samplers.BaseSampler | None:
    """:func:`make_sampler` for a worker opening the study in ``storage``: a seeded sampler's
    seed also depends on the trials already there (see :func:`worker_seed`)."""
    start = 0
    if spec is not None and spec.kwargs.get("seed") is not None:
        start = study_trial_count(storage, study_name, conn=conn)
    return make_sampler(spec, worker_index=worker_index, start=start)


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
        # The copy keeps the curve (the pruner judges a resumed trial on all of it; a step it
        # reports again is ignored by optuna's Trial.report).
        return (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
                if max_retry > 0 else None)


def requeue_callback(storage: Any, max_retry: int) -> Any:
    """What re-queues a failed trial's copy: the storage's own stale-trial callback, else (no
    heartbeat: the journal storage, ``heartbeat_interval: null``) :func:`retry_callback`."""
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    return callback if callback is not None else retry_callback(max_retry)
