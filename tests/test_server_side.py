"""hyper_opt's objects on a PostgreSQL server (hyper_opt.server_side): one stale-trial scan per
study per interval whatever the number of workers, a dead worker's trial still failed and
re-queued in time, a heartbeat in one statement, and the waits of workers at a full budget."""

from __future__ import annotations

import functools
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

from .conftest import write_search

TS = optuna.trial.TrialState


def _delete(url: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass


def _claims(storage: Any, study: optuna.Study, *, n_trials: int, **fixed: Any) -> Any:
    """hyper_opt's one-statement claim on ``study``, its lock key and the tests' usual settings
    bound (no heartbeat, no run context unless ``fixed`` says otherwise)."""
    from hyper_opt import server_side

    settings = {"can_wait": True, "lock_timeout_s": 30, "heartbeat": False, "attrs": {}, **fixed}
    return functools.partial(server_side.claim, storage, study_id=study._study_id,
                             lock_key=hash(study.study_name) % 2**62, n_trials=n_trials, **settings)


@pytest.mark.postgres
def test_many_callers_take_one_scan_turn_per_interval(pg_url: str) -> None:
    """8 workers asking for the scan turn every 20 ms for 2.2 s (and at least 20 times each),
    interval 1 s: a turn at most once per interval (at 0, 1 and 2 s), not one per ask.

    Each turn's server time lies between its call's start and return, so two turns an interval
    apart on the server show as the later call returning at least an interval after the earlier
    one started; no slack is needed for load. All threads ask within one shared window (opening a
    storage can take a second under load, so each thread's own clock would widen it)."""
    from hyper_opt import server_side

    name = f"turns-{os.getpid()}-{time.monotonic_ns()}"
    storage = optuna.storages.RDBStorage(pg_url)
    study_id = optuna.create_study(study_name=name, storage=storage)._study_id
    asks, turns, span = [0], [], [float("inf"), 0.0]
    lock = threading.Lock()
    ready = threading.Barrier(8)
    window = {}

    def ask_for_turns() -> None:
        own = optuna.storages.RDBStorage(pg_url)
        if ready.wait() == 0:
            window["end"] = time.monotonic() + 2.2
        ready.wait()
        mine = 0
        # at least 20 asks each: under load a call can take longer than the window (a run that
        # asked 4 times in all proved nothing); the checks below use the span the asks took
        while time.monotonic() < window["end"] or mine < 20:
            mine += 1
            started = time.monotonic()
            got = server_side.stale_trials(own, study_id=study_id, interval_s=1.0, grace_s=5.0)
            returned = time.monotonic()
            with lock:
                asks[0] += 1
                span[0], span[1] = min(span[0], started), max(span[1], returned)
                if got is not None:
                    turns.append((started, returned))
            time.sleep(0.02)
        own.engine.dispose()

    try:
        threads = [threading.Thread(target=ask_for_turns) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert asks[0] >= 160, asks
        turns.sort()
        for (a_start, _), (_, b_returned) in zip(turns, turns[1:]):
            assert b_returned - a_start >= 1.0, f"two scan turns less than an interval apart: {turns}"
        most = int((span[1] - span[0]) // 1.0) + 1
        assert 2 <= len(turns) <= most, f"{len(turns)} scan turns for {asks[0]} asks over {span[1] - span[0]:.2f} s"
        assert server_side.scans(storage.engine, study_id) == len(turns)
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
    # grace 60 s: optuna's stale check below must not depend on how soon it follows the beat on a
    # loaded machine; a beat read in the wrong time zone is still hours off
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(pg_url, heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(study_name=name, storage=storage)
    trial_id = study.ask()._trial_id
    statements: list[str] = []
    reader = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)  # not counted

    def read(sql: str) -> Any:
        with reader.connect() as conn:
            return conn.execute(sqlalchemy.text(sql), {"t": trial_id}).scalar()

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    try:
        server_side.record_heartbeat(storage, trial_id)
        first = read("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t")
        time.sleep(0.2)
        before = read("SELECT LOCALTIMESTAMP")  # the server's clock before the second beat
        server_side.record_heartbeat(storage, trial_id)
        assert len(statements) == 2, statements
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", count)
        second = read("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t")
        after = read("SELECT LOCALTIMESTAMP")
        # Against the server's clock read around the beat, not an age bound that a loaded machine
        # can stretch: the second beat updated the row, at the time it ran.
        assert first < before <= second <= after, f"the second beat did not update the heartbeat: " \
            f"first {first}, second {second}, server clock {before} .. {after}"
        optuna.storages.fail_stale_trials(study)  # optuna's own check reads the beat as its own
        assert study.trials[0].state == TS.RUNNING
    finally:
        storage.engine.dispose()
        reader.dispose()
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


def _seed(study: optuna.Study) -> None:
    """3 finished trials, then an enqueued trial and a re-queued copy of trial 2, both WAITING."""
    dist = {"x": optuna.distributions.FloatDistribution(-5.0, 5.0)}
    for value in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions=dist, value=value))
    study.add_trial(optuna.trial.create_trial(params={"x": 3.0}, distributions=dist, state=TS.FAIL))
    study.enqueue_trial({"x": 0.5}, user_attrs={"seeded": True})
    study.add_trial(optuna.trial.create_trial(
        params={"x": 3.0}, distributions=dist, state=TS.WAITING, user_attrs={"hostname": "old", "error": "x"},
        system_attrs={"failed_trial": 2, "retry_history": [2]}))


@pytest.mark.postgres
def test_a_trial_started_on_the_server_is_the_trial_optuna_would_have_started(pg_url: str) -> None:
    """The same study twice: trials started by hyper_opt's one-statement claim and by optuna's own
    ``ask`` (pop the first WAITING trial, else ``create_new_trial``) with the run context set
    through optuna's API, read back with optuna's ``get_trial``: the same numbers, states,
    parameters, attributes; start times a moment apart."""

    names = [f"same-{tag}-{os.getpid()}-{time.monotonic_ns()}" for tag in ("server", "optuna")]
    storage = optuna.storages.RDBStorage(pg_url)
    context = {"hostname": "node1", "worker_pid": "123"}
    try:
        ours, theirs = (optuna.create_study(study_name=n, storage=storage) for n in names)
        _seed(ours)
        _seed(theirs)
        pairs = []
        for _ in range(3):  # pop the enqueued trial, pop the copy, create a new one
            got = _claims(storage, ours, n_trials=100, heartbeat=True, attrs=context)()
            trial = theirs.ask()
            origin = storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
            attrs = {**context, **({"retry_of": origin} if origin is not None else {})}
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            assert got.started_trial and got.number == trial.number
            pairs.append((storage.get_trial(got.trial_id), storage.get_trial(trial._trial_id), got))
        assert [g.outcome for _, _, g in pairs] == ["popped", "popped", "created"]
        assert [g.origin for _, _, g in pairs] == [None, 2, None]
        for mine, optunas, _ in pairs:
            for field in ("number", "state", "params", "distributions", "user_attrs", "system_attrs", "values",
                          "intermediate_values", "datetime_complete"):
                assert getattr(mine, field) == getattr(optunas, field), (field, mine, optunas)
            assert mine.datetime_start is not None
            assert abs((mine.datetime_start - optunas.datetime_start).total_seconds()) < 5
        assert pairs[1][0].user_attrs["hostname"] == "node1", "the run context replaces the copied one"
    finally:
        storage.engine.dispose()
        for n in names:
            _delete(pg_url, n)


@pytest.mark.postgres
@pytest.mark.parametrize("n_trials", [25, 70])
@pytest.mark.parametrize("recheck_s", [0.0, 3600.0], ids=["exact", "lazy"])
def test_the_claims_count_of_the_study_stays_exact_as_trials_finish_out_of_order(
        pg_url: str, n_trials: int, recheck_s: float) -> None:
    """The claim reads only the trials created since the last claim (and the one its caller has
    just told), and the unfinished ones again only near the budget or when they have doubled;
    trials finishing in any order, failing, WAITING trials enqueued by optuna, and trials started
    by optuna's own ``ask`` (which pops WAITING ones too) must leave its decisions and trial
    numbers those of a full count ("exact": a re-read at every claim near the budget). "lazy": near
    the budget the unfinished trials are read again only once per recheck_s (here never, but for
    known WAITING trials and doubling): a claim may then answer "wait" where the full count would
    start a trial or end the budget, but never start one too many or end the budget early, and
    one exact claim at the end agrees with the full count."""
    import random


    name = f"prefix-{os.getpid()}-{time.monotonic_ns()}"
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.create_study(study_name=name, storage=storage)
    rng = random.Random(n_trials)
    decisions = []
    told = None
    claim = _claims(storage, study, n_trials=n_trials)
    try:
        for step in range(220):
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            running = [t for t in trials if t.state == TS.RUNNING]
            action = rng.random()
            if action < 0.45 and running:
                state = rng.choice([TS.COMPLETE, TS.COMPLETE, TS.PRUNED, TS.FAIL])
                told = rng.choice(running)._trial_id  # as a worker tells its trial, then claims
                storage.set_trial_state_values(told, state, [1.0] if state == TS.COMPLETE else None)
                continue
            if action < 0.52:
                study.enqueue_trial({"x": step})
                continue
            if action < 0.56:
                study.ask()  # another kind of worker on the same study
                continue
            finished = sum(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials)
            expected = ("budget" if finished >= n_trials else "wait" if finished + len(running) >= n_trials
                        else "started")
            got = claim(done=told, recheck_s=recheck_s)
            told = None
            decisions.append(got.outcome)
            outcome = "started" if got.started_trial else "budget" if got.outcome == "budget-first" else got.outcome
            if recheck_s == 0 or outcome != "wait":
                assert outcome == expected, (step, got, finished, len(running))
            if got.started_trial:
                waiting = [t for t in trials if t.state == TS.WAITING]
                assert got.number == (waiting[0].number if waiting else len(trials)), (step, got)
        assert decisions.count("budget-first") <= 1, "one caller (the first) is told it completed the budget"
        if recheck_s == 0:
            assert {"budget", "wait", "created", "popped"} <= set(decisions), decisions
            assert decisions.count("budget-first") == 1
        else:
            assert {"created", "popped"} <= set(decisions), decisions
            trials = storage.get_all_trials(study._study_id, deepcopy=False)  # one exact claim agrees
            finished = sum(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials)
            running = sum(t.state == TS.RUNNING for t in trials)
            last = claim(recheck_s=0.0)
            assert (last.started_trial, last.outcome in ("budget", "budget-first")) == (
                finished + running < n_trials, finished >= n_trials), (last, finished, running)
    finally:
        storage.engine.dispose()
        _delete(pg_url, name)


@pytest.mark.postgres
def test_near_the_budget_the_told_trial_is_counted_and_the_others_are_read_again_once_per_interval(
        pg_url: str) -> None:
    """Near the budget's end a claim does not read every unfinished trial again (O(workers) each,
    for every claim of every worker): only once per recheck_s for the study. Meanwhile it answers
    "wait" from the upper bound, and counts the trial its caller has just told (``done``), so that
    a worker sees its own trial end the budget, or free a slot, at its next claim."""
    from hyper_opt import server_side

    name = f"recheck-{os.getpid()}-{time.monotonic_ns()}"
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.create_study(study_name=name, storage=storage)
    claim = _claims(storage, study, n_trials=2, recheck_s=3600.0)
    try:
        t0, t1 = claim().trial_id, claim().trial_id
        assert claim().outcome == "wait", "both running (and now both read as unfinished)"
        storage.set_trial_state_values(t0, TS.COMPLETE, [1.0])
        storage.set_trial_state_values(t1, TS.FAIL)
        assert claim().outcome == "wait", "not read again within the interval: the bound says wait"
        assert claim(done=t0).outcome == "wait", "t0 counted: 1 of 2 finished, t1 still counted as running"
        got = claim(done=t1)  # t1 failed: its slot is free
        assert got.outcome == "created" and got.number == 2, got
        assert claim().outcome == "wait"
        storage.set_trial_state_values(got.trial_id, TS.COMPLETE, [1.0])
        assert claim().outcome == "wait"
        assert claim(done=got.trial_id).outcome == "budget-first"
        assert claim().outcome == "budget", "the count reached the budget: nothing to read again"
        with storage.engine.connect() as conn:
            row = conn.execute(sqlalchemy.text(
                f"SELECT finished_total, finished_budget, pending FROM {server_side.TABLE} WHERE study_id = :s"),
                {"s": study._study_id}).one()
        assert tuple(row) == (3, 2, []), row
        name2 = f"{name}-exact"
        study2 = optuna.create_study(study_name=name2, storage=storage)
        exact = _claims(storage, study2, n_trials=2, recheck_s=0.0)
        u0, u1 = exact().trial_id, exact().trial_id
        assert exact().outcome == "wait"
        storage.set_trial_state_values(u0, TS.COMPLETE, [1.0])
        storage.set_trial_state_values(u1, TS.FAIL)
        assert exact().outcome == "created", "with recheck_s 0 every claim near the budget counts exactly"
    finally:
        storage.engine.dispose()
        _delete(pg_url, name)
        _delete(pg_url, f"{name}-exact")


@pytest.mark.postgres
@pytest.mark.slow
def test_a_database_user_who_may_not_create_functions_runs_on_the_transaction_claim(
        tmp_path: Path, private_pg: Any) -> None:
    """A user with rights on optuna's tables but no CREATE on the schema (PostgreSQL 15's default
    for anyone but the database's owner): hyper_opt says that it cannot create its claim
    function and claims in several round trips; the budget stays exact."""
    from benchmarks.fleet import _as_server_user

    from hyper_opt import server_side

    owner = sqlalchemy.create_engine(private_pg.url)
    try:
        optuna.storages.RDBStorage(private_pg.url).engine.dispose()  # optuna's tables, by the owner
        sock, port = private_pg.data_dir.parent, sqlalchemy.make_url(private_pg.url).port
        subprocess.run(_as_server_user(["psql", "-X", "-q", "-h", str(sock), "-p", str(port), "-U", "postgres",
                                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                                        "CREATE ROLE plain LOGIN PASSWORD 'plain'"]), check=True, capture_output=True)
        with owner.begin() as conn:
            for grant in ("GRANT USAGE ON SCHEMA public TO plain",
                          "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO plain",
                          "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO plain"):
                conn.execute(sqlalchemy.text(grant))
        plain = sqlalchemy.make_url(private_pg.url).set(username="plain", password="plain")
        url = plain.render_as_string(hide_password=False)
        s = write_search(tmp_path / "s", extra={"local": {"workers": 3}},
                         optuna={"storage": url, "n_trials": 9, "reload": 0})
        s.cli("optimize", "hyper.yml", "model.yml", check=True, timeout=300)
        study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=private_pg.url)
        assert sorted(t.number for t in study.trials) == list(range(9))
        assert all(t.state == TS.COMPLETE for t in study.trials)
        logs = "".join(p.read_text() for p in (s.save_path / "logs").glob("*.log"))
        assert "cannot create hyper_opt's claim function" in logs, logs[-3000:]
        with owner.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT to_regproc(:f)"),
                                {"f": server_side.CLAIM_FUNCTION}).scalar() is None, "nothing was created"
    finally:
        owner.dispose()
