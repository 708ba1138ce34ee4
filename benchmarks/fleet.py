"""Benchmark: many concurrent workers on one study (issue 13, "past this machine").

W virtual workers run hyper_opt's real worker protocol, ``hyper_opt.worker.Worker(config, model,
worker_index=i).run()``: the claim under the budget lock, the heartbeat thread, ``tell``, the
per-trial CSV. Each worker is a thread with its own Worker and its own storage (engine and
connections, as a Slurm job would have), and its trials sleep (RandomSampler, so the CPU stays
free for the protocol). The threads are spread over a few processes (about 64 workers each, at
most one per core). Each W runs against:

* ``direct``: the local cluster's PostgreSQL (max_connections 300);
* ``pgbouncer``: the local cluster's PgBouncer in transaction mode in front of it;
* ``max100``: a throwaway PostgreSQL with max_connections=100 (initdb in a temporary folder, a
  free port; stopped and deleted afterwards);
* ``max100+pgbouncer``: the same behind a throwaway PgBouncer (transaction mode, pool of 20).

Per run: trials/s (finished trials / time from the start signal to the last worker's exit), busy
share (time in ``train`` / worker wall time, start-up included; "after start" counts from each
worker's first trial), peak server connections (``pg_stat_activity`` polled every 0.25 s, or
PgBouncer's ``SHOW POOLS`` behind a pooler) and peak pooler clients, connection errors (warnings
of retried storage calls, failed heartbeats, workers that died), the claim time per trial (lock
wait + claim + sampling, timed around ``Worker._claim``), waiters on the budget's advisory lock
(``pg_locks`` polled: peak, and their integral per trial), and whether the budget is exact
(finished == n_trials, nothing RUNNING).

    python -m benchmarks.fleet --quick                                  # W = 16, 64, 2-s trials
    python -m benchmarks.fleet --workers 512 --sleep 30 --targets max100+pgbouncer
    python -m benchmarks --full --only fleet                            # W = 64 ... 1024, 30-s trials
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common

WORKERS_PER_PROCESS = 64
# A child process runs _child from this module as imported (not as __main__), so that the
# objective's record_span lands in the same module.
CHILD = "import sys; from benchmarks.fleet import _child; _child(sys.argv[1], sys.argv[2])"
POLL_S = 0.25
QUICK = {"workers": (16, 64), "sleep": 2.0, "per_worker": 2, "heartbeat": 1,
         "targets": ("direct", "pgbouncer", "max100+pgbouncer")}
FULL = {"workers": (64, 128, 256, 512, 1024), "sleep": 30.0, "per_worker": 3, "heartbeat": 10,
        "targets": ("direct", "pgbouncer", "max100", "max100+pgbouncer")}
TARGETS = ("direct", "pgbouncer", "max100", "max100+pgbouncer")

# --------------------------------------------------------------------------- in the worker processes

_SPANS: dict[int, list[tuple[float, float]]] = {}
_SPANS_LOCK = threading.Lock()


def record_span(start: float, end: float) -> None:
    """Called by workloads/fleet_objective.py in the worker's thread."""
    with _SPANS_LOCK:
        _SPANS.setdefault(threading.get_ident(), []).append((start, end))


_CONNECTION_WORDS = re.compile(r"unreachable|too many|connection|could not connect|server closed|"
                               r"heartbeat failed|timeout expired|terminat", re.I)


class _ErrorCounter(logging.Handler):
    """Counts the warnings of storage calls that failed on the connection (and were retried)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        if _CONNECTION_WORDS.search(text):
            self.count += 1
            if len(self.examples) < 3:
                self.examples.append(text.splitlines()[0][:300])


def _child(spec_path: str, out_path: str) -> None:
    """One process of virtual workers: wait for the start signal, run them, write what happened."""
    spec = json.loads(Path(spec_path).read_text())
    import optuna

    from hyper_opt.config import load_config
    from hyper_opt.worker import Worker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    counter = _ErrorCounter()
    for name in ("hyper_opt", "optuna"):
        logging.getLogger(name).addHandler(counter)
    logging.getLogger("hyper_opt").setLevel(logging.WARNING)
    logging.getLogger("hyper_opt").propagate = False
    config, model = load_config(spec["hyper"], spec["model"])
    results: list[dict[str, Any]] = [{} for _ in range(spec["count"])]

    def one(k: int) -> None:
        index = spec["first_index"] + k
        worker = Worker(config, model or {}, worker_index=index)
        claims: list[float] = []
        claim = getattr(worker, "_claim", None)
        if claim is not None:  # the time to claim a trial: lock wait, the claim and sampling
            def timed(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return claim(*args, **kwargs)
                finally:
                    claims.append(time.perf_counter() - t)

            worker._claim = timed  # type: ignore[method-assign]
        start = time.time()
        row: dict[str, Any] = {"index": index, "ident": threading.get_ident(), "start": start}
        try:
            report = worker.run()
            row.update(stop=report.stop.name if report.stop else None, trials=len(report.trials), error=None)
        except BaseException as err:  # noqa: BLE001 - a dead worker is a result here
            row.update(stop=None, trials=0, error=f"{type(err).__name__}: {str(err).strip()[:300]}")
        row.update(end=time.time(), claims=claims)
        results[k] = row

    Path(spec["ready"]).write_text("ready")
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.02)
    start_at = float(go.read_text() or 0)
    time.sleep(max(0.0, start_at - time.time()))
    threading.stack_size(1024 * 1024)
    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(spec["count"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for row in results:
        row["spans"] = _SPANS.get(row.get("ident", -1), [])
    Path(out_path).write_text(json.dumps({"workers": results, "connection_warnings": counter.count,
                                          "warning_examples": counter.examples}))


# --------------------------------------------------------------------------- throwaway servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path:
    """PostgreSQL's server binaries, as scripts/local_cluster.sh finds them."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "pg_ctl").exists():
        return preferred
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return found[-1].parent


def _as_server_user(cmd: Sequence[str]) -> list[str]:
    """PostgreSQL and PgBouncer refuse to run as root: run them as postgres then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@dataclass
class Server:
    url: str  # what the workers use
    direct_url: str  # the PostgreSQL server itself (study creation, counts, polling)
    admin_url: str | None  # PgBouncer's console (SHOW POOLS), or None without a pooler
    max_connections: int | None = None
    data_dir: Path | None = None  # a throwaway server's data folder (benchmarks/soak.py restarts it)


@contextlib.contextmanager
def throwaway_postgres(max_connections: int = 100, *, pgbouncer: bool = False,
                       pool_size: int = 20, stat_statements: bool = False) -> Iterator[Server]:
    """A PostgreSQL of its own (initdb in a temporary folder, a free port), optionally behind a
    PgBouncer in transaction mode; both stopped and deleted on exit. ``stat_statements``: with
    pg_stat_statements loaded and created in its database (benchmarks/background.py)."""
    folder = Path(tempfile.mkdtemp(prefix="hyper_opt-fleet-pg-"))
    data, sock = folder / "data", folder
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    binary = pg_bin()
    port = _free_port()
    password = "fleet"
    started_pg = False
    pgb_pid: Path | None = None
    try:
        pwfile = folder / "pw"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(_as_server_user([str(binary / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                        "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
                                        "--pwfile", str(pwfile)]), check=True, capture_output=True)
        # in its postgresql.conf, so that a plain pg_ctl start (server_ctl) brings the same server back
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nmax_connections = {max_connections}\n"
                       f"unix_socket_directories = '{sock}'\nsynchronous_commit = off\nfsync = off\n"
                       + ("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n"
                          if stat_statements else ""))
        started_pg = True
        server_ctl(data, "start")
        psql = _as_server_user(["psql", "-X", "-q", "-h", str(sock), "-p", str(port), "-U", "postgres",
                                "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
        subprocess.run([*psql, "-c", f"CREATE ROLE fleet LOGIN PASSWORD '{password}'"], check=True, capture_output=True)
        subprocess.run([*psql, "-c", "CREATE DATABASE fleet OWNER fleet"], check=True, capture_output=True)
        if stat_statements:
            subprocess.run([*psql[:-1], "fleet", "-c", "CREATE EXTENSION pg_stat_statements"], check=True,
                           capture_output=True)
        direct = f"postgresql://fleet:{password}@127.0.0.1:{port}/fleet"
        server = Server(url=direct, direct_url=direct, admin_url=None, max_connections=max_connections, data_dir=data)
        if pgbouncer:
            secret = subprocess.run([*psql, "-tA", "-c", "SELECT rolpassword FROM pg_authid WHERE rolname = 'fleet'"],
                                    check=True, capture_output=True, text=True).stdout.strip()
            bport = _free_port()
            (folder / "userlist.txt").write_text(f'"fleet" "{secret}"\n')
            pgb_pid = folder / "pgbouncer.pid"
            (folder / "pgbouncer.ini").write_text(
                f"[databases]\nfleet = host=127.0.0.1 port={port} dbname=fleet\n\n[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {bport}\nunix_socket_dir =\n"
                f"auth_type = scram-sha-256\nauth_file = {folder / 'userlist.txt'}\npool_mode = transaction\n"
                f"max_client_conn = 5000\nlisten_backlog = 4096\ndefault_pool_size = {pool_size}\n"
                f"reserve_pool_size = 5\nmax_db_connections = {pool_size + 5}\nserver_reset_query =\n"
                f"ignore_startup_parameters = extra_float_digits,options\nstats_users = fleet\n"
                f"logfile = {folder / 'pgbouncer.log'}\npidfile = {pgb_pid}\n")
            for name in ("userlist.txt", "pgbouncer.ini"):
                if os.geteuid() == 0:
                    shutil.chown(folder / name, "postgres", "postgres")
            subprocess.run(_as_server_user(["bash", "-c", f"ulimit -n 16384 2>/dev/null; exec /usr/sbin/pgbouncer "
                                            f"-d -q {folder / 'pgbouncer.ini'}"]), check=True, capture_output=True)
            server = Server(url=f"postgresql://fleet:{password}@127.0.0.1:{bport}/fleet", direct_url=direct,
                            admin_url=f"postgresql://fleet:{password}@127.0.0.1:{bport}/pgbouncer",
                            max_connections=max_connections)
            _wait_answers(server.url)
        yield server
    finally:
        if pgb_pid is not None and pgb_pid.exists():
            with contextlib.suppress(Exception):
                os.kill(int(pgb_pid.read_text().strip()), 15)
                time.sleep(0.5)
        if started_pg:
            subprocess.run(_as_server_user([str(binary / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def server_ctl(data_dir: Path, action: str) -> None:
    """``pg_ctl start|stop|restart`` of a throwaway server (``-m fast``: connections drop), waiting
    for it; its log is pg.log beside the data folder, never a pipe the server outlives."""
    log = data_dir.parent / "pg.log"
    subprocess.run(_as_server_user([str(pg_bin() / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-m", "fast",
                                    "-w", "-t", "60", action]), check=True, capture_output=True)


def _wait_answers(url: str, timeout_s: float = 30) -> None:
    import sqlalchemy

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            engine.dispose()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextlib.contextmanager
def target_server(target: str) -> Iterator[Server]:
    if target == "direct":
        url = common.ensure_pg_env()
        yield Server(url=url, direct_url=url, admin_url=None, max_connections=None)
    elif target == "pgbouncer":
        direct = common.ensure_pg_env()
        url = os.environ.get("HYPER_OPT_TEST_PGBOUNCER_URL")
        if not url:
            raise RuntimeError("HYPER_OPT_TEST_PGBOUNCER_URL is unset: run 'bash scripts/local_cluster.sh up' "
                               "(it starts PgBouncer) and eval its env")
        import sqlalchemy

        admin = sqlalchemy.make_url(url).set(database="pgbouncer").render_as_string(hide_password=False)
        yield Server(url=url, direct_url=direct, admin_url=admin, max_connections=None)
    elif target in ("max100", "max100+pgbouncer"):
        with throwaway_postgres(100, pgbouncer=target.endswith("pgbouncer")) as server:
            yield server
    else:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


# --------------------------------------------------------------------------- polling the server


def _lock_key(study: str) -> tuple[int, int]:
    """(classid, objid) of the study's budget advisory lock in pg_locks (hyper_opt.budget_lock.BudgetLock)."""
    key = int.from_bytes(hashlib.sha256(f"hyper_opt:{study}".encode()).digest()[:8], "big", signed=True)
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


class Poller:
    """Samples, every POLL_S: server connections (ours), pooler clients and servers, lock waiters."""

    def __init__(self, server: Server, *, app: str | None, study: str) -> None:
        self.server, self.app, self.study = server, app, study  # hyper_opt may name its connections by study
        self.classid, self.objid = _lock_key(study)
        self.peak_server = self.peak_clients = self.peak_waiters = self.peak_pool_wait = 0
        self.waiter_seconds = 0.0
        self.samples = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.server.direct_url, poolclass=sqlalchemy.pool.NullPool)
        admin = None
        try:
            conn = engine.connect()
            if self.server.admin_url:
                import psycopg2

                u = sqlalchemy.make_url(self.server.admin_url)
                admin = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname="pgbouncer",
                                         password=u.password or os.environ.get("PGPASSWORD"))
                admin.autocommit = True
            query = sqlalchemy.text(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND (CAST(:app AS text) IS NULL OR application_name = :app "
                "OR application_name LIKE '%' || CAST(:study AS text))), "
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = CAST(:c AS oid) AND objid = CAST(:o AS oid))")
            last = time.monotonic()
            while not self._stop.wait(POLL_S):
                try:
                    server_conns, waiters = conn.execute(query, {"app": self.app, "study": self.study,
                                                                 "c": self.classid, "o": self.objid}).one()
                    conn.commit()
                    now = time.monotonic()
                    self.waiter_seconds += waiters * (now - last)
                    last = now
                    self.peak_waiters = max(self.peak_waiters, waiters)
                    if admin is None:
                        self.peak_server = max(self.peak_server, server_conns)
                    else:
                        with admin.cursor() as cur:
                            cur.execute("SHOW POOLS")
                            cols = [d[0] for d in cur.description]
                            for row in cur.fetchall():
                                r = dict(zip(cols, row))
                                if r["database"] == "pgbouncer":
                                    continue
                                sv = sum(int(r.get(k, 0)) for k in ("sv_active", "sv_idle", "sv_used",
                                                                     "sv_tested", "sv_login"))
                                self.peak_server = max(self.peak_server, sv)
                                self.peak_clients = max(self.peak_clients, int(r["cl_active"]) + int(r["cl_waiting"]))
                                self.peak_pool_wait = max(self.peak_pool_wait, int(r["cl_waiting"]))
                    self.samples += 1
                except Exception:  # noqa: BLE001 - a sample lost, not the run
                    self.errors += 1
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = engine.connect()
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            if admin is not None:
                admin.close()
            engine.dispose()


# --------------------------------------------------------------------------- one run


def _with_app(url: str, app: str) -> str:
    import sqlalchemy

    u = sqlalchemy.make_url(url)
    return u.update_query_dict({"application_name": app}).render_as_string(hide_password=False)


def write_search(folder: Path, *, url: str, study: str, n_trials: int, sleep: float, heartbeat: int,
                 db_retry_seconds: int) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    hyper = {"save_path": str(folder / "results"), "optuna": {
        "study_name": study, "storage": url, "reload": 1,
        "objective": str(common.WORKLOADS / "fleet_objective.py"),
        "metric": "val_loss", "direction": "minimize", "n_trials": n_trials,
        "heartbeat_interval": heartbeat, "grace_period": max(4 * heartbeat, 20),
        "db_retry_seconds": db_retry_seconds,
        "sampler": {"type": "RandomSampler", "seed": 1}, "parameters": common.PARAMETERS}}
    model = {"model": {"x": 0.0, "y": 0}, "bench": {"sleep": sleep}}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder / "hyper.yml", folder / "model.yml"


def processes_for(workers: int, processes: int | None = None) -> int:
    """How many processes hold the W worker threads: ``processes`` if given (at most W), else about
    64 per process and at most one per core."""
    if processes:
        return max(1, min(workers, processes))
    return max(1, min(os.cpu_count() or 1, -(-workers // WORKERS_PER_PROCESS)))


def run_one(target: str, server: Server, *, workers: int, sleep: float, per_worker: int, heartbeat: int,
            db_retry_seconds: int = 60, keep: bool = False, processes: int | None = None,
            limit_s: float | None = None) -> dict[str, Any]:
    """W virtual workers on a fresh study of ``per_worker`` x W trials; returns the figures.
    ``limit_s``: how long the workers may run before they are killed (default: three times the
    trials' time, plus a minute, plus 0.3 s per worker)."""
    import optuna

    study = common.new_study_name(f"fleet{workers}")
    n_trials = workers * per_worker
    app = f"fleet-{study[-10:]}"
    optuna.create_study(study_name=study, storage=server.direct_url, direction="minimize")
    load_before = common.load_average()[0]
    n_proc = processes_for(workers, processes)
    with common.scratch(f"fleet-{workers}", keep=keep) as folder:
        hyper, model = write_search(folder / "search", url=_with_app(server.url, app), study=study,
                                    n_trials=n_trials, sleep=sleep, heartbeat=heartbeat,
                                    db_retry_seconds=db_retry_seconds)
        per = [workers // n_proc + (1 if p < workers % n_proc else 0) for p in range(n_proc)]
        procs, outs, readies, logs = [], [], [], []
        go = folder / "go"
        first = 0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(common.REPO), os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1"}
        for p, count in enumerate(per):
            spec = folder / f"spec_{p}.json"
            ready, out, log = folder / f"ready_{p}", folder / f"out_{p}.json", folder / f"proc_{p}.log"
            spec.write_text(json.dumps({"hyper": str(hyper), "model": str(model), "first_index": first,
                                        "count": count, "ready": str(ready), "go": str(go)}))
            first += count
            fh = open(log, "wb")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(
                [sys.executable, "-c", CHILD, str(spec), str(out)], cwd=common.REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL), fh))
            outs.append(out)
            readies.append(ready)
            logs.append(log)
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in readies):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                for p, _ in procs:
                    if p.poll() is None:
                        p.kill()
                raise common.RunFailed(f"fleet: a worker process did not start:\n{common.tail(logs[0])}")
            time.sleep(0.05)
        t0 = time.time() + 0.5
        with Poller(server, app=app if server.admin_url is None and server.max_connections is None else None,
                    study=study) as poller:
            go.write_text(repr(t0))
            limit = limit_s or per_worker * (sleep + 5) * 3 + 60 + workers * 0.3  # a broken lock must not hang the run
            timed_out = False
            for p, fh in procs:
                try:
                    p.wait(timeout=max(1.0, t0 + limit - time.time()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    p.kill()
                    p.wait()
                fh.close()
            t_end = time.time()
        rows: list[dict[str, Any]] = []
        warnings = 0
        examples: list[str] = []
        for out, log in zip(outs, logs):
            if out.exists():
                data = json.loads(out.read_text())
                rows += data["workers"]
                warnings += data["connection_warnings"]
                examples += data["warning_examples"]
            elif not timed_out:
                raise common.RunFailed(f"fleet: a worker process wrote no results:\n{common.tail(log)}")
    counts = common.study_counts(server.direct_url, study)
    common.delete_study(server.direct_url, study)
    return summarise_run(target=target, workers=workers, n_trials=n_trials, sleep=sleep, rows=rows,
                         counts=counts, t0=t0, t_end=t_end, poller=poller, warnings=warnings,
                         examples=examples, timed_out=timed_out, n_proc=n_proc, load_before=load_before,
                         heartbeat=heartbeat)


def summarise_run(*, target: str, workers: int, n_trials: int, sleep: float, rows: list[dict[str, Any]],
                  counts: dict[str, int], t0: float, t_end: float, poller: Poller, warnings: int,
                  examples: list[str], timed_out: bool, n_proc: int, load_before: float,
                  heartbeat: int) -> dict[str, Any]:
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    running = counts.get("RUNNING", 0)
    train = sum(e - s for r in rows for s, e in r.get("spans", []))
    wall = sum(r["end"] - r["start"] for r in rows if "end" in r)
    after = sum(r["end"] - min(s for s, _ in r["spans"]) for r in rows if r.get("spans"))
    last_end = max((r["end"] for r in rows if "end" in r), default=t_end)
    claims = sorted(c for r in rows for c in r.get("claims", []))
    errors = [r["error"] for r in rows if r.get("error")]
    startups = sorted(min(s for s, _ in r["spans"]) - r["start"] for r in rows if r.get("spans"))
    return {
        "target": target, "workers": workers, "n_trials": n_trials, "sleep": sleep, "heartbeat": heartbeat,
        "processes": n_proc, "finished": finished, "running_left": running, "counts": counts,
        "exact": finished == n_trials and running == 0 and not timed_out, "timed_out": timed_out,
        "wall_s": last_end - t0, "trials_per_s": finished / (last_end - t0) if last_end > t0 else None,
        "busy_share": train / wall if wall else None, "busy_after_start": train / after if after else None,
        "startup_median_s": statistics.median(startups) if startups else None,
        "startup_max_s": startups[-1] if startups else None,
        "peak_server_connections": poller.peak_server, "peak_pooler_clients": poller.peak_clients,
        "peak_pool_waiting": poller.peak_pool_wait, "connection_warnings": warnings,
        "worker_errors": len(errors), "error_examples": (errors[:3] + examples[:3]),
        "claim_p50_ms": 1000 * claims[len(claims) // 2] if claims else None,
        "claim_p90_ms": 1000 * claims[min(len(claims) - 1, int(0.9 * len(claims)))] if claims else None,
        "claim_max_ms": 1000 * claims[-1] if claims else None,
        "peak_lock_waiters": poller.peak_waiters,
        "lock_wait_per_trial_ms": 1000 * poller.waiter_seconds / finished if finished else None,
        "poll_samples": poller.samples, "load_before": load_before, "load_after": common.load_average()[0],
    }


# --------------------------------------------------------------------------- the section


def run(*, quick: bool, workers_list: Sequence[int] | None = None, sleep: float | None = None,
        per_worker: int | None = None, targets: Sequence[str] | None = None,
        heartbeat: int | None = None, processes: int | None = None, limit_s: float | None = None) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    workers_list = tuple(workers_list or plan["workers"])
    sleep = plan["sleep"] if sleep is None else sleep
    per_worker = per_worker or plan["per_worker"]
    heartbeat = heartbeat or plan["heartbeat"]
    targets = tuple(targets or plan["targets"])
    common.ensure_pg_env()
    load_start = common.load_average()
    runs = []
    for target in targets:
        try:
            with target_server(target) as server:
                for w in workers_list:
                    t = time.monotonic()
                    try:
                        r = run_one(target, server, workers=w, sleep=sleep, per_worker=per_worker,
                                    heartbeat=heartbeat, processes=processes, limit_s=limit_s)
                    except Exception as err:  # noqa: BLE001 - the other runs still count
                        r = {"target": target, "workers": w, "failed": f"{type(err).__name__}: {err}"[:500]}
                    runs.append(r)
                    print(f"  fleet {target:<17} W={w:<5} {_line(r)}  ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        except Exception as err:  # noqa: BLE001 - e.g. no PgBouncer here
            runs.append({"target": target, "workers": None, "failed": f"{type(err).__name__}: {err}"[:500]})
            print(f"  fleet {target}: {err}", file=sys.stderr)
    return {"runs": runs, "sleep": sleep, "per_worker": per_worker, "heartbeat": heartbeat,
            "workers_per_process": WORKERS_PER_PROCESS,
            "load": {"start": load_start, "end": common.load_average()}}


def _line(r: dict[str, Any]) -> str:
    if r.get("failed"):
        return f"FAILED: {r['failed']}"
    return (f"{r['finished']}/{r['n_trials']} finished, {r['running_left']} RUNNING, "
            f"{r['trials_per_s']:.2f} trials/s, busy {100 * (r['busy_share'] or 0):.1f} %, "
            f"peak server conns {r['peak_server_connections']}, conn errors {r['connection_warnings']}"
            f"+{r['worker_errors']} dead, claim p50 {common.fmt_s((r['claim_p50_ms'] or 0) / 1000, ms=True)} ms, "
            f"load {r['load_before']:.2f}"
            + "".join(f"\n      {example}" for example in r.get("error_examples") or ()))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(data: dict[str, Any]) -> str:
    header = ["target", "W", "procs", "finished/N", "RUNNING left", "exact", "wall s", "trials/s",
              "busy share", "busy after start", "start-up median/max s", "peak server conns",
              "peak pooler clients", "conn errors (retried + dead)", "claim p50/p90/max ms",
              "lock waiters peak", "lock wait ms/trial", "load"]
    rows = []
    for r in data["runs"]:
        if r.get("failed"):
            rows.append([r["target"], r.get("workers") or "-", "-", f"failed: {r['failed'][:120]}"] + ["-"] * 14)
            continue
        rows.append([
            r["target"], r["workers"], r["processes"], f"{r['finished']}/{r['n_trials']}", r["running_left"],
            "yes" if r["exact"] else ("TIMEOUT" if r["timed_out"] else "**no**"),
            common.fmt_s(r["wall_s"]), f"{r['trials_per_s']:.2f}" if r["trials_per_s"] else "-",
            _pct(r["busy_share"]), _pct(r["busy_after_start"]),
            f"{common.fmt_s(r['startup_median_s'])}/{common.fmt_s(r['startup_max_s'])}",
            r["peak_server_connections"], r["peak_pooler_clients"] or "-",
            f"{r['connection_warnings']} + {r['worker_errors']}",
            "/".join(common.fmt_s((r[k] or 0) / 1000, ms=True, digits=0)
                     for k in ("claim_p50_ms", "claim_p90_ms", "claim_max_ms")),
            r["peak_lock_waiters"], common.fmt_s((r["lock_wait_per_trial_ms"] or 0) / 1000, ms=True),
            f"{r['load_before']:.1f}-{r['load_after']:.1f}",
        ])
    text = common.markdown_table(header, rows)
    return (text + f"\n\nTrials sleep {data['sleep']:g} s, {data['per_worker']} per worker (n_trials = "
            f"{data['per_worker']} x W), RandomSampler, heartbeat every {data['heartbeat']} s; the worker "
            f"threads spread evenly over *procs* processes (by default about {data['workers_per_process']} per "
            "process, at most one process per core).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"the quick plan {QUICK}")
    parser.add_argument("--workers", help="comma-separated W values")
    parser.add_argument("--sleep", type=float, help="seconds per trial")
    parser.add_argument("--per-worker", type=int, help="trials per worker (n_trials = this x W)")
    parser.add_argument("--heartbeat", type=int, help="heartbeat_interval, seconds")
    parser.add_argument("--targets", help=f"comma-separated, of {','.join(TARGETS)}")
    parser.add_argument("--processes", type=int, help="processes holding the worker threads (default: about "
                        f"{WORKERS_PER_PROCESS} workers each, at most one per core)")
    parser.add_argument("--limit", type=float, metavar="S", help="kill the workers after S seconds (default: "
                        "three times the trials' time, plus a minute, plus 0.3 s per worker)")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = run(quick=args.quick, workers_list=[int(w) for w in args.workers.split(",")] if args.workers else None,
               sleep=args.sleep, per_worker=args.per_worker, heartbeat=args.heartbeat,
               targets=[t.strip() for t in args.targets.split(",")] if args.targets else None,
               processes=args.processes, limit_s=args.limit)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
