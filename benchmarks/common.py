"""What every benchmark shares: the database, the machine's load, worker processes, timing analysis.

Benchmarks run against the PostgreSQL of ``scripts/local_cluster.sh`` (``HYPER_OPT_TEST_PG_URL``
and ``PGPASSWORD``; read from ``scripts/local_cluster.sh env`` when unset). Every run uses a fresh
study name and deletes its study afterwards.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
WORKLOADS = BENCH / "workloads"
OUT = BENCH / "out"
ECHO_VENV = BENCH / ".venv-echo"
ECHO_VERSION = "1.3.1"


# --------------------------------------------------------------------------- environment


def ensure_pg_env() -> str:
    """The PostgreSQL URL (exports PGPASSWORD too), from the environment or local_cluster.sh."""
    url = os.environ.get("HYPER_OPT_TEST_PG_URL")
    if not url:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "local_cluster.sh"), "env"],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export "):].partition("=")
                os.environ.setdefault(key.strip(), value.strip().strip("'\""))
        url = os.environ.get("HYPER_OPT_TEST_PG_URL")
    if not url:
        raise SystemExit("PostgreSQL is not configured: run 'bash scripts/local_cluster.sh up' and "
                         "'eval \"$(bash scripts/local_cluster.sh env)\"' first")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # noqa: BLE001
        raise SystemExit(f"PostgreSQL at {url} does not answer ({err}); run "
                         "'bash scripts/local_cluster.sh up'") from None
    return url


def echo_python() -> Path | None:
    """The echo-opt virtual environment's python, or None when it is not installed."""
    python = ECHO_VENV / "bin" / "python"
    return python if (ECHO_VENV / "bin" / "echo-run").exists() else None


def install_echo() -> Path:
    """Create benchmarks/.venv-echo with echo-opt 1.3.1 and optuna 5 (PyPI; about 2 minutes)."""
    if echo_python() is None:
        print(f"installing echo-opt {ECHO_VERSION} into {ECHO_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ECHO_VENV)], check=True)
        subprocess.run([str(ECHO_VENV / "bin" / "pip"), "install", "-q", f"echo-opt=={ECHO_VERSION}",
                        "optuna==5.0.0", "psycopg2-binary"], check=True)
    python = echo_python()
    assert python is not None
    return python


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    import optuna

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "optuna": optuna.__version__, "platform": platform.platform()}


def code_version() -> str:
    """The commit of the hyper_opt being measured ("+ local changes" when hyper_opt/ differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hyper_opt"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" + local changes" if dirty else "")


def wait_for_quiet(max_load: float, *, timeout_s: float, poll_s: float = 10.0) -> float:
    """Wait (up to ``timeout_s``) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = os.getloadavg()[0]
        if load < max_load or time.monotonic() > deadline:
            return load
        print(f"  load {load:.2f} >= {max_load}: waiting ...", file=sys.stderr)
        time.sleep(poll_s)


def new_study_name(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:10]}"


def delete_study(url: str, name: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass
    except Exception as err:  # noqa: BLE001 - the database went away: try once more when it is back
        if wait_for_db(url, timeout_s=120):
            try:
                optuna.delete_study(study_name=name, storage=url)
                return
            except KeyError:
                return
            except Exception:  # noqa: BLE001
                pass
        print(f"  could not delete study {name!r}: {err}", file=sys.stderr)


@contextmanager
def scratch(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"hyper_opt-bench-{prefix}-"))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- searches on disk

PARAMETERS = {
    "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
    "model:y": {"type": "int", "settings": {"name": "y", "low": 0, "high": 10}},
}


def write_hyper_opt_search(folder: Path, *, url: str, study: str, n_trials: int, sleep: float,
                           timing_dir: Path, sampler: str = "TPESampler", seed: int = 1,
                           heartbeat: bool = True, extra: Mapping[str, Any] | None = None,
                           optuna_extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """hyper.yml (echo-opt format) and model.yml for hyper_opt's benchmark objective."""
    folder.mkdir(parents=True, exist_ok=True)
    opt: dict[str, Any] = {
        "study_name": study, "storage": url, "reload": 1,
        "objective": str(WORKLOADS / "hyper_objective.py"),
        "metric": "val_loss", "direction": "minimize", "n_trials": n_trials,
        "sampler": {"type": sampler, "seed": seed}, "parameters": PARAMETERS,
    }
    if not heartbeat:
        opt["heartbeat_interval"] = None
    opt.update(optuna_extra or {})
    hyper = {"save_path": str(folder / "results"), **(extra or {}), "optuna": opt}
    model = {"model": {"x": 0.0, "y": 0}, "bench": {"sleep": sleep, "timing_dir": str(timing_dir)}}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder / "hyper.yml", folder / "model.yml"


def write_echo_search(folder: Path, *, url: str, study: str, n_trials: int, sleep: float,
                      timing_dir: Path, sampler: str = "TPESampler", seed: int = 1) -> tuple[Path, Path]:
    """hyper.yml and model.yml as echo-opt 1.3.1 reads them (storage_type maria: a database URL)."""
    folder.mkdir(parents=True, exist_ok=True)
    hyper = {
        "save_path": str(folder / "results"),
        "optuna": {
            "study_name": study, "storage": url, "storage_type": "maria",
            "objective": str(WORKLOADS / "echo_objective.py"),
            "metric": "val_loss", "direction": "minimize", "n_trials": n_trials, "gpu": False,
            "sampler": {"type": sampler, "seed": seed}, "parameters": PARAMETERS,
        },
    }
    model = {"model": {"x": 0.0, "y": 0}, "bench": {"sleep": sleep, "timing_dir": str(timing_dir)}}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder / "hyper.yml", folder / "model.yml"


# --------------------------------------------------------------------------- processes


@dataclass
class Launch:
    """W worker processes started together: when, how long, and how they ended."""

    t0: float
    t_end: float
    returncodes: list[int]
    logs: list[Path]

    @property
    def wall_s(self) -> float:
        return self.t_end - self.t0


def run_processes(commands: Sequence[Sequence[str]], *, cwd: Path, log_dir: Path,
                  env: Mapping[str, str] | None = None, timeout_s: float = 900) -> Launch:
    """Start every command at once and wait for all of them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    procs, logs, handles = [], [], []
    t0 = time.time()
    for i, cmd in enumerate(commands):
        log = log_dir / f"worker_{i}.log"
        fh = open(log, "wb")  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(list(cmd), cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=full_env))
        logs.append(log)
        handles.append(fh)
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    t_end = time.time()
    for fh in handles:
        fh.close()
    return Launch(t0=t0, t_end=t_end, returncodes=[p.returncode for p in procs], logs=logs)


def raise_if_failed(launch: Launch, what: str) -> None:
    """RunFailed with the first failed worker's log tail, if any worker exited non-zero."""
    bad = [(i, rc) for i, rc in enumerate(launch.returncodes) if rc != 0]
    if bad:
        i, rc = bad[0]
        raise RunFailed(f"{what}: worker {i} exited {rc}:\n{tail(launch.logs[i])}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- timing analysis


def read_spans(timing_dir: Path) -> list[list[tuple[float, float]]]:
    """The train spans of each process (one list per process), from _timing.py's files."""
    result = []
    for path in sorted(timing_dir.glob("*.json")):
        data = json.loads(path.read_text())
        result.append([(float(a), float(b)) for a, b in data["spans"]])
    return result


@dataclass
class Timing:
    """Per-trial figures of one run of W workers.

    ``overhead_median_s`` is the steady-state cost: in each worker, the time between the end of
    one ``train`` and the start of the next (record the result, claim and sample the next trial),
    median over all such gaps. ``overhead_all_in_s`` spreads everything else over the trials:
    (W x wall - time in train) / finished trials, so process start-up and the last worker's
    wait are in it too. ``startup_s`` is the median time from launching a worker to its first
    ``train``.
    """

    trials_timed: int
    train_s: float
    overhead_median_s: float | None
    overhead_p90_s: float | None
    overhead_all_in_s: float | None
    startup_s: float | None
    gaps: list[float] = field(default_factory=list, repr=False)


def analyse(spans: Sequence[Sequence[tuple[float, float]]], *, t0: float, wall_s: float,
            workers: int, finished: int) -> Timing:
    gaps: list[float] = []
    firsts: list[float] = []
    train = 0.0
    n = 0
    for proc in spans:
        proc = sorted(proc)
        if proc:
            firsts.append(proc[0][0] - t0)
        for (s1, e1), (s2, _) in zip(proc, proc[1:]):
            gaps.append(s2 - e1)
        for s, e in proc:
            train += e - s
            n += 1
    gaps.sort()
    return Timing(
        trials_timed=n,
        train_s=train,
        overhead_median_s=statistics.median(gaps) if gaps else None,
        overhead_p90_s=gaps[min(len(gaps) - 1, int(0.9 * len(gaps)))] if gaps else None,
        overhead_all_in_s=(workers * wall_s - train) / finished if finished else None,
        startup_s=statistics.median(firsts) if firsts else None,
        gaps=gaps,
    )


def study_counts(url: str, name: str) -> dict[str, int]:
    """Trials by state name; one GROUP BY query (loading 10,000 trials through optuna takes seconds)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name GROUP BY t.state"), {"name": name}).all()
    finally:
        engine.dispose()
    return {str(getattr(state, "name", state)).split(".")[-1]: int(n) for state, n in rows}


# --------------------------------------------------------------------------- results files


def save_result(section: str, data: Mapping[str, Any], *, mode: str) -> Path:
    """benchmarks/out/<mode>/<section>.json (mode: quick or full)."""
    path = OUT / mode / f"{section}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)
    return path


def load_result(section: str, *, mode: str) -> dict[str, Any] | None:
    path = OUT / mode / f"{section}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def fmt_s(value: float | None, *, ms: bool = False, digits: int = 1) -> str:
    if value is None:
        return "-"
    if ms:
        return f"{value * 1000:.{digits}f}"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def section_header(data: Mapping[str, Any]) -> str:
    """The line under each section's table: command, when, load."""
    load = data.get("load", {})
    return (f"Command: `{data.get('command', '?')}`; hyper_opt at {data.get('code', '?')}; run "
            f"{data.get('date', '?')}; load average "
            f"{load.get('before', '?')} before, {load.get('after', '?')} after "
            f"({data.get('machine', {}).get('cpus', '?')} cores).")


# --------------------------------------------------------------------------- a shared database


def wait_for_db(url: str, *, timeout_s: float = 180.0) -> bool:
    """Wait until PostgreSQL answers (other people restart the shared server now and then)."""
    import sqlalchemy

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            engine.dispose()
            return True
        except Exception:  # noqa: BLE001
            time.sleep(2.0)
    return False


class RunFailed(RuntimeError):
    """A benchmark run that did not finish cleanly (a worker failed, or the database went away)."""


def retrying(fn: Any, *, url: str, what: str, attempts: int = 3) -> Any:
    """Call ``fn()``; when it fails (typically the shared database was restarted under it), wait
    for the database and run it again, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001
            if attempt == attempts:
                raise
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            print(f"  {what}: {type(err).__name__}: {first}; retrying ({attempt}/{attempts - 1})", file=sys.stderr)
            wait_for_db(url)
            time.sleep(3.0)
    raise AssertionError("unreachable")
