"""Benchmark: many worker processes on one study (W=32 here), plain optuna beside hyper_opt.

W worker processes start at once on a fresh PostgreSQL study with a budget of N finished trials;
each trial sleeps ``sleep`` seconds (RandomSampler, so the sampler costs nothing). Per system:

* finished trials against N (plain optuna's ``MaxTrialsCallback`` counts per process, so it
  overshoots; hyper_opt's budget lock keeps the count exact);
* busy share: time in trials / time from each worker's first trial start to its last trial end,
  summed over workers (start-up left out: it is the same Python import for both);
* all-in share: time in trials / (W x wall time), start-up and the last wait included;
* the median and 90th percentile of the gap between one trial's end and the next one's start;
* peak database connections: the TCP connections to PostgreSQL's port held by the workers'
  processes (found by their command line, so that other users of a shared server are not
  counted), polled every 0.1 s from /proc while the workers run.

Processes, not threads: this is what a Slurm allocation of W single-GPU workers runs. Past what one
machine can start, see benchmarks/fleet.py (virtual workers).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import common, overhead

SYSTEMS = ("optuna", "hyper_opt")


def _pg_port(url: str) -> int:
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).port or 5432


def _tcp_inodes_to(port: int) -> set[str]:
    """Socket inodes of established TCP connections to ``port`` (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def count_connections(marker: str, port: int) -> int:
    """Database connections held by the processes whose command line contains ``marker`` (the
    benchmark's own workers: other users of a shared database are not counted)."""
    import os

    targets = _tcp_inodes_to(port)
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() not in fh.read():
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in targets:
                    n += 1
        except OSError:  # the process ended meanwhile
            continue
    return n


class ConnectionPoller:
    """Counts the database connections of the processes whose command line holds ``marker``,
    every ``interval`` seconds in a thread, from the client side (/proc); keeps the peak."""

    def __init__(self, url: str, marker: str, *, interval: float = 0.1) -> None:
        self._port = _pg_port(url)
        self._marker = marker
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, count_connections(self._marker, self._port))
            self._stop.wait(self._interval)

    def __enter__(self) -> ConnectionPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def busy_share(spans: Sequence[Sequence[tuple[float, float]]]) -> float | None:
    """Time in trials over each worker's span from its first trial start to its last trial end."""
    train = window = 0.0
    for proc in spans:
        if not proc:
            continue
        train += sum(e - s for s, e in proc)
        window += max(e for _, e in proc) - min(s for s, _ in proc)
    return train / window if window else None


def run_system(system: str, *, url: str, workers: int, n: int, sleep: float) -> dict[str, Any]:
    import optuna

    study = common.new_study_name("many" + "".join(c for c in system if c.isalnum()))
    optuna.create_study(study_name=study, storage=url, direction="minimize")
    try:
        with common.scratch(f"many-{system}") as folder:
            timing_dir = folder / "timing"
            cmds = overhead.worker_commands(system, url=url, study=study, n=n, sleep=sleep, workers=workers,
                                            folder=folder / "search", timing_dir=timing_dir,
                                            sampler="RandomSampler")
            load_before = common.load_average()[0]
            with ConnectionPoller(url, marker=str(folder)) as poller:
                launch = common.run_processes(cmds, cwd=folder, log_dir=folder / "logs")
            counts = common.study_counts(url, study)
            common.raise_if_failed(launch, system)
            spans = common.read_spans(timing_dir)
            finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
            timing = common.analyse(spans, t0=launch.t0, wall_s=launch.wall_s, workers=workers, finished=finished)
            gaps = timing.gaps
            return {
                "system": system, "workers": workers, "n_target": n, "sleep": sleep,
                "finished": finished, "running_left": counts.get("RUNNING", 0), "counts": counts,
                "wall_s": launch.wall_s, "busy_share": busy_share(spans),
                "all_in_share": timing.train_s / (workers * launch.wall_s) if launch.wall_s else None,
                "gap_median_s": statistics.median(gaps) if gaps else None,
                "gap_p90_s": timing.overhead_p90_s, "startup_s": timing.startup_s,
                "peak_connections": poller.peak,
                "connections_per_worker": poller.peak / workers if workers else None,
                "load_before": load_before,
            }
    finally:
        common.delete_study(url, study)


def run(*, quick: bool, workers: int = 32, sleep: float = 3.0, per_worker: int | None = None) -> dict[str, Any]:
    url = common.ensure_pg_env()
    per_worker = per_worker or (3 if quick else 5)
    n = workers * per_worker
    runs = []
    load_start = common.load_average()
    for rep in range(1 if quick else 2):
        for system in SYSTEMS:
            t = time.monotonic()
            r = common.retrying(lambda: run_system(system, url=url, workers=workers, n=n, sleep=sleep),
                                url=url, what=f"{system} W={workers}")
            r["repeat"] = rep
            runs.append(r)
            print(f"  W={workers} {system:<10} {r['finished']}/{n} finished, busy {r['busy_share']:.1%}, "
                  f"all-in {r['all_in_share']:.1%}, gap p90 {common.fmt_s(r['gap_p90_s'], digits=2)} s, "
                  f"peak connections {r['peak_connections']} ({r['connections_per_worker']:.2f}/worker), "
                  f"load {r['load_before']:.2f} ({time.monotonic() - t:.0f} s)", file=sys.stderr)
    return {"runs": runs, "workers": workers, "sleep": sleep, "n_target": n,
            "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    rows = []
    for r in data["runs"]:
        rows.append([
            r["system"], r["workers"], f"{r['sleep']:g} s", f"{r['finished']}/{r['n_target']}",
            r.get("running_left", 0), f"{r['busy_share']:.1%}" if r["busy_share"] is not None else "-",
            f"{r['all_in_share']:.1%}" if r["all_in_share"] is not None else "-",
            common.fmt_s(r["gap_median_s"], digits=2), common.fmt_s(r["gap_p90_s"], digits=2),
            r["peak_connections"], f"{r['connections_per_worker']:.2f}", f"{r['load_before']:.2f}",
        ])
    header = ["system", "W", "trial", "finished/N", "RUNNING left", "busy share", "all-in share",
              "gap median s", "gap p90 s", "peak connections", "per worker", "load before"]
    return common.markdown_table(header, rows)
