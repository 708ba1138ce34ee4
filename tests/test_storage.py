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


def test_the_pool_timeout_of_a_stalled_server_is_retried() -> None:
    """A worker's one connection held by its other thread on a stalled server: the pool's
    TimeoutError (wrapped by optuna) is waited out, not turned into a FAIL (issue 21, item 2)."""
    import optuna
    import sqlalchemy.exc

    pool = sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached, connection timed out, timeout 2.00")
    try:
        try:
            raise pool
        except sqlalchemy.exc.TimeoutError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
    except optuna.exceptions.StorageInternalError as wrapped:
        assert diagnose(wrapped)[0] == RETRY
    calls = []

    def stalled_once() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise pool
        return len(calls)

    assert with_db_retry(stalled_once, seconds=30, what="reporting step 3") == 2


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


def _opened(tmp_path: Path, storage: str | None = None):  # type: ignore[no-untyped-def]
    from hyper_opt.config import load_config
    from hyper_opt.study import open_study

    s = write_search(tmp_path / "s", optuna={"storage": storage} if storage else None)
    config, _ = load_config(s.hyper, s.model)
    return open_study(config, create=True)


def _every_state(opened) -> None:  # type: ignore[no-untyped-def]
    import optuna

    study = opened.study
    study.enqueue_trial({"x": 1.0})  # WAITING
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "COMPLETE"):
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, 1.0 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))


def _slow_counts(opened) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for t in opened.storage.get_all_trials(opened.study_id):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_counts_match_get_all_trials(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from hyper_opt.study import counts

    opened = _opened(tmp_path, request.getfixturevalue("pg_url") if backend == "postgres" else None)
    try:
        _every_state(opened)
        fast = {k: v for k, v in counts(opened).items() if v}
        assert fast == _slow_counts(opened) == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 1}
    finally:
        opened.lock.close()


class _FakeEngine:
    """An engine whose GROUP BY answers ``rows`` or raises ``error``."""

    def __init__(self, rows: list[tuple[str, int]] | None = None, error: Exception | None = None) -> None:
        self.rows, self.error = rows, error

    @contextlib.contextmanager
    def connect(self):  # type: ignore[no-untyped-def]
        engine = self

        class Conn:
            def execute(self, *args: object):  # type: ignore[no-untyped-def]
                if engine.error is not None:
                    raise engine.error

                class Result:
                    def fetchall(self) -> list[tuple[str, int]]:
                        return engine.rows or []

                return Result()

        yield Conn()


@pytest.mark.parametrize("engine", [
    _FakeEngine(error=sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: trials"))),
    _FakeEngine(rows=[("COMPLETE", 2), ("PAUSED", 3)]),  # a state this optuna does not know
], ids=["sqlite-schema-error", "unknown-state"])
def test_counts_fall_back_to_the_public_api_instead_of_crashing_or_dropping(
        tmp_path: Path, engine: _FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyper_opt.study import counts

    opened = _opened(tmp_path)
    try:
        _every_state(opened)
        monkeypatch.setattr(opened.storage, "engine", engine)
        assert {k: v for k, v in counts(opened).items() if v} == _slow_counts(opened)
    finally:
        opened.lock.close()


def _lock_spec(tmp_path: Path, storage: str | None = None):  # type: ignore[no-untyped-def]
    from hyper_opt.config import load_config

    s = write_search(tmp_path / "lock", optuna={"storage": storage} if storage else None)
    return load_config(s.hyper, s.model)[0].optuna


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_budget_lock_nests_and_a_hung_holder_gives_an_error_not_a_hang(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from hyper_opt.exceptions import StorageError
    from hyper_opt.budget_lock import BudgetLock

    spec = _lock_spec(tmp_path, request.getfixturevalue("pg_url") if backend == "postgres" else None)
    holder, waiter = BudgetLock(spec), BudgetLock(spec, timeout_s=1.5)
    try:
        holder.acquire()
        holder.acquire()  # nested (the objective may take it again)
        holder.release()
        assert holder.held
        started = time.monotonic()
        with pytest.raises(StorageError, match="stayed taken"):
            waiter.acquire()  # the holder still has it after the inner release
        assert time.monotonic() - started < 10
        holder.release()
        assert not holder.held
        waiter.acquire()  # free now
        waiter.release()
    finally:
        holder.close()
        waiter.close()


# Opens the study as a worker does, all at once: each process says it is ready, then waits for
# the go file, so that the opens really overlap (issue 21, item 14). optuna's window between
# "alembic_version is empty" and stamping it is widened to 0.5 s (a private name, test only), so
# that every process that finds a new database collides there, every time.
OPEN_AT_ONCE = '''
import sys, time
from pathlib import Path
from optuna.storages._rdb import storage as rdb
from hyper_opt.config import load_config
from hyper_opt.study import open_study

supported = rdb._VersionManager._is_alembic_supported
rdb._VersionManager._is_alembic_supported = lambda self: time.sleep(0.5) or supported(self)

config, model = load_config(Path("hyper.yml"), Path("model.yml"))
Path(sys.argv[1]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
opened = open_study(config, create=True, worker=True)
opened.lock.close()
print("opened study", opened.study_id)
'''


@contextlib.contextmanager
def _fresh_postgres_database(url: str):  # type: ignore[no-untyped-def]
    """A new, empty database on the local server (no optuna tables yet), dropped afterwards."""
    import uuid

    name = f"hyper_opt_fresh_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _open_at_once(folder: Path, n: int, round_: str) -> list[subprocess.CompletedProcess[str]]:
    import os

    go = folder / f"go-{round_}"
    ready = [folder / f"ready-{round_}-{i}" for i in range(n)]
    env = {**os.environ, "HYPER_OPT_POOL_TIMEOUT_S": "10"}  # a wanted second connection fails fast
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(ready[i]), str(go)], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_processes_opening_a_new_storage_at_once_all_succeed(tmp_path: Path, backend: str,
                                                             request: pytest.FixtureRequest) -> None:
    """Any number of processes opening the same new (then existing) storage at once all succeed,
    with one connection each: on a new database optuna wanted a second connection from a worker's
    one-connection pool (PostgreSQL: TimeoutError in _is_alembic_supported), and processes creating
    its tables at once collided (SQLite: UNIQUE constraint failed: alembic_version)."""
    from hyper_opt.storage import WORKER_APPLICATION_NAME, application_name

    n = 6
    options: dict = {"db_retry_seconds": 30}
    if backend == "journal":
        options.update(storage="study.journal", storage_type="journal", heartbeat_interval=None, grace_period=None)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_fresh_postgres_database(request.getfixturevalue("pg_url"))) \
            if backend == "postgres" else None
        if url:
            options["storage"] = url
        s = write_search(tmp_path / "s", optuna=options)
        peak = [0]
        if url:
            import threading

            app = application_name(WORKER_APPLICATION_NAME, s.hyper_config()["optuna"]["study_name"])
            watcher = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            stop = threading.Event()

            def watch() -> None:
                with watcher.connect() as conn:
                    while not stop.is_set():
                        count = conn.execute(sqlalchemy.text(
                            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :a"), {"a": app}).scalar()
                        conn.rollback()
                        peak[0] = max(peak[0], int(count or 0))
                        time.sleep(0.005)

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            stack.callback(watcher.dispose)
            stack.callback(thread.join)
            stack.callback(stop.set)
        for round_ in ("new", "existing"):
            results = _open_at_once(s.folder, n, round_)
            failed = [r.stdout[-2000:] for r in results if r.returncode != 0]
            assert not failed, f"{len(failed)} of {n} processes failed to open the {round_} storage:\n{failed[0]}"
            ids = {r.stdout.split()[-1] for r in results}
            assert len(ids) == 1, f"one study, opened by all: {ids}"
    if url:
        assert 1 <= peak[0] <= n, f"{peak[0]} connections for {n} processes"


def test_the_schema_head_read_from_the_migration_scripts_is_alembics() -> None:
    from optuna.storages._rdb.storage import _VersionManager

    from hyper_opt.storage import scripts_head

    manager = _VersionManager.__new__(_VersionManager)  # get_head_version reads only the scripts
    manager.url = "sqlite://"
    assert scripts_head() == manager.get_head_version()


def test_tables_of_an_older_optuna_are_refused_with_the_upgrade_command_and_left_alone(tmp_path: Path) -> None:
    from hyper_opt.config import load_config
    from hyper_opt.study import open_study

    s = write_search(tmp_path / "s", optuna={"n_trials": 2, "reload": 1})
    config, _ = load_config(s.hyper)
    open_study(config, create=True).lock.close()
    db = s.save_path / "hyper_opt.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    proc = s.cli("optimize", "hyper.yml", "model.yml", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "schema version v3.0.0.d" in proc.stderr and "optuna storage upgrade" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("v3.0.0.d",)]
        assert conn.execute("SELECT COUNT(*) FROM studies").fetchone() == (1,)
