"""Seeds of the workers' samplers: unique across jobs, requeues and launches; few near-duplicates.

Deterministic: fixed seeds, concurrency emulated in one process (benchmarks/sampling.py), no timing.
"""

from __future__ import annotations

import itertools

import pytest

from benchmarks import sampling
from hyper_opt.launch.job import plan_workers, start_workers
from hyper_opt.registry import make_sampler, study_trial_count, worker_sampler, worker_seed
from hyper_opt.schema import ComponentSpec


def _job_worker_indices(monkeypatch: pytest.MonkeyPatch, *, jobs: int, gpus: int, tasks: int) -> list[list[int]]:
    """The --worker-index each job's workers get, as a Slurm/PBS job starts them."""
    started: list[list[str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            started.append(cmd)

    monkeypatch.setattr("hyper_opt.launch.job.subprocess.Popen", FakePopen)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(gpus))}
    per_job = []
    for job_index in range(jobs):
        started.clear()
        plan = plan_workers(env, gpus_per_node=gpus, tasks_per_worker=tasks)
        start_workers(plan, hyper_path="h.yml", model_path=None, overrides=[], job_index=job_index,
                      deadline=None, env=env)
        per_job.append([int(cmd[cmd.index("--worker-index") + 1]) for cmd in started])
    return per_job


def test_workers_of_different_jobs_get_different_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    per_job = _job_worker_indices(monkeypatch, jobs=4, gpus=4, tasks=2)
    assert per_job[0] == list(range(8)) and per_job[1][0] == 8  # job 2's worker 0 is not job 1's
    indices = [i for job in per_job for i in job]
    seeds = [worker_seed(7, i, 0) for i in indices]
    assert len(set(seeds)) == len(seeds) == 32
    # a requeued job (or a second optimize --reload) numbers its workers the same again, but finds
    # more trials in the study: its workers must not repeat their namesakes' seeds
    later = [worker_seed(7, i, start) for i in indices for start in (5, 40, 41)]
    assert len(set(seeds + later)) == len(seeds) + len(later)


def test_seed_scheme() -> None:
    assert worker_seed(42, 0, 0) == 42  # a single worker on a fresh study: plain optuna's draws
    assert worker_seed(42, 3, 0) == 45
    assert worker_seed(42, 3, 17) == worker_seed(42, 3, 17)  # stable (no Python hash salt)
    assert all(0 <= worker_seed(2**32 - 1, i, s) < 2**32 for i, s in itertools.product(range(3), range(3)))
    sampler = make_sampler(ComponentSpec("RandomSampler", {"seed": 42}), worker_index=3, start=17)
    other = make_sampler(ComponentSpec("RandomSampler", {"seed": 42}), worker_index=3, start=0)
    import optuna

    dist = optuna.distributions.FloatDistribution(0, 1)
    study = optuna.create_study()
    trial = study.ask()
    draws = {s.sample_independent(study, study._storage.get_trial(trial._trial_id), "x", dist)
             for s in (sampler, other)}
    assert len(draws) == 2
    assert make_sampler(None) is None  # optuna's default sampler, seeded from the OS


def test_worker_sampler_counts_the_trials_in_the_study() -> None:
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    assert study_trial_count(storage, "missing") == 0
    for _ in range(3):
        study.ask()
    assert study_trial_count(storage, "s") == 3
    spec = ComponentSpec("RandomSampler", {"seed": 5})
    assert worker_sampler(spec, storage, "s", worker_index=1)._rng.rng.randint(1 << 30) == \
        make_sampler(spec, worker_index=1, start=3)._rng.rng.randint(1 << 30)


def test_optuna5_default_tpe_is_multivariate_with_constant_liar() -> None:
    """What hyper_opt relies on when the config names no sampler, or TPESampler without options."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=1)
    assert sampler._constant_liar is True
    assert sampler._is_multivariate(optuna.create_study()) is True


@pytest.mark.parametrize("sampler_type", ["RandomSampler", "TPESampler"])
def test_requeued_workers_draw_no_duplicates(sampler_type: str) -> None:
    """8 workers (2 jobs x 4), every job requeued once its 8 first trials end (inside TPE's 10
    start-up trials): with the old seeds (seed + worker index) the restarted workers repeat their
    first draws."""
    spec = ComponentSpec(sampler_type, {"seed": 3})
    new = sampling.simulate(spec, workers=8, n_trials=32, requeue_at=8)
    assert new["trials"] == 32
    assert new["identical"] == 0 and new["near_duplicates"] == 0
    old = sampling.simulate(spec, workers=8, n_trials=32, requeue_at=8, make=sampling.old_make_sampler)
    assert old["identical"] >= (8 if sampler_type == "RandomSampler" else 2)  # what the old scheme did


def test_near_duplicates_stay_low_with_concurrent_tpe_workers() -> None:
    spec = ComponentSpec("TPESampler", {"seed": 11})
    single = sampling.simulate(spec, workers=1, n_trials=60)
    many = sampling.simulate(spec, workers=8, n_trials=60)
    assert many["identical"] == 0
    assert many["near_duplicates"] <= max(1, single["near_duplicates"])


def test_near_duplicates_counts_pairs() -> None:
    base = {"x": 0.0, "y": 0.0, "lr": 1e-3, "n": 3}
    assert sampling.near_duplicates([base, dict(base), {**base, "x": 1e-4}, {**base, "x": 4.0}]) == 3
