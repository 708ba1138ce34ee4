"""Soak: 16 workers on a throwaway PostgreSQL for a set time, with faults (issue 21).

W worker processes (``python -m hyper_opt.run``, what every Slurm job runs) share one study on a
PostgreSQL of their own (initdb in a temporary folder: benchmarks/fleet.py's throwaway_postgres),
while the soak, at random times, SIGKILLs workers (each is replaced at once), restarts the server
(``pg_ctl restart -m fast``) and stalls it for 60 s (SIGSTOP of the postmaster and every backend,
then SIGCONT). Each trial reports every few milliseconds (``report`` then a 5-ms sleep) for a few
seconds. The budget (n_trials) is sized so that the study ends near the set time; the trials'
length is adjusted while it runs (a file the objective reads at each trial start), so that it
does whatever this machine's speed.

At the end it checks and prints: the exact budget (finished == n_trials), no trial failed while
its worker was alive (each trial records its worker's pid; the soak records when each worker
started and ended, and compares with the trial's end time), nothing RUNNING.

    python -m benchmarks.soak [--minutes 30] [--workers 16] [--stall 60]
    python -m benchmarks --full --only soak     # 30 minutes
    python -m benchmarks --only soak            # quick: 4 minutes, a 20-s stall
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common, fleet

OBJECTIVE = '''
import time
from pathlib import Path
from hyper_opt import BaseObjective

class Objective(BaseObjective):
    """Reports every few milliseconds for the seconds the soak asks for (its pace file)."""

    def train(self, trial, conf):
        seconds = float(Path(conf["pace_file"]).read_text())
        end, step = time.time() + seconds, 0
        while time.time() < end:
            self.report(trial, float(step), step)
            step += 1
            time.sleep(float(conf["every"]))
        return {"val_loss": trial.params["x"] ** 2, "steps": step}
'''
HEARTBEAT_S, GRACE_S = 5, 90  # grace outlasts the 60-s stall: a live trial must never look stale


@dataclass
class Life:
    """One worker process: when it started and ended (time.time()), and why it ended."""

    index: int
    proc: subprocess.Popen[bytes]
    started: float
    ended: float | None = None
    killed: bool = False


class Workers:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lives: list[Life] = []
        (folder / "logs").mkdir(exist_ok=True)

    def start(self) -> Life:
        index = len(self.lives)
        log = open(self.folder / "logs" / f"worker_{index}.log", "wb")  # noqa: SIM115 - the child keeps it
        env = {**os.environ, "PYTHONPATH": str(common.REPO), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml",
                                 "--worker-index", str(index)], cwd=self.folder, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        life = Life(index, proc, time.time())
        self.lives.append(life)
        return life

    def alive(self) -> list[Life]:
        for life in self.lives:
            if life.ended is None and life.proc.poll() is not None:
                life.ended = time.time()
        return [life for life in self.lives if life.ended is None]

    def kill(self, life: Life) -> None:
        life.killed = True
        life.proc.kill()
        life.proc.wait()
        life.ended = time.time()

    def stop_all(self) -> None:
        for life in self.alive():
            life.proc.terminate()
        for life in self.lives:
            with contextlib.suppress(subprocess.TimeoutExpired):
                life.proc.wait(timeout=60)
            if life.proc.poll() is None:
                self.kill(life)
        self.alive()


def _postmaster(server: fleet.Server) -> int:
    assert server.data_dir is not None
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def restart_server(server: fleet.Server) -> float:
    """pg_ctl restart -m fast: every connection drops; returns the seconds it took."""
    assert server.data_dir is not None
    started = time.monotonic()
    fleet.server_ctl(server.data_dir, "restart")
    return time.monotonic() - started


@contextlib.contextmanager
def stalled(server: fleet.Server) -> Any:
    """SIGSTOP the postmaster and every server process (connections stay open, nothing answers);
    SIGCONT on exit, whatever happens."""
    main = _postmaster(server)
    pids = [main, *_children(main)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def write_search(folder: Path, *, url: str, n_trials: int, every: float) -> None:
    (folder / "objective.py").write_text(OBJECTIVE)
    hyper = {"save_path": "results", "optuna": {
        "study_name": "soak", "storage": url, "objective": "objective.py", "metric": "val_loss",
        "direction": "minimize", "n_trials": n_trials, "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S,
        "db_retry_seconds": 600, "max_retry": 5, "sampler": {"type": "RandomSampler", "seed": 1},
        "parameters": {"model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}}}}}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    model = {"model": {"x": 0.0}, "every": every, "pace_file": str(folder / "pace")}
    (folder / "model.yml").write_text(yaml.safe_dump(model, sort_keys=False))


def schedule(duration: float, *, kills: int, stall_s: float, rng: random.Random) -> list[tuple[float, str]]:
    """When each fault happens (seconds from the start): the restart at 30 %, the stall at 50 %,
    the kills at random in 10-75 %, none within 15 s of the restart or the stall."""
    restart_at, stall_at = 0.3 * duration, 0.5 * duration
    events = [(restart_at, "restart"), (stall_at, "stall")]
    while len(events) < kills + 2:
        at = rng.uniform(0.1 * duration, 0.75 * duration)
        if abs(at - restart_at) > 15 and not (stall_at - 15 < at < stall_at + stall_s + 15):
            events.append((at, "kill"))
    return sorted(events)


def _counts(url: str) -> dict[str, int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return {str(state).split(".")[-1]: int(n) for state, n in conn.execute(sqlalchemy.text(
                "SELECT state, COUNT(*) FROM trials GROUP BY state"))}
    finally:
        engine.dispose()


class Pace:
    """The trials' length, adjusted every 30 s so that the budget ends near the set time."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.history: list[tuple[float, int]] = []  # (time from start, finished)
        self.write()

    def write(self) -> None:
        part = self.path.with_suffix(".part")  # atomic: a trial starting now must never read half a file
        part.write_text(f"{self.seconds:.2f}\n")
        os.replace(part, self.path)

    def adjust(self, now: float, finished: int, n_trials: int, duration: float) -> None:
        self.history.append((now, finished))
        past = [(t, f) for t, f in self.history if now - t <= 180]
        if len(past) < 2 or past[-1][1] == past[0][1] or now > duration * 0.9:
            return
        rate = (past[-1][1] - past[0][1]) / (past[-1][0] - past[0][0])
        projected = (n_trials - finished) / rate
        factor = (duration - now) / max(projected, 1.0)
        self.seconds = min(60.0, max(1.0, self.seconds * min(1.5, max(0.67, factor)) ** 0.5))
        self.write()


def soak(*, minutes: float, workers: int, stall_s: float, seed: int = 21, every: float = 0.005,
         log: Any = sys.stderr) -> dict[str, Any]:
    duration = minutes * 60
    rng = random.Random(seed)
    kills = max(2, int(minutes / 3))
    trial_s = 8.0
    # trials finished per second at about trial_s + 4 s each (claim, start-up, the load of 2 cores),
    # less the stall and what kills cost (a copy after GRACE_S)
    n_trials = max(workers, int(workers * (duration - stall_s - kills * GRACE_S / workers) / (trial_s + 4) * 0.8))
    with fleet.throwaway_postgres(max_connections=100) as server, \
            tempfile.TemporaryDirectory(prefix="hyper_opt-soak-") as tmp:
        folder = Path(tmp)
        write_search(folder, url=server.url, n_trials=n_trials, every=every)
        pace = Pace(folder / "pace", trial_s)
        team = Workers(folder)
        events = schedule(duration, kills=kills, stall_s=stall_s, rng=rng)
        done_events: list[dict[str, Any]] = []
        print(f"soak: {workers} workers, n_trials {n_trials}, {minutes:g} min, events "
              f"{[(round(a), k) for a, k in events]}", file=log, flush=True)
        started = time.time()
        for _ in range(workers):
            team.start()
        last_pace = 0.0
        hard_limit = duration * 1.25 + 120
        while team.alive():
            now = time.time() - started
            if now > hard_limit:
                print("soak: over time: stopping the workers", file=log, flush=True)
                team.stop_all()
                break
            while events and events[0][0] <= now:
                at, kind = events.pop(0)
                done_events.append(_fire(kind, server, team, rng, stall_s=stall_s, at=now, log=log))
            if now - last_pace >= 30:
                last_pace = now
                with contextlib.suppress(Exception):  # the server may be restarting
                    c = _counts(server.direct_url)
                    pace.adjust(now, c.get("COMPLETE", 0) + c.get("PRUNED", 0), n_trials, duration)
                    print(f"soak: {now:5.0f} s {c} trial length {pace.seconds:.1f} s, "
                          f"{len(team.alive())} workers", file=log, flush=True)
            time.sleep(0.5)
        wall = time.time() - started
        return _check(server, team, folder, n_trials=n_trials, wall=wall, events=done_events,
                      config={"workers": workers, "minutes": minutes, "stall_s": stall_s, "every_s": every,
                              "heartbeat_s": HEARTBEAT_S, "grace_s": GRACE_S, "kills": kills, "seed": seed})


def _fire(kind: str, server: fleet.Server, team: Workers, rng: random.Random, *, stall_s: float, at: float,
          log: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"at_s": round(at, 1), "kind": kind}
    if kind == "kill":
        alive = team.alive()
        if alive:
            victim = rng.choice(alive)
            team.kill(victim)
            event["pid"] = victim.proc.pid
            event["replaced_by"] = team.start().proc.pid
    elif kind == "restart":
        event["seconds"] = round(restart_server(server), 1)
    elif kind == "stall":
        with stalled(server) as pids:
            event["processes"] = len(pids)
            end = time.monotonic() + stall_s
            while time.monotonic() < end:
                team.alive()  # keep the workers' end times exact meanwhile
                time.sleep(0.5)
        event["seconds"] = stall_s
    print(f"soak: {event}", file=log, flush=True)
    return event


def _check(server: fleet.Server, team: Workers, folder: Path, *, n_trials: int, wall: float,
           events: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    import optuna
    import sqlalchemy

    TS = optuna.trial.TrialState
    trials = optuna.load_study(study_name="soak", storage=server.direct_url).trials
    lives = {life.proc.pid: life for life in team.lives}
    violations = []
    for t in trials:
        if t.state != TS.FAIL:
            continue
        life = lives.get(int(t.user_attrs.get("worker_pid", -1)))
        failed_at = t.datetime_complete.timestamp() if t.datetime_complete else None
        if life is None or failed_at is None:
            violations.append({"trial": t.number, "why": "no worker or no end time"})
        elif life.ended is None or failed_at < life.ended - 1.0:
            violations.append({"trial": t.number, "worker_pid": life.proc.pid, "killed": life.killed,
                               "error": str(t.user_attrs.get("error", ""))[-300:]})
    engine = sqlalchemy.create_engine(server.direct_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        reports = int(conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM trial_intermediate_values")).scalar() or 0)
    engine.dispose()
    logs = "".join(p.read_text(errors="replace") for p in (folder / "logs").glob("*.log"))
    finished = sum(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials)
    trained = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                  if t.state == TS.COMPLETE and t.datetime_start and t.datetime_complete)
    unexpected = sorted({life.proc.returncode for life in team.lives if not life.killed and life.proc.returncode})
    return {
        "config": config, "n_trials": n_trials, "wall_s": round(wall, 1), "events": events,
        "finished": finished, "exact_budget": finished == n_trials,
        "running": sum(t.state == TS.RUNNING for t in trials), "waiting": sum(t.state == TS.WAITING for t in trials),
        "failed": sum(t.state == TS.FAIL for t in trials), "failed_while_alive": violations,
        "copies": sum("failed_trial" in t.system_attrs for t in trials),
        "workers_started": len(team.lives), "workers_killed": sum(life.killed for life in team.lives),
        "unexpected_worker_exits": unexpected, "reports": reports,
        "reports_per_trial_s": round(reports / trained, 1) if trained else None,
        "retried_storage_calls": logs.count("database unreachable"), "failed_beats": logs.count("heartbeat failed"),
        "ok": finished == n_trials and not violations and not unexpected
        and not any(t.state == TS.RUNNING for t in trials),
    }


def run(*, quick: bool) -> dict[str, Any]:
    """For ``python -m benchmarks``: 4 minutes with a 20-s stall (quick), 30 minutes with 60 s (full)."""
    return soak(minutes=4 if quick else 30, workers=16, stall_s=20 if quick else 60)


def markdown(data: dict[str, Any]) -> str:
    c = data["config"]
    kills = [e for e in data["events"] if e["kind"] == "kill"]
    restart = next((e for e in data["events"] if e["kind"] == "restart"), {})
    stall = next((e for e in data["events"] if e["kind"] == "stall"), {})
    rows = [
        ("workers", f"{c['workers']} at a time ({data['workers_started']} started, {data['workers_killed']} "
                    f"SIGKILLed at random and replaced)"),
        ("time", f"{data['wall_s'] / 60:.1f} min (set: {c['minutes']:g} min)"),
        ("server faults", f"restart at {restart.get('at_s', '-')} s ({restart.get('seconds', '-')} s); "
                          f"stall of {stall.get('seconds', '-')} s at {stall.get('at_s', '-')} s "
                          f"({stall.get('processes', '-')} server processes stopped)"),
        ("kills at (s)", ", ".join(str(e["at_s"]) for e in kills) or "-"),
        ("trials", f"{data['finished']} finished of n_trials {data['n_trials']} "
                   f"({'exact' if data['exact_budget'] else 'NOT exact'}); {data['failed']} FAIL, "
                   f"{data['copies']} re-queued copies"),
        ("reports", f"{data['reports']} intermediate values, {data['reports_per_trial_s']} per trial-second "
                    f"(a report every {c['every_s'] * 1000:g} ms of sleep)"),
        ("heartbeat", f"{c['heartbeat_s']} s, grace {c['grace_s']} s"),
        ("retried storage calls / failed beats", f"{data['retried_storage_calls']} / {data['failed_beats']}"),
        ("FAIL while its worker was alive", str(len(data["failed_while_alive"]))),
        ("RUNNING at the end", str(data["running"])),
        ("unexpected worker exits", str(data["unexpected_worker_exits"] or "none")),
        ("verdict", "ok" if data["ok"] else "VIOLATED"),
    ]
    return "| what | figure |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the soak runs (default 30)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--stall", type=float, default=60.0, help="seconds the server is stopped (default 60)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    data = soak(minutes=args.minutes, workers=args.workers, stall_s=args.stall, seed=args.seed)
    data.update(date=dt.datetime.now().isoformat(timespec="minutes"), code=common.code_version(),
                command="python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    print(markdown(data))
    if data["failed_while_alive"]:
        print("\nFAIL while the worker was alive:", json.dumps(data["failed_while_alive"], indent=2))
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
