"""Real echo-opt / aimlutils setups load unchanged (issue 10).

Each folder under tests/fixtures/legacy/ holds a public project's hyperparameter YAML, model YAML
and objective file with only data/output paths and the budget changed (see its CHANGES.md and
tests/fixtures/legacy/README.md), plus stand-ins for data loading. The tests copy a folder to
tmp_path and run ``python -m hyper_opt optimize HYPER MODEL --local`` there, with the folder as
the working directory: the predecessors' users ran from their project root and both tools
resolved relative paths against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
REPO = Path(__file__).resolve().parents[1]

# folder: (hyperparameter YAML, model YAML), the file names the project uses.
FIXTURES = {
    "echo_torch": ("hyperparameter.yml", "model_config.yml"),
    "echo_readme": ("hyperparameters.yml", "model_config.yml"),
    "aimlutils_torch": ("hyperparameter.yml", "model.yml"),
    "ptype_physical": ("hyper.yml", "ptype.yml"),
}
# echo_torch's objective passes ReduceLROnPlateau(verbose=...), which torch >= 2.7 removed: every
# trial fails under any tool with the torch installed here, so it is only dry-run (README.md).
RUNNABLE = [name for name in FIXTURES if name != "echo_torch"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("KERAS_BACKEND", "torch")  # the keras objectives' users had TF/keras set up
    return env


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(LEGACY / name, dest, ignore=shutil.ignore_patterns(
        "__pycache__", "results", "data", "*.db", "CHANGES.md"))
    return dest


def _optimize(folder: Path, name: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    hyper, model = FIXTURES[name]
    args = [sys.executable, "-m", "hyper_opt", "optimize", hyper, model, "--local", *extra]
    proc = subprocess.run(args, cwd=folder, env=_env(), text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args[1:])} exited {proc.returncode} in {folder}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _expected(folder: Path, name: str) -> tuple[Path, Path, int]:
    """(save_path, sqlite file, n_trials) as the predecessor placed them, relative to the cwd."""
    hyper = yaml.safe_load((folder / FIXTURES[name][0]).read_text())
    opt = hyper["optuna"]
    if "save_path" in hyper:  # echo-opt: top-level save_path, storage file inside it
        save_path = folder / hyper["save_path"]
        db = save_path / opt["storage"]
    else:  # aimlutils: optuna:save_path, the sqlite file named optuna:name
        save_path = folder / opt["save_path"]
        db = save_path / opt["name"]
    return save_path, db, int(opt["n_trials"])


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_legacy_fixture_dry_run(name: str, tmp_path: Path) -> None:
    folder = _copy(name, tmp_path)
    _optimize(folder, name, "--dry-run", timeout=120)
    assert not list(folder.rglob("*.db")), "a dry run must not create a study"


@pytest.mark.parametrize("name", RUNNABLE)
def test_legacy_fixture_runs(name: str, tmp_path: Path) -> None:
    import optuna

    folder = _copy(name, tmp_path)
    _optimize(folder, name)
    save_path, db, n_trials = _expected(folder, name)
    assert db.is_file(), f"no study where the predecessor kept it: {db}"
    url = f"sqlite:///{db}"
    summaries = optuna.get_all_study_summaries(storage=url)
    assert len(summaries) == 1, [s.study_name for s in summaries]
    trials = optuna.load_study(study_name=summaries[0].study_name, storage=url).trials
    by_state: dict[str, list[int]] = {}
    for t in trials:
        by_state.setdefault(t.state.name, []).append(t.number)
    finished = by_state.get("COMPLETE", []) + by_state.get("PRUNED", [])
    assert len(finished) == n_trials and len(trials) == n_trials, by_state
    csvs = {p.name for p in (save_path / "trials").glob("trial_*.csv")}
    assert csvs == {f"trial_{n}.csv" for n in finished}, csvs
