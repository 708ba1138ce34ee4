"""The whole failpoint matrix: every point x every fault, 2 local workers, 4 trials; prints the
table of docs/failures.md (each row measured). The CI subset is tests/test_failpoints.py.

    nice -n 10 python benchmarks/failpoints.py [--storage sqlite|postgres] [--points P,...] [--actions A,...]
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
from tests.test_failpoints import N_TRIALS, run_case  # noqa: E402


def verdict(o: dict) -> str:
    ok = o["fired"] and o["finished"] == N_TRIALS and o["running"] == 0 and not o["missing_csv"]
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
    if o["rc"]:
        parts.append(f"optimize exit {o['rc']}")
    return "; ".join(parts) or "no visible effect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--points", default=",".join(POINTS))
    parser.add_argument("--actions", default=",".join(ACTIONS))
    args = parser.parse_args()
    url = os.environ["HYPER_OPT_TEST_PG_URL"] if args.storage == "postgres" else None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"| point | fault | {args.storage}: finished / RUNNING / missing CSV | what happened | seconds | invariants |")
    print("| --- | --- | --- | --- | --- | --- |")
    for point in args.points.split(","):
        for action in args.actions.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    o = run_case(Path(tmp) / "s", point, action, storage=url)
                except subprocess.TimeoutExpired:
                    print(f"| `{point}` | {action} | - | optimize did not end in 150 s | - | VIOLATED |", flush=True)
                    continue
            print(f"| `{point}` | {action} | {o['finished']}/{N_TRIALS} / {o['running']} / "
                  f"{len(o['missing_csv'])} | {describe(o)} | {o['seconds']} | {verdict(o)} |", flush=True)
    print(f"\nmeasured on hyper_opt {commit}, {args.storage}, 2 local workers, n_trials {N_TRIALS}, "
          "heartbeat 1 s, grace 4 s")


if __name__ == "__main__":
    main()
