"""The worker's claim: the sampler runs with the budget lock released, a claim on PostgreSQL is
one transaction (a worker killed in it leaves nothing), one connection per worker, exact budget."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from .conftest import Search, write_search

TS = optuna.trial.TrialState


def _config(s: Search):  # type: ignore[no-untyped-def]
    from hyper_opt.config import load_config

    return load_config(s.hyper, s.model)


def _delete(url: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass


class _ProbeSampler(optuna.samplers.RandomSampler):
    """Asks, at every point where a sampler runs, whether another process could take the
    budget lock now (it must: sampling happens with the lock released)."""

    def __init__(self, lock_free: Any) -> None:
        super().__init__(seed=1)
        self.lock_free = lock_free
        self.seen: list[tuple[str, bool]] = []

    def _probe(self, where: str) -> None:
        self.seen.append((where, self.lock_free()))

    def before_trial(self, study: Any, trial: Any) -> None:
        self._probe("before_trial")
        super().before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        self._probe("infer_relative_search_space")
        return {"x": optuna.distributions.FloatDistribution(-5.0, 5.0)}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        self._probe("sample_relative")
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        self._probe("sample_independent")
        return super().sample_independent(study, trial, name, dist)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_sampler_runs_with_the_budget_lock_released(tmp_path: Path, backend: str,
                                                        request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hyper_opt import study as study_mod
    from hyper_opt.budget_lock import BudgetLock
    from hyper_opt.worker import Worker

    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    s = write_search(tmp_path / "s", optuna={"n_trials": 3, **({"storage": url} if url else {})},
                     model={"model": {"x": 0.0}, "steps": 1})
    config, model = _config(s)
    key = BudgetLock(config.optuna)._key
    if url:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

        def lock_free() -> bool:
            with engine.connect() as conn:  # rolled back on close: the lock goes with it
                return bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())
    else:
        path = config.optuna.storage.path
        lock_file = path.with_name(path.name + ".budget.lock")

        def lock_free() -> bool:
            with open(lock_file, "a+b") as fh:  # a second open file: flock conflicts with the worker's
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                return True

    probe = _ProbeSampler(lock_free)
    monkeypatch.setattr(study_mod, "worker_sampler", lambda *a, **k: probe)
    try:
        report = Worker(config, model).run()
        assert report.states == {"COMPLETE": 3}
        where = {w for w, _ in probe.seen}
        assert {"before_trial", "sample_relative"} <= where, probe.seen
        assert all(free for _, free in probe.seen), f"the budget lock was held while sampling: {probe.seen}"
        # and the probe can see a held lock (it is not always true)
        holder = BudgetLock(config.optuna)
        with holder.hold():
            assert not lock_free()
        holder.close()
    finally:
        if url:
            engine.dispose()
            _delete(url, config.optuna.study_name)


def _run_worker(s: Search, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml"], cwd=s.folder,
                          text=True, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.postgres
@pytest.mark.parametrize("point", ["after_ask", "before_heartbeat"])
def test_a_worker_killed_inside_its_claim_transaction_leaves_no_trial_on_postgresql(tmp_path: Path, pg_url: str,
                                                                                    point: str) -> None:
    """The claim without hyper_opt's server-side function (a user who may not create it) is one
    transaction: a trial created but not committed vanishes with the worker, and the lock goes
    with the server session (the next worker is not held up)."""
    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": 1}, model={"model": {"x": 0.0}, "steps": 1})
    name = s.hyper_config()["optuna"]["study_name"]
    old_path = {"HYPER_OPT_NO_SERVER_SIDE": "1"}
    try:
        proc = _run_worker(s, {"HYPER_OPT_FAILPOINTS": f"{point}=kill", **old_path})
        assert proc.returncode == -9, proc.stderr[-2000:]
        study = optuna.load_study(study_name=name, storage=pg_url)
        assert study.trials == [], [(t.number, t.state) for t in study.trials]
        started = time.monotonic()
        proc = _run_worker(s, old_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert time.monotonic() - started < 60
        trials = optuna.load_study(study_name=name, storage=pg_url).trials
        assert [(t.number, t.state) for t in trials] == [(0, TS.COMPLETE)], "numbered from 0, nothing to fail"
    finally:
        _delete(pg_url, name)


@pytest.mark.postgres
def test_a_worker_killed_around_its_one_statement_claim_leaves_nothing_or_a_trial_that_is_retried(
        tmp_path: Path, pg_url: str) -> None:
    """With the claim as one server-side statement no client code runs while the lock is held:
    killed before it, the worker leaves nothing; killed right after it, a RUNNING trial with its
    heartbeat and run context, which the next worker fails and re-queues once it is stale."""
    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": 1, "heartbeat_interval": 1,
                                             "grace_period": 2}, model={"model": {"x": 0.0}, "steps": 1})
    name = s.hyper_config()["optuna"]["study_name"]
    try:
        proc = _run_worker(s, {"HYPER_OPT_FAILPOINTS": "holding_budget_lock=kill"})
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert optuna.load_study(study_name=name, storage=pg_url).trials == []
        proc = _run_worker(s, {"HYPER_OPT_FAILPOINTS": "after_ask=kill"})
        assert proc.returncode == -9, proc.stderr[-2000:]
        [orphan] = optuna.load_study(study_name=name, storage=pg_url).trials
        assert orphan.state == TS.RUNNING and "worker_pid" in orphan.user_attrs, orphan
        engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            beats = conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = :t"),
                                 {"t": orphan._trial_id}).scalar()
        engine.dispose()
        assert beats == 1, "the claim records the first heartbeat in the same statement"
        proc = _run_worker(s)
        assert proc.returncode == 0, proc.stderr[-2000:]
        trials = optuna.load_study(study_name=name, storage=pg_url).trials
        assert [(t.number, t.state) for t in trials] == [(0, TS.FAIL), (1, TS.COMPLETE)]
        assert trials[1].user_attrs["retry_of"] == 0 and trials[1].system_attrs["failed_trial"] == 0
    finally:
        _delete(pg_url, name)


@pytest.mark.postgres
def test_a_first_heartbeat_after_a_long_wait_for_the_lock_is_fresh(tmp_path: Path, pg_url: str) -> None:
    """The claim's transaction begins before the wait for the lock; the heartbeat must carry the
    time the trial started, or a worker that waited longer than grace_period starts a stale trial."""
    from hyper_opt.budget_lock import BudgetLock
    from hyper_opt.study import open_study
    from hyper_opt.worker import Claimed, Worker

    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": 2})
    config, model = _config(s)
    opened = open_study(config, create=True, worker=True)
    other = BudgetLock(config.optuna)
    clock = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    marks: dict[str, Any] = {}

    def server_now() -> Any:
        with clock.connect() as conn:  # a transaction of its own: LOCALTIMESTAMP is the time now
            return conn.execute(sqlalchemy.text("SELECT LOCALTIMESTAMP")).scalar()

    def release() -> None:
        marks["released"] = server_now()  # the server's clock just before the lock goes
        other.release()

    try:
        other.acquire()
        releaser = threading.Timer(2.0, release)
        releaser.start()
        claim = Worker(config, model)._claim(opened)
        releaser.join()
        assert isinstance(claim, Claimed)
        with opened.storage.engine.connect() as conn:
            beat, now = conn.execute(sqlalchemy.text(
                "SELECT heartbeat, LOCALTIMESTAMP FROM trial_heartbeats WHERE trial_id = :t"),
                {"t": claim.trial_id}).one()
        # Compared with the server's own clock read around the wait, not with an age bound: on a
        # loaded machine the claim's return and this query can take more than a second after the
        # beat. A heartbeat at the transaction's start would lie before `released`.
        assert marks["released"] <= beat <= now, f"heartbeat {beat}, lock released at {marks['released']}"
        attrs = claim.trial.user_attrs
        assert attrs["worker_pid"] == str(os.getpid()) and "hostname" in attrs
    finally:
        other.close()
        opened.lock.close()
        clock.dispose()
        _delete(pg_url, config.optuna.study_name)


@pytest.mark.postgres
def test_workers_use_at_most_connections_per_worker_and_keep_the_exact_budget(tmp_path: Path, pg_url: str) -> None:
    from hyper_opt.storage import CONNECTIONS_PER_WORKER, WORKER_APPLICATION_NAME, application_name

    workers, n_trials = 3, 12
    # A seeded sampler: its seed depends on the trials already there, counted while the worker
    # opens the study inside the claim's transaction, on the worker's one connection.
    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": n_trials, "heartbeat_interval": 1,
                                             "sampler": {"type": "RandomSampler", "seed": 7}},
                     model={"model": {"x": 0.0}, "steps": 2, "sleep": 0.15,
                            "meet": {"dir": str(tmp_path / "met"), "workers": workers}})  # all 3 take part
    name = s.hyper_config()["optuna"]["study_name"]
    app = application_name(WORKER_APPLICATION_NAME, name)
    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    peak, stop = [0], threading.Event()

    def watch() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                n = conn.execute(sqlalchemy.text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :a"), {"a": app}).scalar()
                conn.rollback()  # pg_stat_activity is a snapshot per transaction
                peak[0] = max(peak[0], int(n or 0))
                time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml",
                                   "--worker-index", str(i)], cwd=s.folder, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(workers)]
        for p in procs:
            _, err = p.communicate(timeout=150)
            assert p.returncode == 0, err[-2000:]
        stop.set()
        watcher.join()
        assert 0 < peak[0] <= workers * CONNECTIONS_PER_WORKER, f"{peak[0]} connections for {workers} workers"
        trials = optuna.load_study(study_name=name, storage=pg_url).trials
        assert sorted(t.number for t in trials) == list(range(n_trials)), "exactly n_trials, none extra"
        assert all(t.state == TS.COMPLETE for t in trials)
        assert len({t.user_attrs["worker_pid"] for t in trials}) == workers, "the workers shared the study"
    finally:
        stop.set()
        engine.dispose()
        _delete(pg_url, name)


@pytest.mark.postgres
def test_workers_open_a_set_up_study_without_the_budget_lock_and_take_it_when_there_is_work(
        tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL a worker opens a study its launcher created without waiting for the budget
    lock (held here by another session for the whole test), so that hundreds of workers do not
    start one after another; one with seed trials still to enqueue waits for the lock."""
    from hyper_opt.budget_lock import BudgetLock
    from hyper_opt.study import open_study

    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": 4})
    config, _ = _config(s)
    open_study(config, create=True, check_reload=True).lock.close()  # the launcher's opening
    other = BudgetLock(config.optuna)
    opened: dict[str, Any] = {}

    def open_as_worker(key: str, cfg: Any) -> None:
        opened[key] = open_study(cfg, create=True, worker=True)

    try:
        other.acquire()
        plain = threading.Thread(target=open_as_worker, args=("plain", config), daemon=True)
        plain.start()
        plain.join(timeout=60)
        assert "plain" in opened, "a worker waited for the budget lock to open a study that needs nothing"
        assert opened["plain"].study.study_name == config.optuna.study_name
        s.rewrite_hyper(lambda h: h["optuna"].update(enqueue=[{"x": 1.0}]))
        seeded, _ = _config(s)
        waiting = threading.Thread(target=open_as_worker, args=("seeded", seeded), daemon=True)
        waiting.start()
        waiting.join(timeout=3)
        assert "seeded" not in opened, "enqueueing seed trials is done under the lock"
        other.release()
        waiting.join(timeout=60)
        assert "seeded" in opened
        seeds = opened["seeded"].study.trials
        assert [(t.state, t.system_attrs.get("fixed_params")) for t in seeds] == [
            (optuna.trial.TrialState.WAITING, {"x": 1.0})]
    finally:
        other.close()
        for o in opened.values():
            o.lock.close()
        _delete(pg_url, config.optuna.study_name)
