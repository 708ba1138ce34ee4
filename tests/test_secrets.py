"""The database password never shows: not in workers' command lines, files under save_path
(submitit's pickles included), messages, or the config handed to user code."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy

from hyper_opt.config import mask_url
from hyper_opt.secrets import for_worker, is_secret, take_from_env

from .conftest import Search, write_search

SEES_STORAGE = textwrap.dedent('''
    import time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            time.sleep(float(conf["sleep"]))
            return {"val_loss": conf["model"]["x"] ** 2, "storage_seen": conf["optuna"]["storage"]}
''')


@pytest.mark.parametrize("url, hidden", [
    ("postgresql://u:pw@h/db", "pw"),
    ("postgresql://u:p@ss@h:5432/db", "p@ss"),
    ("postgresql://:pw@h/db", "pw"),
    ("postgresql://h/db?password=pw&sslmode=require", "password=pw"),
    ("postgresql://u:a%40b@h/db", "a%40b"),
    ("mysql+pymysql://u:p:w@h/db", "p:w"),
])
def test_mask_url_hides_every_form_of_password(url: str, hidden: str) -> None:
    masked = mask_url(url)
    assert hidden not in masked and "***" in masked, masked
    assert "h" in masked and is_secret(f"optuna:storage={url}")


def test_mask_url_leaves_urls_without_password_alone() -> None:
    for url in ("postgresql://u@h:5432/db", "sqlite:////a/b.db", "journal.log"):
        assert mask_url(url) == url and not is_secret(f"optuna:storage={url}")


def test_overrides_with_a_password_travel_in_the_environment_in_order() -> None:
    overrides = ["optuna:n_trials=3", "optuna:storage=postgresql://u:pw@h/db"]
    argv, env = for_worker(overrides)
    assert argv == [] and "pw" in env["HYPER_OPT_OVERRIDES"]
    environ = dict(env)
    assert take_from_env([], environ) == overrides and not environ, "removed once read"
    assert for_worker(["optuna:n_trials=3"]) == (["optuna:n_trials=3"], {})


def _password_url(pg_url: str) -> tuple[str, str]:
    password = os.environ.get("PGPASSWORD") or ""
    if not password:
        pytest.fail("PGPASSWORD is not set: the local PostgreSQL's password is needed for this test")
    url = sqlalchemy.make_url(pg_url).set(password=password).render_as_string(hide_password=False)
    return url, f":{password}@"  # the local password is also the user's name: look for it in the URL


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _worker_cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "hyper_opt.run" in text:
            out.append(text)
    return out


@pytest.mark.postgres
def test_local_workers_argv_and_files_hold_no_password(tmp_path: Path, pg_url: str) -> None:
    url, needle = _password_url(pg_url)
    s: Search = write_search(tmp_path / "s", objective=SEES_STORAGE, model={"model": {"x": 0.5}, "sleep": 1.0},
                             extra={"local": {"workers": 2}}, optuna={"n_trials": 4})
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}  # the URL is the only way in
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml",
                             "--set", f"optuna:storage={url}"], cwd=s.folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        seen += [c for c in _worker_cmdlines() if str(s.hyper) in c or "hyper.yml" in c]
        time.sleep(0.3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert seen, "no worker was seen running"
    assert not [c for c in seen if needle in c], "the password is on a worker's command line"
    assert needle not in out + err
    assert not _files_holding(s.save_path, needle)
    rows = (s.save_path / "trials.csv").read_text()
    assert "***" in rows, "user code saw the masked URL"


@pytest.mark.postgres
def test_the_optimize_parent_drops_a_set_password_from_its_command_line(tmp_path: Path, pg_url: str) -> None:
    """With --local the parent runs for the whole search: its own /proc/PID/cmdline (readable by
    every user) loses the --set password at once (it re-executes itself; same pid), and the
    search still gets the password (the URL is the only way in)."""
    url, needle = _password_url(pg_url)
    s: Search = write_search(tmp_path / "s", objective=SEES_STORAGE, model={"model": {"x": 0.5}, "sleep": 1.0},
                             extra={"local": {"workers": 1}}, optuna={"n_trials": 3})
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml", "--local",
                             "--set", "optuna:n_trials=3", "--set", f"optuna:storage={url}"], cwd=s.folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent: list[str] = []
    deadline = time.time() + 90
    while proc.poll() is None and time.time() < deadline:
        if [c for c in _worker_cmdlines() if str(s.hyper) in c]:  # its workers run: the parent is past its start
            with contextlib.suppress(OSError):
                parent.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        time.sleep(0.2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert parent, "the parent was never seen while its workers ran"
    assert not [c for c in parent if needle in c], f"the password is on the parent's command line: {parent[0]}"
    assert all("optimize hyper.yml model.yml --local --set optuna:n_trials=3" in c for c in parent), parent[0]
    assert "3/3 finished" in err and needle not in out + err


@pytest.mark.slurm
@pytest.mark.postgres
def test_slurm_jobs_get_the_password_without_pickling_it(tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    from .test_slurm import _job_ids, _wait_jobs_done

    url, needle = _password_url(pg_url)
    s = write_search(tmp_path / "s", objective=SEES_STORAGE, model={"model": {"x": 0.5}, "sleep": 0.2},
                     extra={"slurm": {"jobs": 1, "batch": {"t": "00:05:00", "J": "hoptest-secret", "mem": "400M"}}},
                     optuna={"n_trials": 2})
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}  # the URL is the only way in
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml",
                           "--set", f"optuna:storage={url}"], cwd=s.folder, env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = _job_ids(proc.stdout)
    assert set(_wait_jobs_done(ids, timeout=180).values()) == {"COMPLETED"}
    assert len(list((s.save_path / "trials").glob("trial_*.csv"))) == 2, "the jobs reached the database"
    assert list((s.save_path / "slurm").rglob("*.pkl")), "submitit's pickles are there to search"
    assert not _files_holding(s.save_path, needle), "the password is in a file under save_path"
