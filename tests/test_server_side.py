"""hyper_opt's objects on a PostgreSQL server (hyper_opt.server_side): one stale-trial scan per
study per interval whatever the number of workers, a dead worker's trial still failed and
re-queued in time, a heartbeat in one statement, and the waits of workers at a full budget."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from .conftest import write_search

TS = optuna.trial.TrialState


def _delete(url: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass


@pytest.mark.postgres
def test_many_callers_take_one_scan_turn_per_interval(pg_url: str) -> None:
    """8 workers asking for the scan turn every 20 ms for 2.2 s, interval 1 s: 3 turns at most
    (at 0, 1 and 2 s), not one per ask."""
    from hyper_opt import server_side

    name = f"turns-{os.getpid()}-{time.monotonic_ns()}"
    storage = optuna.storages.RDBStorage(pg_url)
    study_id = optuna.create_study(study_name=name, storage=storage)._study_id
    asks, turns = [0], [0]
    lock = threading.Lock()

    def ask_for_turns() -> None:
        own = optuna.storages.RDBStorage(pg_url)
        end = time.monotonic() + 2.2
        while time.monotonic() < end:
            got = server_side.stale_trials(own, study_id=study_id, interval_s=1.0, grace_s=5.0)
            with lock:
                asks[0] += 1
                turns[0] += got is not None
            time.sleep(0.02)
        own.engine.dispose()

    try:
        threads = [threading.Thread(target=ask_for_turns) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert asks[0] > 100, asks
        assert 2 <= turns[0] <= 3, f"{turns[0]} scan turns for {asks[0]} asks in 2.2 s at 1 s intervals"
        assert server_side.scans(storage.engine, study_id) == turns[0]
    finally:
        storage.engine.dispose()
        _delete(pg_url, name)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_dead_workers_trial_is_requeued_in_time_and_scans_do_not_grow_with_workers(
        tmp_path: Path, pg_url: str) -> None:
    """4 workers, one killed at the start of a trial (after its claim recorded the heartbeat):
    its trial is failed within grace_period + heartbeat_interval of its last beat and its copy
    runs; no other trial fails; and the workers took at most one scan turn per half interval
    between them (with one scan per worker per interval they would take about 4 times as many)."""
    from hyper_opt import server_side

    hb, grace, workers, n_trials = 1, 3, 4, 12
    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": n_trials, "heartbeat_interval": hb,
                                             "grace_period": grace},
                     model={"model": {"x": 0.0}, "steps": 3, "sleep": 0.4})
    name = s.hyper_config()["optuna"]["study_name"]
    fired = tmp_path / "fired"
    fired.mkdir()
    env = {**os.environ, "HYPER_OPT_FAILPOINTS": "in_train=kill", "HYPER_OPT_FAILPOINTS_DIR": str(fired)}
    try:
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml",
                                   "--worker-index", str(i)], cwd=s.folder, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(workers)]
        codes = []
        for p in procs:
            _, err = p.communicate(timeout=180)
            codes.append(p.returncode)
        took = time.monotonic() - started
        assert sorted(codes) == [-9, 0, 0, 0], codes
        storage = optuna.storages.RDBStorage(pg_url)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.trials
        assert sum(t.state == TS.COMPLETE for t in trials) == n_trials and not [t for t in trials if t.state == TS.RUNNING]
        failed = [t for t in trials if t.state == TS.FAIL]
        assert len(failed) == 1, [(t.number, t.state, t.user_attrs.get("error")) for t in failed]
        copies = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
        assert copies and copies[0].state == TS.COMPLETE
        with storage.engine.connect() as conn:
            late = conn.execute(sqlalchemy.text(
                "SELECT EXTRACT(EPOCH FROM (t.datetime_complete AT TIME ZONE 'UTC') "
                "- (h.heartbeat AT TIME ZONE current_setting('TimeZone'))) FROM trials t "
                "JOIN trial_heartbeats h ON h.trial_id = t.trial_id WHERE t.trial_id = :t"),
                {"t": failed[0]._trial_id}).scalar()
        assert grace <= float(late) <= grace + hb + 2.0, f"failed {late} s after its last heartbeat"
        scans = server_side.scans(storage.engine, study._study_id)
        assert 1 <= scans <= took / (hb / 2) + 2, f"{scans} scan turns in {took:.1f} s"
        storage.engine.dispose()
    finally:
        _delete(pg_url, name)


@pytest.mark.postgres
def test_a_heartbeat_is_one_statement_and_fresh(pg_url: str) -> None:
    from hyper_opt import server_side

    name = f"beat-{os.getpid()}-{time.monotonic_ns()}"
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(pg_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name=name, storage=storage)
    trial_id = study.ask()._trial_id
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    try:
        server_side.record_heartbeat(storage, trial_id)
        time.sleep(1.2)
        server_side.record_heartbeat(storage, trial_id)
        assert len(statements) == 2, statements
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", count)
        with storage.engine.connect() as conn:
            age = conn.execute(sqlalchemy.text(
                "SELECT EXTRACT(EPOCH FROM (LOCALTIMESTAMP - heartbeat)) FROM trial_heartbeats WHERE trial_id = :t"),
                {"t": trial_id}).scalar()
        assert float(age) < 1.0, f"the second beat did not update the heartbeat ({age} s old)"
        optuna.storages.fail_stale_trials(study)  # optuna's own check reads the beat as its own
        assert study.trials[0].state == TS.RUNNING
    finally:
        storage.engine.dispose()
        _delete(pg_url, name)


def test_waiting_workers_back_off_up_to_half_the_heartbeat_interval(tmp_path: Path) -> None:
    from hyper_opt import worker as worker_mod
    from hyper_opt.config import load_config

    s = write_search(tmp_path / "s", optuna={"heartbeat_interval": 60, "grace_period": 120})
    config, model = load_config(s.hyper, s.model)
    w = worker_mod.Worker(config, model)
    delays = [[w._wait_delay(n) for _ in range(50)] for n in range(12)]
    cap = min(60 / 2, worker_mod.WAIT_MAX_S)
    assert all(worker_mod.WAIT_POLL_S / 2 <= d <= worker_mod.WAIT_POLL_S for d in delays[0])
    assert max(delays[-1]) <= cap and min(delays[-1]) >= cap / 2, "capped, with jitter"
    assert max(delays[-1]) > 3 * worker_mod.WAIT_POLL_S, "the wait grows"
    assert len({round(d, 6) for d in delays[-1]}) > 40, "jittered: waiting workers do not poll in step"
