"""storage.py: the retry classifier, the budget lock and the trial counts, on real storages."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy

from hyper_opt.exceptions import StorageRefusedError
from hyper_opt.storage import REFUSE, RETRY, diagnose, with_db_retry

from .conftest import write_search


def _with_password(url: str, password: str) -> str:
    return sqlalchemy.make_url(url).set(password=password).render_as_string(hide_password=False)


def _optimize_fast(tmp_path: Path, storage: str) -> tuple[subprocess.CompletedProcess[str], float]:
    s = write_search(tmp_path / "s", optuna={"storage": storage, "n_trials": 2})  # db_retry_seconds: 600
    started = time.monotonic()
    proc = s.cli("optimize", "hyper.yml", "model.yml", timeout=120)
    return proc, time.monotonic() - started


@pytest.mark.postgres
def test_a_wrong_password_fails_at_once_with_one_clear_message(tmp_path: Path, pg_url: str) -> None:
    proc, took = _optimize_fast(tmp_path, _with_password(pg_url, "not-the-password"))
    assert proc.returncode == 2, proc.stderr
    assert took < 30, f"retried for {took:.0f} s"
    assert "password authentication failed" in proc.stderr and "Traceback" not in proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout


@pytest.mark.postgres
def test_a_missing_database_fails_at_once(tmp_path: Path, pg_url: str) -> None:
    proc, took = _optimize_fast(tmp_path, str(sqlalchemy.make_url(pg_url).set(database="no_such_db_hyper_opt")
                                              .render_as_string(hide_password=False)))
    assert proc.returncode == 2, proc.stderr
    assert took < 30, f"retried for {took:.0f} s"
    assert "does not exist" in proc.stderr and "createdb" in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_that_is_not_sqlite_fails_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 2})
    s.save_path.mkdir(parents=True)
    (s.save_path / "hyper_opt.db").write_bytes(b"this is not a database" * 100)
    proc = s.cli("optimize", "hyper.yml", "model.yml", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "not an sqlite database" in proc.stderr and "Traceback" not in proc.stderr


def test_sqlite_database_is_locked_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with contextlib.closing(sqlite3.connect(path)) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.commit()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    calls = []

    def write() -> int:
        calls.append(time.monotonic())
        if len(calls) == 2:
            holder.execute("COMMIT")  # the other process lets go
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
        return len(calls)

    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (0)"))
    assert diagnose(caught.value) == (RETRY, "the sqlite file is locked by another process")
    assert with_db_retry(write, seconds=30, what="writing") >= 2
    holder.close()


def test_full_and_read_only_disks_are_refused_not_retried() -> None:
    import errno

    calls = []

    def full() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageRefusedError, match="disk is full"):
        with_db_retry(full, seconds=30, what="recording trial 3")
    assert len(calls) == 1
    assert diagnose(OSError(errno.EROFS, "Read-only file system"))[0] == REFUSE
    assert diagnose(ValueError("not a storage problem")) is None
