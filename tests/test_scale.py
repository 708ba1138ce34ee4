"""Many workers on one database: the max_connections check, and a search behind PgBouncer."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from hyper_opt.connections import ServerConnections, assess, check, report
from hyper_opt.storage import CONNECTIONS_PER_WORKER

from .conftest import _check_marked, answering_url, write_search


@pytest.fixture
def pgbouncer_url(request: pytest.FixtureRequest) -> str:
    """PgBouncer in transaction mode in front of the local PostgreSQL (scripts/local_cluster.sh)."""
    _check_marked(request, "pgbouncer_url")
    return answering_url("HYPER_OPT_TEST_PGBOUNCER_URL", "PgBouncer")


def _server(**changes: object) -> ServerConnections:
    base = dict(max_connections=100, reserved=3, in_use=10, role="u", role_limit=-1, role_in_use=2,
                superuser=False, database="d", database_limit=-1, database_in_use=5, server_port=5432,
                url_port=5432)
    base.update(changes)
    return ServerConnections(**base)  # type: ignore[arg-type]


def test_the_verdict_counts_workers_reserved_slots_and_connections_in_use() -> None:
    ok = assess(40, "40 local worker(s)", _server(), per_worker=2, where="db")
    assert ok.level == "ok" and "87 left" in ok.text
    warn = assess(50, "50 local worker(s)", _server(), per_worker=2, where="db")
    assert warn.level == "warn"
    assert "100 connections" in warn.text and "87 left" in warn.text and "13 short" in warn.text
    assert "max_connections 100 - 3 reserved" in warn.text and "10 in use now" in warn.text
    assert "at most 43 worker(s)" in warn.text and "PgBouncer" in warn.text and "docs/scale.md" in warn.text
    # the tightest of server, role and database limits decides
    role = assess(10, "10 local worker(s)", _server(role_limit=12), per_worker=2, where="db")
    assert role.level == "warn" and "role u" in role.text and "CONNECTION LIMIT 12" in role.text


def test_behind_a_pooler_the_check_is_skipped_with_a_note() -> None:
    note = assess(5000, "5000 local worker(s)", _server(url_port=6432), per_worker=2, where="db")
    assert note.level == "note" and "pooler" in note.text and "6432" in note.text and "5432" in note.text


def _create_database(pg_url: str, limit: int) -> str:
    name = f"fleet_test_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name} CONNECTION LIMIT {limit}"))
    engine.dispose()
    return name


def _drop_database(pg_url: str, name: str) -> None:
    engine = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
    engine.dispose()


def _config(tmp_path: Path, storage: str, workers: int):  # type: ignore[no-untyped-def]
    from hyper_opt.config import load_config

    s = write_search(tmp_path / "s", optuna={"storage": storage}, extra={"local": {"workers": workers}})
    return s, load_config(s.hyper, s.model)[0]


@pytest.mark.postgres
def test_a_database_connection_limit_is_found_on_the_real_server(tmp_path: Path, pg_url: str) -> None:
    name = _create_database(pg_url, limit=3 * CONNECTIONS_PER_WORKER - 1)  # room for 2 workers, not 3
    try:
        url = str(sqlalchemy.make_url(pg_url).set(database=name).render_as_string(hide_password=False))
        s, config = _config(tmp_path, url, workers=3)
        verdict = check(config, 3, "3 local worker(s)")
        assert verdict is not None and verdict.level == "warn", verdict
        assert f"database {name}" in verdict.text and "at most 2 worker(s)" in verdict.text
        assert check(config, 2, "2 local worker(s)").level == "ok"  # type: ignore[union-attr]
        proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "database   WARNING:" in proc.stdout and "CONNECTION LIMIT" in proc.stdout
    finally:
        _drop_database(pg_url, name)


@pytest.mark.postgres
def test_max_connections_of_the_real_server(tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _, config = _config(tmp_path, pg_url, workers=5000)
    with caplog.at_level(logging.INFO, logger="hyper_opt"):
        verdict = report(config, None, remaining=10)
    assert verdict is not None and verdict.level == "warn"
    assert "max_connections" in verdict.text and "5000 local worker(s)" in verdict.text
    assert any(r.levelno == logging.WARNING and "database connections" in r.getMessage() for r in caplog.records)
    _, small = _config(tmp_path / "b", pg_url, workers=1)
    assert check(small, 1, "1 local worker(s)").level == "ok"  # type: ignore[union-attr]


def test_sqlite_and_journal_storages_are_not_checked(tmp_path: Path) -> None:
    _, config = _config(tmp_path, "study.db", workers=5000)
    assert check(config, 5000, "5000 local worker(s)") is None


@pytest.mark.postgres
def test_through_pgbouncer_the_check_notes_the_pooler(tmp_path: Path, pgbouncer_url: str) -> None:
    s, config = _config(tmp_path, pgbouncer_url, workers=5000)
    verdict = check(config, 5000, "5000 local worker(s)")
    assert verdict is not None and verdict.level == "note" and "pooler" in verdict.text
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "database   " in proc.stdout and "PgBouncer" in proc.stdout and "WARNING" not in proc.stdout


@pytest.mark.postgres
def test_a_search_through_pgbouncer_in_transaction_mode_keeps_the_exact_budget(
        tmp_path: Path, pg_url: str, pgbouncer_url: str) -> None:
    """Three local workers, each claiming under the budget lock through a transaction pooler:
    the lock must live within one transaction (a session-level advisory lock is lost, or kept by
    a pooled server connection, between transactions)."""
    s = write_search(tmp_path / "s", optuna={"storage": pgbouncer_url, "n_trials": 12, "db_retry_seconds": 30},
                     extra={"local": {"workers": 3}}, model={"model": {"x": 0.0}, "sleep": 0.05, "steps": 2})
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                            cwd=s.folder, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # stop its workers too (they run in sessions of their own)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        pytest.fail(f"the search through PgBouncer did not end in 180 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    name = s.hyper_config()["optuna"]["study_name"]
    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        states = dict(conn.execute(sqlalchemy.text(
            "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :n GROUP BY t.state"), {"n": name}).all())
    engine.dispose()
    states = {str(getattr(k, "name", k)).split(".")[-1]: v for k, v in states.items()}
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 12, states
    assert states.get("RUNNING", 0) == 0, states
