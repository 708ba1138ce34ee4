"""Per-worker background work as the number of workers W grows (issue 24, item 1): client CPU and
database work per worker-second, and rows read per finished trial, hyper_opt beside plain optuna.

    python -m benchmarks.background                          # W = 8, 64; 5-s trials
    python -m benchmarks.background --workers 8,64,512 --sleep 30 --per-worker 2 --heartbeat 10

W virtual workers in threads (64 per process, as benchmarks/fleet.py runs them), trials that sleep
(RandomSampler), on a throwaway PostgreSQL (max_connections 100, pg_stat_statements loaded) behind
its own PgBouncer in transaction mode, so that the server's counters hold this run only:

* ``hyper_opt``: ``hyper_opt.worker.Worker(...).run()`` per thread (the one-statement claim and
  scan turn on PostgreSQL);
* ``hyper_opt (transaction)``: the same with ``HYPER_OPT_NO_SERVER_SIDE`` (the claim as a
  transaction, a stale scan per worker per heartbeat interval, as before issue 24);
* ``optuna``: per thread, what a user writes without hyper_opt: ``RDBStorage`` with the same
  heartbeat and the retry callback, ``study.optimize`` with ``MaxTrialsCallback(N)``.

Figures per run, *steady* ones over a window in which every worker is past its first trial and
none has reached its last (start-up and the end of the study left out; the CPU from /proc, the
server's counters sampled at both ends): *client CPU ms per worker-second*: the worker processes'
CPU time over W x the window, *statements* and *buffer accesses* (pg_stat_statements, top-level
calls and shared blocks hit + read, nested work included; updated at once, unlike the table
counters, which a pooled session flushes up to 10 s late) per worker-second. Per run: the *whole
run* CPU from the start signal to the exit; per finished trial: top-level statements, buffer
accesses and *rows read* (pg_stat_user_tables, seq_tup_read + idx_tup_fetch: rows of optuna's and
hyper_opt's tables, read 11 s after the run so that every session has flushed them; beside it
pg_stat_database's tup_returned + tup_fetched, which adds the system catalogs read by new server
sessions); the exact budget and RUNNING trials left. Each system first runs once, unrecorded, with
2 workers (tables, functions, PgBouncer's pool).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks import common, fleet

CHILD = "import sys; from benchmarks.background import _child; _child(sys.argv[1], sys.argv[2])"
SYSTEMS = ("hyper_opt", "hyper_opt (transaction)", "optuna")
STATS_FLUSH_S = 11.0
QUICK = {"workers": (8, 64), "sleep": 5.0, "per_worker": 4, "heartbeat": 2}


def _plain_worker(spec: dict[str, Any], index: int, spans: list[tuple[float, float]]) -> None:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat's ExperimentalWarning
        storage = optuna.storages.RDBStorage(
            spec["url"], engine_kwargs={"pool_pre_ping": True, "connect_args": {"prepare_threshold": None}},
            heartbeat_interval=spec["heartbeat"], grace_period=spec["grace"],
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    study = optuna.load_study(study_name=spec["study"], storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=1 + index))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_int("y", 0, 10)
        start = time.time()
        time.sleep(spec["sleep"])
        spans.append((start, time.time()))
        return (x - 2.0) ** 2 + (y - 3) ** 2

    study.optimize(objective, n_trials=None, callbacks=[
        MaxTrialsCallback(spec["n_trials"], states=(TrialState.COMPLETE, TrialState.PRUNED))])
    storage.engine.dispose()


def _child(spec_path: str, out_path: str) -> None:
    """One process of virtual workers: load everything, wait for the start signal, run, report."""
    import logging

    import optuna

    spec = json.loads(Path(spec_path).read_text())
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("hyper_opt").setLevel(logging.ERROR)
    if spec["system"] != "optuna":
        from hyper_opt.config import load_config
        from hyper_opt.worker import Worker

        config, model = load_config(spec["hyper"], spec["model"])
    results: list[dict[str, Any]] = [{} for _ in range(spec["count"])]

    def one(k: int) -> None:
        index = spec["first_index"] + k
        spans: list[tuple[float, float]] = []
        start = time.time()
        try:
            if spec["system"] == "optuna":
                _plain_worker(spec, index, spans)
            else:
                Worker(config, model or {}, worker_index=index).run()
            error = None
        except BaseException as err:  # noqa: BLE001 - a dead worker is a result here
            error = f"{type(err).__name__}: {str(err)[:300]}"
        results[k] = {"start": start, "end": time.time(), "error": error}

    Path(spec["ready"]).write_text("ready")
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.02)
    time.sleep(max(0.0, float(go.read_text() or 0) - time.time()))
    cpu0 = time.process_time()
    threading.stack_size(1024 * 1024)
    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(spec["count"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out_path).write_text(json.dumps({"workers": results, "cpu_s": time.process_time() - cpu0}))


def _counters(url: str) -> dict[str, float]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            db = conn.execute(sqlalchemy.text(
                "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database "
                "WHERE datname = current_database()")).one()
            tables = conn.execute(sqlalchemy.text(
                "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_user_tables")).scalar()
            calls, blocks = conn.execute(sqlalchemy.text(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0) "
                "FROM pg_stat_statements WHERE toplevel "
                "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")).one()
    finally:
        engine.dispose()
    return {"transactions": float(db[0]), "rows_read_all": float(db[1]), "rows_read": float(tables or 0),
            "statements": float(calls or 0), "blocks": float(blocks or 0)}


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _sample_window(url: str, window: tuple[float, float], pids: list[int],
                   samples: list[tuple[float, dict[str, float], float]]) -> None:
    """The server's counters and the workers' CPU at the start and at the end of the window."""
    if window[1] - window[0] < 2.0:
        return
    for at in window:
        time.sleep(max(0.0, at - time.time()))
        samples.append((time.time(), _counters(url), _cpu_s(pids)))


def run_one(system: str, server: fleet.Server, *, workers: int, sleep: float, per_worker: int,
            heartbeat: int) -> dict[str, Any]:
    import optuna
    from sqlalchemy.pool import NullPool

    study = common.new_study_name(f"bg{workers}")
    n_trials = workers * per_worker
    grace = max(4 * heartbeat, 20)
    # No pooled connection of this process may outlive its use: an idle session flushes its table
    # counters up to 10 s later, into the next run's figures.
    direct = optuna.storages.RDBStorage(server.direct_url, engine_kwargs={"poolclass": NullPool})
    optuna.create_study(study_name=study, storage=direct, direction="minimize")
    n_proc = fleet.processes_for(workers)
    with common.scratch(f"background-{workers}") as folder:
        hyper, model = fleet.write_search(folder / "search", url=server.url, study=study, n_trials=n_trials,
                                          sleep=sleep, heartbeat=heartbeat, db_retry_seconds=60)
        per = [workers // n_proc + (1 if p < workers % n_proc else 0) for p in range(n_proc)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(common.REPO), os.environ.get("PYTHONPATH", "")])}
        if system == "hyper_opt (transaction)":
            env["HYPER_OPT_NO_SERVER_SIDE"] = "1"
        procs, outs, readies, first = [], [], [], 0
        go = folder / "go"
        for p, count in enumerate(per):
            spec = {"system": system, "hyper": str(hyper), "model": str(model), "url": server.url, "study": study,
                    "n_trials": n_trials, "sleep": sleep, "heartbeat": heartbeat, "grace": grace,
                    "first_index": first, "count": count, "ready": str(folder / f"ready_{p}"), "go": str(go)}
            first += count
            (folder / f"spec_{p}.json").write_text(json.dumps(spec))
            log = open(folder / f"proc_{p}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen([sys.executable, "-c", CHILD, str(folder / f"spec_{p}.json"),
                                            str(folder / f"out_{p}.json")], cwd=common.REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
            outs.append(folder / f"out_{p}.json")
            readies.append(Path(spec["ready"]))
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in readies):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                for p, _ in procs:
                    p.kill()
                raise common.RunFailed(f"background: a worker process did not start:\n"
                                       f"{common.tail(folder / 'proc_0.log')}")
            time.sleep(0.05)
        before = _counters(server.direct_url)
        load_before = common.load_average()[0]
        t0 = time.time() + 0.3
        # the steady window: every worker past its first trial, none yet at its last one
        window = (t0 + 1.5 * sleep + 2.0, t0 + (per_worker - 1) * sleep - 0.5)
        samples: list[tuple[float, dict[str, float], float]] = []
        pids = [p.pid for p, _ in procs]
        sampler = threading.Thread(target=_sample_window, args=(server.direct_url, window, pids, samples), daemon=True)
        sampler.start()
        go.write_text(repr(t0))
        limit = per_worker * (sleep + 5) * 4 + 120
        for p, log in procs:
            try:
                p.wait(timeout=max(1.0, t0 + limit - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        time.sleep(STATS_FLUSH_S)  # PgBouncer's idle server sessions flush their table counters within 10 s
        after = _counters(server.direct_url)
        sampler.join(timeout=5)
        data = [json.loads(o.read_text()) for o in outs if o.exists()]
    counts = common.study_counts(server.direct_url, study)
    optuna.delete_study(study_name=study, storage=direct)
    direct.engine.dispose()
    rows = [r for d in data for r in d["workers"]]
    wall = max((r["end"] for r in rows), default=t0) - t0
    worker_s = workers * wall
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    delta = {k: after[k] - before[k] for k in after}
    steady: dict[str, float | None] = {"cpu_ms_per_worker_s": None, "statements_per_worker_s": None,
                                       "blocks_per_worker_s": None}
    if len(samples) == 2:
        (ta, ca, cpua), (tb, cb, cpub) = samples
        ws = workers * (tb - ta)
        steady = {"cpu_ms_per_worker_s": 1000 * (cpub - cpua) / ws,
                  "statements_per_worker_s": (cb["statements"] - ca["statements"]) / ws,
                  "blocks_per_worker_s": (cb["blocks"] - ca["blocks"]) / ws}
    return {"system": system, "workers": workers, "n_trials": n_trials, "finished": finished,
            "steady": steady, "window_s": (window[1] - window[0]) if len(samples) == 2 else None,
            "running_left": counts.get("RUNNING", 0), "failed": counts.get("FAIL", 0),
            "exact": finished == n_trials and counts.get("RUNNING", 0) == 0,
            "errors": [r["error"] for r in rows if r.get("error")][:3], "wall_s": wall,
            "cpu_ms_per_worker_s": 1000 * sum(d["cpu_s"] for d in data) / worker_s,
            "statements_per_worker_s": delta["statements"] / worker_s,
            "rows_read_per_worker_s": delta["rows_read"] / worker_s,
            "transactions_per_worker_s": delta["transactions"] / worker_s,
            "rows_read_per_trial": delta["rows_read"] / finished if finished else None,
            "blocks_per_trial": delta["blocks"] / finished if finished else None,
            "rows_read_all_per_trial": delta["rows_read_all"] / finished if finished else None,
            "statements_per_trial": delta["statements"] / finished if finished else None,
            "load_before": load_before, "load_after": common.load_average()[0]}


def run(*, workers_list: tuple[int, ...], sleep: float, per_worker: int, heartbeat: int,
        systems: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
    common.ensure_pg_env()
    runs = []
    load_start = common.load_average()
    with fleet.throwaway_postgres(100, pgbouncer=True, stat_statements=True) as server:
        for system in systems:  # warm-up, not recorded: optuna's tables, hyper_opt's functions, the pool
            run_one(system, server, workers=2, sleep=0.1, per_worker=1, heartbeat=heartbeat)
        for w in workers_list:
            for system in systems:
                t = time.monotonic()
                try:
                    r = run_one(system, server, workers=w, sleep=sleep, per_worker=per_worker, heartbeat=heartbeat)
                except Exception as err:  # noqa: BLE001 - the other runs still count
                    r = {"system": system, "workers": w, "failed": f"{type(err).__name__}: {err}"[:400]}
                runs.append(r)
                print(f"  background {system:<24} W={w:<4} ({time.monotonic() - t:.0f} s) "
                      f"{ {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} }", file=sys.stderr)
    return {"runs": runs, "sleep": sleep, "per_worker": per_worker, "heartbeat": heartbeat,
            "code": common.code_version(), "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    header = ["system", "W", "finished/N", "RUNNING left", "FAIL", "wall s", "steady: client CPU ms / worker-s",
              "steady: statements / worker-s", "steady: buffer accesses / worker-s",
              "whole run: client CPU ms / worker-s", "rows read / trial", "rows read / trial (with catalogs)",
              "statements / trial", "buffer accesses / trial", "load"]
    rows = []
    for r in data["runs"]:
        if r.get("failed"):
            rows.append([r["system"], r["workers"], f"failed: {r['failed'][:100]}"] + ["-"] * 13)
            continue
        st = r.get("steady") or {}

        def fmt(v: float | None, digits: int = 1) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        rows.append([r["system"], r["workers"], f"{r['finished']}/{r['n_trials']}", r["running_left"], r["failed"],
                     f"{r['wall_s']:.1f}", fmt(st.get("cpu_ms_per_worker_s")), fmt(st.get("statements_per_worker_s"), 2),
                     fmt(st.get("blocks_per_worker_s")), f"{r['cpu_ms_per_worker_s']:.1f}",
                     f"{r['rows_read_per_trial']:.0f}",
                     f"{r['rows_read_all_per_trial']:.0f}",
                     f"{r['statements_per_trial']:.1f}", f"{r['blocks_per_trial']:.0f}",
                     f"{r['load_before']:.1f}-{r['load_after']:.1f}"])
    return (common.markdown_table(header, rows)
            + f"\n\nTrials sleep {data['sleep']:g} s, {data['per_worker']} per worker, RandomSampler, heartbeat every "
              f"{data['heartbeat']} s; throwaway PostgreSQL (max_connections 100) behind PgBouncer (transaction "
              f"mode, pool of 20); hyper_opt at {data['code']}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.background", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default=",".join(map(str, QUICK["workers"])))
    parser.add_argument("--sleep", type=float, default=QUICK["sleep"])
    parser.add_argument("--per-worker", type=int, default=QUICK["per_worker"])
    parser.add_argument("--heartbeat", type=int, default=QUICK["heartbeat"])
    parser.add_argument("--systems", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    systems = tuple(s.strip() for s in args.systems.split(",")) if args.systems else SYSTEMS
    data = run(workers_list=tuple(int(w) for w in args.workers.split(",")), sleep=args.sleep,
               per_worker=args.per_worker, heartbeat=args.heartbeat, systems=systems)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
