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
    "gdl_storm_mode": ("hyperparameter.yaml", "conf.yaml"),
    "holodec_vae": ("hyperparameter.yml", "model.yml"),
    "seals_ml": ("config/seals_echo.yaml", "config/train_transformer.yaml"),
    "miles_holodec": ("config/hyper.yml", "config/model.yml"),
}
# echo_torch's objective and holodec_vae's model.yml pass ReduceLROnPlateau(verbose=...), which
# torch >= 2.7 removed: every trial fails under any tool with the torch installed here. echo_torch
# is only dry-run; holodec_vae runs in its own test with that one user edit (README.md).
# seals_ml (an import-path objective, issue 22) does not train at its upstream commit under any tool
# (CHANGES.md): dry-run only.
# miles_holodec runs in its own test (trial_results, issue 22), with a seeded sampler.
RUNNABLE = [name for name in FIXTURES if name not in ("echo_torch", "holodec_vae", "seals_ml", "miles_holodec")]
# Fixtures that tests/test_legacy_slurm.py also runs end to end, as Slurm or PBS jobs, with the same
# assert_finished. Where the test run started the local cluster (scripts/test.sh as root sets
# HYPER_OPT_REQUIRE_SERVICES=1, so those job tests run or fail), their local run adds nothing but
# time (about 100 s on 2 cores); elsewhere they run locally. aimlutils_torch always runs locally.
ALSO_RUN_AS_JOBS = {"echo_readme", "ptype_physical", "gdl_storm_mode"}
RUN_LOCALLY = [name for name in RUNNABLE
               if not (name in ALSO_RUN_AS_JOBS and os.environ.get("HYPER_OPT_REQUIRE_SERVICES") == "1")]
# Objectives whose bare ``except: raise TrialPruned()`` would hide a broken run as PRUNED trials.
COMPLETE_ONLY = {"gdl_storm_mode", "holodec_vae"}


def make_gdl_storm_mode_data(folder: Path, *, n_files: int = 150, patches: int = 3, size: int = 16) -> None:
    """gdl-storm-mode's inputs: one netCDF file of reflectivity patches and one CSV of storm
    shape targets per track step, as the objective globs them (data/track_data_hrrr_3km_*).
    150 files (the objective's num_files) so that its 70/10/20 split leaves none empty."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    nc = folder / "data" / "track_data_hrrr_3km_nc_refl"
    csv = folder / "data" / "track_data_hrrr_3km_csv_refl"
    nc.mkdir(parents=True, exist_ok=True)
    csv.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_files):
        refl = rng.normal(20.0, 10.0, size=(patches, size, size)).astype("float32")
        xr.Dataset({"REFL_COM_curr": (("p", "row", "col"), refl)}).to_netcdf(nc / f"track_step_{i:03d}.nc")
        pd.DataFrame({"major_axis_length": refl.mean(axis=(1, 2)) + 5.0,
                      "minor_axis_length": refl.std(axis=(1, 2))}).to_csv(csv / f"track_step_{i:03d}.csv", index=False)


# folder -> writes the data files its objective reads (generated, not committed)
DATA = {"gdl_storm_mode": make_gdl_storm_mode_data}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("KERAS_BACKEND", "torch")  # the keras objectives' users had TF/keras set up
    return env


def _copy(name: str, tmp_path: Path, *, data: bool = True) -> Path:
    dest = tmp_path / name
    shutil.copytree(LEGACY / name, dest, ignore=shutil.ignore_patterns(
        "__pycache__", "results", "data", "*.db", "CHANGES.md"))
    if data and name in DATA:
        DATA[name](dest)
    return dest


def holodec_vae_user_edits(folder: Path) -> None:
    """What a holodec_vae user must do before it runs here (README.md): drop
    callbacks:ReduceLROnPlateau:verbose from model.yml (torch >= 2.7 refuses it), and have the
    study that ``reload: 1`` continues: aimlutils' workers loaded ``optuna:name`` from
    ``optuna:save_path``, created by an earlier ``reload: 0`` run; an empty one stands for it."""
    import optuna

    model = folder / FIXTURES["holodec_vae"][1]
    data = yaml.safe_load(model.read_text())
    del data["callbacks"]["ReduceLROnPlateau"]["verbose"]
    model.write_text(yaml.safe_dump(data, sort_keys=False))
    save_path, db, _ = _expected(folder, "holodec_vae")
    save_path.mkdir(parents=True, exist_ok=True)
    optuna.create_study(study_name=db.name, storage=f"sqlite:///{db}")


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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_legacy_fixture_dry_run(name: str, tmp_path: Path) -> None:
    folder = _copy(name, tmp_path, data=False)
    if name == "holodec_vae":  # reload: 1 and no study yet: the dry run says the real run would refuse
        hyper, model = FIXTURES[name]
        proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", hyper, model, "--local", "--dry-run"],
                              cwd=folder, env=_env(), text=True, capture_output=True, timeout=120)
        assert proc.returncode == 2 and "does not exist yet; the real run would refuse" in proc.stderr, proc.stderr
        assert not list(folder.rglob("*.db")), "a dry run must not create a study"
        holodec_vae_user_edits(folder)  # what the README asks of its users first
    before = set(folder.rglob("*.db"))
    _optimize(folder, name, "--dry-run", timeout=120)
    assert set(folder.rglob("*.db")) == before, "a dry run must not create a study"


def assert_finished(folder: Path, name: str) -> None:
    """Exactly n_trials finished trials in the study where the predecessor kept it, and a CSV each."""
    import optuna

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
    if name in COMPLETE_ONLY:
        assert len(by_state.get("COMPLETE", [])) == n_trials, by_state
    csvs = {p.name for p in (save_path / "trials").glob("trial_*.csv")}
    assert csvs == {f"trial_{n}.csv" for n in finished}, csvs


@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.parametrize("name", RUN_LOCALLY)
def test_legacy_fixture_runs(name: str, tmp_path: Path) -> None:
    folder = _copy(name, tmp_path)
    _optimize(folder, name)
    assert_finished(folder, name)


@pytest.mark.slow
@pytest.mark.cpu
def test_holodec_vae_reload_needs_the_users_study_and_runs_after_the_torch_edit(tmp_path: Path) -> None:
    folder = _copy("holodec_vae", tmp_path)
    hyper, model = FIXTURES["holodec_vae"]
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", hyper, model, "--local"],
                          cwd=folder, env=_env(), text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "there is no study 'vae_multi.db'" in proc.stderr and "results/vae_multi.db" in proc.stderr, proc.stderr
    assert not list(folder.rglob("*.db")), "reload: 1 never starts a fresh study"
    holodec_vae_user_edits(folder)
    _optimize(folder, "holodec_vae")
    assert_finished(folder, "holodec_vae")


# ----------------------------------------------------------------- real setups that tripped hyper_opt (issue 22)
# Each of these failed on hyper_opt before issue 22 (checked by running the same command with the
# main branch's hyper_opt on a copy of the folder) and passes now.


@pytest.mark.slow
def test_seals_ml_import_path_objective_gets_the_predecessors_names(tmp_path: Path) -> None:
    """seals-ml's objective imports echo.src.* and its own package relatively: given as the import
    path sealsml.keras.objective:Objective it must get the stand-ins, as a file objective does."""
    folder = _copy("seals_ml", tmp_path)
    proc = _optimize(folder, "seals_ml", "--dry-run", timeout=180)
    assert "sealsml.keras.objective:Objective" in proc.stdout
    assert "stand-ins for echo.src.base_objective" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_echo_readme_file_with_a_notes_entry_loads_with_a_warning(tmp_path: Path) -> None:
    """No public echo-opt-format file with an extra top-level key was found (README.md); this is
    echo_readme's real file with a ``notes:`` entry added, as research projects keep one."""
    folder = _copy("echo_readme", tmp_path, data=False)
    hyper = folder / FIXTURES["echo_readme"][0]
    hyper.write_text("notes: |\n  lr sweep on the second data set; see lab notebook p. 12\n" + hyper.read_text())
    proc = _optimize(folder, "echo_readme", "--dry-run", timeout=180)
    assert "top-level key 'notes' is not one hyper_opt reads" in proc.stderr and "as echo-opt did" in proc.stderr


@pytest.mark.slow
@pytest.mark.cpu
def test_miles_holodec_trainer_writes_its_epoch_logs_under_trial_results(tmp_path: Path) -> None:
    """miles-holodec's Trainer.fit writes save_loc/trial_results/training_log_N.csv every epoch and
    relied on echo-opt to have made that folder (save_loc is the hyperparameter file's save_path)."""
    import optuna

    folder = _copy("miles_holodec", tmp_path)
    _optimize(folder, "miles_holodec", "--set", "optuna:sampler:seed=1")
    save_path = folder / "results" / "echo"
    study = optuna.load_study(study_name="holodec", storage=f"sqlite:///{save_path / 'study.db'}")
    complete = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [(t.number, t.state.name, t.user_attrs.get("error", "")[-300:]) for t in study.trials]
    for number in complete:
        log = save_path / "trial_results" / f"training_log_{number}.csv"
        assert log.is_file(), sorted(p.name for p in save_path.rglob("*"))
        assert len(log.read_text().splitlines()) == 1 + 2, "a header and one row per epoch (2 epochs)"
