"""The whole failpoint matrix: every point x every fault, 2 local workers, 4 trials; prints the
table of docs/failures.md (each row measured) for one storage. The CI subset is
tests/test_failpoints.py. ``failed`` (the trial failed behind the worker's back) applies only
where the worker has a trial (hyper_opt.failpoints.FAILED_POINTS).

    nice -n 10 python benchmarks/failpoints.py [--storage sqlite|postgres|journal] [--points P,...] [--actions A,...]

postgres needs HYPER_OPT_TEST_PG_URL (scripts/local_cluster.sh env).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyper_opt.failpoints import ACTIONS, POINTS  # noqa: E402
from tests.test_failpoints import JOURNAL, N_TRIALS, SURVIVED, applies, run_case  # noqa: E402


def verdict(o: dict) -> str:
    ok = o["fired"] and o["finished"] == N_TRIALS and o["running"] == 0 and not o["missing_csv"]
    if (o["point"], o["action"]) in SURVIVED and o["exits"]:
        ok = False  # a worker died of a fault it must survive
    return "ok" if ok else "VIOLATED"


def describe(o: dict) -> str:
    parts = []
    if o["retried_db"]:
        parts.append("storage call retried")
    if o["refused"]:
        parts.append("worker stopped: storage refused (disk full)")
    if o["failed"]:
        parts.append(f"{o['failed']} FAIL, {o['retries']} re-queued")
    if o["unrecorded"]:
        parts.append(f"result kept in unrecorded/ {o['unrecorded']}")
    if o["exits"]:
        parts.append(f"worker exit {', '.join(map(str, o['exits']))}")
    if o["reloaded"]:
        parts.append("the copy ran in the next `optimize --reload`")
    return "; ".join(parts) or "no visible effect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", choices=("sqlite", "postgres", JOURNAL), default="sqlite")
    parser.add_argument("--points", default=",".join(POINTS))
    parser.add_argument("--actions", default=",".join(ACTIONS))
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a case may take before it counts as a hang (a loaded machine is slow)")
    args = parser.parse_args()
    url = {"postgres": os.environ.get("HYPER_OPT_TEST_PG_URL"), JOURNAL: JOURNAL}.get(args.storage)
    if args.storage == "postgres" and not url:
        parser.error("--storage postgres needs HYPER_OPT_TEST_PG_URL (eval \"$(bash scripts/local_cluster.sh env)\")")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"| point | fault | {args.storage}: finished / RUNNING / missing CSV | what happened | seconds | invariants |")
    print("| --- | --- | --- | --- | --- | --- |")
    for point in args.points.split(","):
        for action in args.actions.split(","):
            if not applies(point, action):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    o = run_case(Path(tmp) / "s", point, action, storage=url, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"| `{point}` | {action} | - | optimize did not end in {args.timeout:.0f} s | - | VIOLATED |", flush=True)
                    continue
            print(f"| `{point}` | {action} | {o['finished']}/{N_TRIALS} / {o['running']} / "
                  f"{len(o['missing_csv'])} | {describe(o)} | {o['seconds']} | {verdict(o)} |", flush=True)
    heartbeat = "no heartbeat" if args.storage == JOURNAL else "heartbeat 1 s, grace 4 s"
    print(f"\nmeasured on hyper_opt {commit}, {args.storage}, 2 local workers, n_trials {N_TRIALS}, {heartbeat}")


if __name__ == "__main__":
    main()
