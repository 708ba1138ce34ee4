"""The ceiling of one study's claims, measured with pgbench (a C client, so that this machine's
Python is not the limit): hyper_opt's one-statement claim (``hyper_opt.server_side``) replayed by C
clients through PgBouncer (issue 24, item 2).

    python -m benchmarks.claim_pgbench                       # 64 and 256 clients, 30 s each
    python -m benchmarks.claim_pgbench --clients 64,256,1024 --seconds 30 --prefill 10000

Each pgbench client is a worker whose trials take no time: one transaction of the script is the
claim (the function, with the budget lock, the count, the new trial, its first heartbeat and a
two-key run context) and then the trial's end (``UPDATE trials SET state = 'COMPLETE'``, what
optuna's ``tell`` writes to that table), so that the study's counted prefix advances as it does in
a search. *claims/s* is pgbench's transactions per second; the latencies are those of the whole
transaction (claim + end: an upper bound of the claim's), from pgbench's per-transaction log;
*claim avg ms* is pgbench's per-statement average for the claim alone (``-r``). The study is
created (optionally pre-filled with COMPLETE trials) and deleted by the script; pgbench runs with
``-M simple`` (PgBouncer in transaction mode) and 2 threads.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

SCRIPT = """\
SELECT trial_id AS tid FROM {claim}({sid}, {key}, 2000000000, true, 600000, true, ARRAY['hostname','worker_pid'], ARRAY['"pgbench"','"1"'], NULL, 1.0) \\gset
UPDATE trials SET state = 'COMPLETE', datetime_complete = (now() AT TIME ZONE 'UTC') WHERE trial_id = :tid;
"""


def pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if not candidates:
        raise RuntimeError("pgbench not found (it ships with PostgreSQL's client or server package)")
    return str(candidates[-1])


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_clients(url: str, *, clients: int, seconds: int, sid: int, key: int) -> dict[str, Any]:
    import sqlalchemy

    from hyper_opt import server_side

    u = sqlalchemy.make_url(url)
    with tempfile.TemporaryDirectory(prefix="hyper_opt-pgbench-") as folder:
        script = Path(folder) / "claim.sql"
        script.write_text(SCRIPT.format(claim=server_side.CLAIM_FUNCTION, sid=sid, key=key))
        cmd = [pgbench(), "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres",
               "-n", "-M", "simple", "-c", str(clients), "-j", "2", "-T", str(seconds), "-r", "-l",
               "--log-prefix", str(Path(folder) / "tx"), "-f", str(script), u.database or "postgres"]
        load_before = common.load_average()[0]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PGPASSWORD": u.password or
                                   os.environ.get("PGPASSWORD", "")})
        if proc.returncode != 0:
            raise common.RunFailed(f"pgbench exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        latencies = []
        for log in Path(folder).glob("tx*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1000.0)  # microseconds -> ms
    out = proc.stdout
    tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", out)
    claim_avg = None
    for line in out.splitlines():
        if server_side.CLAIM_FUNCTION in line:
            claim_avg = float(line.split()[0])
    return {"clients": clients, "seconds": seconds, "claims_per_s": tps, "transactions": len(latencies),
            "failed": int(failed.group(1)) if failed else 0, "claim_avg_ms": claim_avg,
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p99_ms": _percentile(latencies, 0.99) if latencies else None,
            "max_ms": max(latencies) if latencies else None,
            "load_before": load_before, "load_after": common.load_average()[0]}


def run(*, clients: list[int], seconds: int, prefill: int, url: str | None = None) -> dict[str, Any]:
    import optuna

    from benchmarks.scaling import fill_study
    from hyper_opt import server_side

    direct = common.ensure_pg_env()
    target = url or os.environ.get("HYPER_OPT_TEST_PGBOUNCER_URL") or direct
    name = common.new_study_name("pgbench")
    storage = optuna.storages.RDBStorage(direct)
    sid = optuna.create_study(study_name=name, storage=storage)._study_id
    rows = []
    try:
        fill_study(direct, name, prefill)
        server_side.install(storage.engine)
        key = hash(name) % 2**62
        # the first claim counts the pre-filled trials (the whole study, once): not part of a run
        first = server_side.claim(storage, study_id=sid, lock_key=key, n_trials=2_000_000_000, can_wait=True,
                                  lock_timeout_s=600, heartbeat=True, attrs={})
        storage.set_trial_state_values(first.trial_id, optuna.trial.TrialState.COMPLETE, [0.0])
        for c in clients:
            print(f"  pgbench: {c} clients, {seconds} s", file=sys.stderr)
            rows.append(run_clients(target, clients=c, seconds=seconds, sid=sid, key=key))
            time.sleep(2)
        total = storage.get_n_trials(sid)
    finally:
        _drop_study(storage, sid)
        storage.engine.dispose()
        common.delete_study(direct, name)
    return {"rows": rows, "prefill": prefill, "trials_at_end": total, "target": target.split("@")[-1],
            "function": server_side.CLAIM_FUNCTION, "code": common.code_version()}


def _drop_study(storage: Any, sid: int) -> None:
    """Delete the benchmark's trials with a few set statements (optuna's delete_study loads and
    deletes them one by one: minutes for the 80,000 trials a run makes); the study itself is then
    deleted through optuna."""
    import sqlalchemy

    sub = "SELECT trial_id FROM trials WHERE study_id = :sid"
    with storage.engine.begin() as conn:
        for table in ("trial_heartbeats", "trial_user_attributes", "trial_system_attributes", "trial_params",
                      "trial_values", "trial_intermediate_values"):
            conn.execute(sqlalchemy.text(f"DELETE FROM {table} WHERE trial_id IN ({sub})"), {"sid": sid})
        conn.execute(sqlalchemy.text("DELETE FROM trials WHERE study_id = :sid"), {"sid": sid})


def markdown(data: dict[str, Any]) -> str:
    table = [[r["clients"], f"{r['claims_per_s']:.0f}", r["transactions"], r["failed"],
              f"{r['claim_avg_ms']:.2f}" if r["claim_avg_ms"] is not None else "-",
              f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.0f}",
              f"{r['load_before']:.1f}-{r['load_after']:.1f}"] for r in data["rows"]]
    return (f"pgbench replaying `{data['function']}` + the trial's end through {data['target']}, study pre-filled "
            f"with {data['prefill']} COMPLETE trials ({data['trials_at_end']} at the end).\n\n"
            + common.markdown_table(["clients", "claims/s", "claims", "failed", "claim avg ms",
                                     "p50 ms (claim + end)", "p99 ms (claim + end)", "max ms", "load"], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claim_pgbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="64,256", help="comma-separated client counts")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--prefill", type=int, default=300, help="COMPLETE trials in the study before the run")
    parser.add_argument("--url", help="where pgbench connects (default: $HYPER_OPT_TEST_PGBOUNCER_URL)")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = run(clients=[int(c) for c in args.clients.split(",")], seconds=args.seconds, prefill=args.prefill,
               url=args.url)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
