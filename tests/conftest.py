"""Shared fixtures: a search written to a temporary folder, and the real local services.

Cluster and database tests use the real Slurm and PostgreSQL started by
``scripts/local_cluster.sh up`` (``.ci/run`` starts them). Outside CI a missing service skips
those tests; in CI (``CI=true``), or when ``scripts/test.sh`` started the services
(``HYPER_OPT_REQUIRE_SERVICES=1``), it fails them, so that they are never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import submitit  # noqa: F401 - see below
import yaml

# submitit configures logging when it is first imported (logging.config.dictConfig), and that closes
# every logging handler that exists then. absl's handler (keras imports absl) closes its stream on
# close unless that stream is the current sys.stderr/stdout. So a first import of submitit inside a
# capsys test, after keras, closed pytest's own capture file, and every later test of that xdist
# worker failed with "I/O operation on closed file". Imported above, before any test, submitit
# configures logging once, while no such handler exists.

REPO = Path(__file__).resolve().parents[1]
# In CI, or when scripts/test.sh started the services itself, a missing service fails its tests.
IN_CI = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("CI", "HYPER_OPT_REQUIRE_SERVICES"))

# An objective that finishes at once: f(x) = (x - 2)^2, with a reported curve for pruners.
FAST_OBJECTIVE = textwrap.dedent('''
    import os, time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def __init__(self, config, metric="val_loss", device="cpu"):
            BaseObjective.__init__(self, config, metric, device)

        def train(self, trial, conf):
            meet = conf.get("meet")  # {"dir", "workers"}: each worker's first trial waits for the others' first
            if meet and not getattr(self, "_met", False):
                self._met = True
                os.makedirs(meet["dir"], exist_ok=True)
                open(os.path.join(meet["dir"], str(os.getpid())), "w").close()
                deadline = time.time() + 120
                while len(os.listdir(meet["dir"])) < int(meet["workers"]) and time.time() < deadline:
                    time.sleep(0.02)
            x = conf["model"]["x"]
            sleep = float(conf.get("sleep", 0.0))
            for step in range(int(conf.get("steps", 3))):
                if sleep:
                    time.sleep(sleep)
                self.report(trial, (x - 2) ** 2 + 1.0 / (step + 1), step)
            return {"val_loss": (x - 2) ** 2, "loss": abs(x), "device": self.device}
''')


@dataclass
class Search:
    """A search on disk: the two YAML files and the objective beside them."""

    folder: Path
    hyper: Path
    model: Path

    @property
    def save_path(self) -> Path:
        return self.folder / "results"

    def hyper_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.hyper.read_text())

    def rewrite_hyper(self, change: Callable[[dict[str, Any]], None]) -> None:
        data = self.hyper_config()
        change(data)
        self.hyper.write_text(yaml.safe_dump(data, sort_keys=False))

    def cli(self, *args: str, timeout: float = 600, check: bool = False,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python -m hyper_opt ARGS`` in the search folder (a real process)."""
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "hyper_opt", *args], cwd=self.folder, text=True,
                              capture_output=True, timeout=timeout, env=full_env)
        if check and proc.returncode != 0:
            raise AssertionError(f"hyper-opt {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


def write_search(folder: Path, *, optuna: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None, model: Mapping[str, Any] | None = None,
                 objective: str = FAST_OBJECTIVE) -> Search:
    """Write a small search: hyper.yml (echo-opt format), model.yml and objective.py."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "objective.py").write_text(objective)
    opt: dict[str, Any] = {
        "study_name": f"test-{uuid.uuid4().hex[:8]}",
        "objective": "objective.py",
        "metric": "val_loss",
        "direction": "minimize",
        "n_trials": 10,
        "heartbeat_interval": 2,
        "grace_period": 6,
        "sampler": {"type": "RandomSampler", "seed": 1},
        "parameters": {
            "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
        },
    }
    opt.update(optuna or {})
    hyper: dict[str, Any] = {"save_path": "results", **(extra or {}), "optuna": opt}
    (folder / "hyper.yml").write_text(yaml.safe_dump(hyper, sort_keys=False))
    (folder / "model.yml").write_text(yaml.safe_dump(dict(model or {"model": {"x": 0.0}}), sort_keys=False))
    return Search(folder=folder, hyper=folder / "hyper.yml", model=folder / "model.yml")


@pytest.fixture
def search(tmp_path: Path) -> Search:
    return write_search(tmp_path / "search")


# ---------------------------------------------------------------------------------------- tiers
# A test's tier follows from what it uses (README, "Development"): asking for one of these fixtures marks
# it with the service's marker, and any of those markers adds ``services``. The fast tier is
# ``-m "not services and not slow"``. A test that reaches a service some other way (a parameter
# that calls request.getfixturevalue) marks that parameter; one that does not is failed by the
# fixture (``_check_marked``), so no test lands in the fast tier by mistake.
SERVICE_FIXTURES = {"pg_url": "postgres", "pgbouncer_url": "postgres", "private_pg": "postgres",
                    "slurm_cluster": "slurm", "pbs_cluster": "pbs"}
SERVICE_MARKERS = ("postgres", "slurm", "pbs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            marker = SERVICE_FIXTURES.get(name)
            if marker is not None and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        if any(item.get_closest_marker(m) is not None for m in SERVICE_MARKERS):
            item.add_marker("services")


def _check_marked(request: pytest.FixtureRequest, fixture: str) -> None:
    marker = SERVICE_FIXTURES[fixture]
    if request.node.get_closest_marker(marker) is None:
        pytest.fail(f"{request.node.nodeid} uses the fixture {fixture!r} without the marker {marker!r}: mark "
                    f"the test (or the parameter that asks for it) @pytest.mark.{marker}, so that the fast tier "
                    "leaves it out", pytrace=False)


def _marked_service(request: pytest.FixtureRequest, fixture: str, session_fixture: str) -> Any:
    """The value of ``session_fixture`` (the service, looked for once per session), once the test
    asking for ``fixture`` is checked to carry its marker: checked first, so that an unmarked test
    fails the same way whether or not the service runs."""
    _check_marked(request, fixture)
    return request.getfixturevalue(session_fixture)


CPU_SLOTS = int(os.environ.get("HYPER_OPT_TEST_CPU_SLOTS") or os.cpu_count() or 1)


@pytest.fixture(autouse=True)
def cpu_slot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For a test marked ``cpu``, one of ``HYPER_OPT_TEST_CPU_SLOTS`` (default: the CPU count)
    slots, held for the test: under pytest-xdist at most that many CPU-bound tests run at once,
    and the waiting ones (jobs, timers) run beside them. The slots are lock files in the run's base
    temporary folder, which xdist's workers share; a slot held by a dead worker frees itself."""
    if request.node.get_closest_marker("cpu") is None:
        yield
        return
    import fcntl

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common parent
    while True:
        for i in range(CPU_SLOTS):
            handle = open(root / f"cpu-slot-{i}.lock", "a")  # noqa: SIM115 - held for the test
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(0.2)


def _service_missing(what: str) -> None:
    message = f"{what} is not running (start it with scripts/local_cluster.sh up)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def answering_url(variable: str, what: str) -> str:
    """The database URL in the environment ``variable``, once a connection to it answers
    ``SELECT 1``; otherwise the test is skipped (failed in CI) naming ``what``."""
    url = os.environ.get(variable)
    if not url:
        _service_missing(f"{what} ({variable} unset)")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # noqa: BLE001
        _service_missing(f"{what} at {url} ({err})")
    return url  # type: ignore[return-value]


@pytest.fixture(scope="session")
def _pg_url() -> str:
    return answering_url("HYPER_OPT_TEST_PG_URL", "PostgreSQL")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """URL of the local PostgreSQL (password from PGPASSWORD, never in the URL)."""
    return _marked_service(request, "pg_url", "_pg_url")


@pytest.fixture
def private_pg(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, a free port:
    ``benchmarks.fleet.throwaway_postgres``), for a test that stops or restarts its server while
    other tests use the shared one; ``.url`` to use, ``.data_dir`` for ``fleet.server_ctl``."""
    _check_marked(request, "private_pg")
    from benchmarks import fleet

    try:
        fleet.pg_bin()
    except Exception as err:  # noqa: BLE001 - no server binaries
        _service_missing(f"PostgreSQL's server binaries ({err})")
    with fleet.throwaway_postgres() as server:
        yield server


@pytest.fixture
def slurm_cluster(request: pytest.FixtureRequest) -> str:
    """The local Slurm cluster; returns the node name."""
    return _marked_service(request, "slurm_cluster", "_slurm_node")


@pytest.fixture(scope="session")
def _slurm_node() -> str:
    if shutil.which("sinfo") is None:
        _service_missing("Slurm (no sinfo)")
    proc = subprocess.run(["sinfo", "-h", "-o", "%n %t"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        _service_missing(f"Slurm ({proc.stderr.strip()})")
    return proc.stdout.split()[0]


# OpenPBS (PBS Pro's open-source edition), built by scripts/local_cluster.sh from ../shared/vendor/.
PBS_VENDOR = Path(os.environ.get("HYPER_OPT_PBS_VENDOR") or REPO.parent / "shared" / "vendor")


@pytest.fixture
def pbs_cluster(request: pytest.FixtureRequest) -> Path:
    """The local OpenPBS server; see _pbs_bin."""
    return _marked_service(request, "pbs_cluster", "_pbs_bin")


@pytest.fixture(scope="session")
def _pbs_bin() -> Path:
    """The local OpenPBS server; returns the folder of its qsub/qstat/qdel (from
    ``HYPER_OPT_TEST_PBS_QSUB``, which ``scripts/local_cluster.sh env`` exports). Slurm's torque
    wrapper stays first on PATH, so a test names this folder (``HYPER_OPT_PBS_BIN``) to use it.

    Where the OpenPBS sources are absent (a clone without ../shared/vendor/) it skips, in CI too:
    the server cannot be built there; anywhere else a server that does not answer is a missing
    service (skipped, failed in CI)."""
    qsub = Path(os.environ.get("HYPER_OPT_TEST_PBS_QSUB") or "/opt/pbs/bin/qsub")
    if not qsub.exists() and not any(PBS_VENDOR.glob("openpbs-*.tar.gz")):
        pytest.skip(f"OpenPBS tests skipped: no OpenPBS sources in {PBS_VENDOR} to build the server from")
    if not qsub.exists():
        _service_missing(f"OpenPBS ({qsub} missing)")
    proc = subprocess.run([str(qsub.parent / "qstat"), "-B"], capture_output=True, text=True)
    if proc.returncode != 0:
        _service_missing(f"OpenPBS ({(proc.stdout + proc.stderr).strip()})")
    return qsub.parent
