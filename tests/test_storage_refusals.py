"""The retry classifier on what waiting cannot heal (libpq's refusals, on the real PostgreSQL,
which runs without SSL) and on what it can (a shared file system's transient errors, on a real
journal file): refused at once with one clear message, or waited out."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hyper_opt import storage as storage_mod
from hyper_opt.config import load_config
from hyper_opt.exceptions import StorageRefusedError
from hyper_opt.storage import REFUSE, diagnose, make_storage, with_db_retry

from .conftest import write_search


def _connect_error(url: str, *, env: dict[str, str | None] | None = None) -> BaseException:
    """The error the real server (or libpq before it) gives for ``url``."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - the error is what the test looks at
        return err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    raise AssertionError(f"{url} connected")


def _with_query(url: str, **query: str) -> str:
    return sqlalchemy.make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def _refuses_at_once(err: BaseException, hint: str) -> None:
    def fail() -> None:
        raise err

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"retried {type(err).__name__}: {str(err).splitlines()[0]}")

    verdict = diagnose(err)
    assert verdict is not None and verdict[0] == REFUSE and hint in verdict[1], (verdict, str(err))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage_mod.time, "sleep", no_sleep)
        with pytest.raises(StorageRefusedError, match=hint):
            with_db_retry(fail, seconds=600, what="opening the study storage")


@pytest.mark.postgres
def test_no_password_is_refused_at_once(pg_url: str) -> None:
    err = _connect_error(pg_url, env={"PGPASSWORD": None, "PGPASSFILE": "/nonexistent/pgpass"})
    assert "no password supplied" in str(err)
    _refuses_at_once(err, "PGPASSWORD")


@pytest.mark.postgres
def test_sslmode_require_against_a_server_without_ssl_is_refused_at_once(pg_url: str) -> None:
    err = _connect_error(_with_query(pg_url, sslmode="require"))
    assert "server does not support SSL" in str(err)
    _refuses_at_once(err, "sslmode")


@pytest.mark.postgres
def test_an_invalid_sslmode_is_refused_at_once(pg_url: str) -> None:
    err = _connect_error(_with_query(pg_url, sslmode="bogus"))
    assert "invalid sslmode" in str(err)
    _refuses_at_once(err, "allowed: disable")


@pytest.mark.postgres
def test_peer_authentication_failed_is_refused_at_once(pg_url: str) -> None:
    socket_dir = "/var/run/postgresql"
    port = str(sqlalchemy.make_url(pg_url).port)
    if not os.path.exists(f"{socket_dir}/.s.PGSQL.{port}"):
        pytest.skip("the local PostgreSQL has no Unix socket here")
    user = sqlalchemy.make_url(pg_url).username
    err = _connect_error(f"postgresql://{user}@/{user}?host={socket_dir}&port={port}")
    assert "Peer authentication failed" in str(err), str(err)
    _refuses_at_once(err, "peer authentication")


def test_a_missing_root_certificate_is_refused_at_once() -> None:
    """libpq's message when the server does offer SSL (the local one does not): the driver's
    exception as psycopg raises it, classified by its text like the others."""
    import psycopg

    text = ('connection failed: connection to server at "db" (10.0.0.1), port 5432 failed: root certificate '
            'file "/home/u/.postgresql/root.crt" does not exist\nEither provide the file, use the system\'s '
            "trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.")
    try:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(text))
    except sqlalchemy.exc.OperationalError as err:
        _refuses_at_once(err, "root certificate")


@pytest.mark.postgres
def test_optimize_without_a_password_fails_at_once_naming_pgpassword(tmp_path: Path, pg_url: str) -> None:
    """docs/slurm.md: a missing password fails at once (here db_retry_seconds is 600)."""
    s = write_search(tmp_path / "s", optuna={"storage": pg_url, "n_trials": 2})
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                          cwd=s.folder, env={**env, "PGPASSFILE": "/nonexistent/pgpass"}, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "PGPASSWORD" in proc.stderr and "retrying" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO])
def test_a_journal_on_a_recovering_file_system_is_waited_out(tmp_path: Path, code: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS gives ESTALE (a stale handle after its server restarted) and EIO (while it does not
    answer): the storage call is retried, and succeeds once the file system answers again."""
    s = write_search(tmp_path / "s", optuna={"storage": "study.journal", "storage_type": "journal",
                                             "heartbeat_interval": None, "grace_period": None})
    spec = load_config(s.hyper, s.model)[0].optuna
    optuna.create_study(study_name=spec.study_name, storage=make_storage(spec))
    from optuna.storages.journal import JournalFileBackend

    real_read = JournalFileBackend.read_logs
    failures = [2]

    def flaky(self, *args, **kwargs):  # the real errno, as a read on NFS raises it
        if failures[0]:
            failures[0] -= 1
            raise OSError(code, os.strerror(code), str(spec.storage.path))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(JournalFileBackend, "read_logs", flaky)
    monkeypatch.setattr(storage_mod.time, "sleep", lambda s: None)
    summaries = with_db_retry(lambda: optuna.get_all_study_summaries(make_storage(spec)), seconds=60,
                              what="reading the study")
    assert [x.study_name for x in summaries] == [spec.study_name] and failures == [0]
