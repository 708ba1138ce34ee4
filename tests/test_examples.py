"""The examples run end to end through the real CLI, and the reference configs stay valid.

The example tests copy an example folder to a temporary one and run ``python -m hyper_opt
optimize`` there with ``--set`` overrides that shrink the budget (6 trials, a few epochs) and make
the pruner start after 2 completed trials, so that a bad trial is pruned even at this size (the
DDP example keeps its 4 trials of 2 ranks, with 3 epochs, and runs with ``--local``). The
configs tests load every YAML under ``configs/`` with :func:`hyper_opt.config.load_config` and
check that the full reference mentions every key the code accepts.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyper_opt.config import (HYPER_SECTIONS, LOCAL_KEYS, LOG_KEYS, OPTUNA_KEYS, PARAM_SETTINGS, PBS_KEYS,
                              SLURM_KEYS, STORAGE_TYPES, load_config, missing_model_paths)
from hyper_opt.launch.slurm import sbatch_parameters

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CONFIGS = REPO / "configs"

N_TRIALS = 6
# Shared by both examples: a tiny budget, and a pruner that acts at every epoch once 2 trials
# completed. The sampler seed fixes the random draws (the examples' TPE samples at random for its
# first 6 trials, so every trial here is a seeded random draw or the enqueued one). One worker: with
# the examples' two, which trials had completed when another reported depended on the machine's
# load, and one CI run pruned none of the 6 (the pruner compares with the completed trials).
TINY = (
    "local:workers=1",
    f"optuna:n_trials={N_TRIALS}",
    "optuna:pruner:n_startup_trials=2",
    "optuna:pruner:n_warmup_steps=0",
    "optuna:sampler:seed=3",
    "trainer:epochs=4",
)


def copy_example(name: str, tmp_path: Path) -> Path:
    """The example folder without any results of an earlier run in the source tree."""
    dest = tmp_path / name
    shutil.copytree(EXAMPLES / name, dest,
                    ignore=shutil.ignore_patterns("results", "__pycache__", "*.db", "*.journal", "*.lock"))
    return dest


def optimize(folder: Path, *overrides: str, timeout: float = 300,
             flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m hyper_opt optimize hyperparameters.yml model_config.yml FLAGS --set ...`` in ``folder``."""
    args = [sys.executable, "-m", "hyper_opt", "optimize", "hyperparameters.yml", "model_config.yml", *flags]
    for override in overrides:
        args += ["--set", override]
    proc = subprocess.run(args, cwd=folder, text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        paths = sorted(folder.glob("results/logs/*.log")) + sorted(folder.glob("results/ranks/*/*.log"))
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in paths)
        pytest.fail(f"optimize exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}\n{logs}")
    return proc


def load_trials(storage_url: str, study_name: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage_url).trials


def check_results(folder: Path, trials: list[Any]) -> dict[str, list[int]]:
    """The study holds exactly N_TRIALS finished trials, each with its CSV; return numbers by state."""
    by_state: dict[str, list[int]] = {}
    for t in trials:
        by_state.setdefault(t.state.name, []).append(t.number)
    finished = by_state.get("COMPLETE", []) + by_state.get("PRUNED", [])
    assert len(finished) == N_TRIALS, by_state
    assert not by_state.get("FAIL") and not by_state.get("RUNNING"), by_state
    csv_files = {p.name for p in (folder / "results" / "trials").glob("trial_*.csv")}
    assert csv_files == {f"trial_{n}.csv" for n in finished}
    with open(folder / "results" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["number"]) for r in rows) == sorted(t.number for t in trials)
    for row in rows:
        if row["state"] == "COMPLETE":
            assert {"val_loss", "loss", "val_accuracy"} <= {k for k, v in row.items() if v}, row
    return by_state


@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.examples
def test_torch_example(tmp_path: Path) -> None:
    folder = copy_example("torch", tmp_path)
    optimize(folder, *TINY)
    hyper = yaml.safe_load((folder / "hyperparameters.yml").read_text())
    trials = load_trials(f"sqlite:///{folder / 'results' / hyper['optuna']['storage']}",
                         hyper["optuna"]["study_name"])
    by_state = check_results(folder, trials)
    assert by_state.get("PRUNED"), f"no trial was pruned: {by_state}"
    first = min(trials, key=lambda t: t.number)
    assert first.number == 0 and first.params == hyper["optuna"]["enqueue"][0]  # enqueued: run first
    for t in trials:  # one report per epoch until the end, or until pruned
        steps = sorted(t.intermediate_values)
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 4
        if t.state.name == "COMPLETE":
            assert len(steps) == 4


@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.examples
def test_keras_example(tmp_path: Path) -> None:
    folder = copy_example("keras", tmp_path)
    optimize(folder, *TINY)
    hyper = yaml.safe_load((folder / "hyperparameters.yml").read_text())
    assert "slurm" not in hyper  # the runnable example must never submit jobs
    db = folder / hyper["optuna"]["save_path"] / hyper["optuna"]["name"]
    trials = load_trials(f"sqlite:///{db}", hyper["optuna"]["name"])  # named verbatim, as aimlutils did
    by_state = check_results(folder, trials)
    assert by_state.get("PRUNED"), f"no trial was pruned: {by_state}"
    assert (folder / "results" / "log.txt").is_file()  # log:save_path
    for t in trials:
        assert "num_dense" in t.params  # the custom_updates-only parameter is suggested too
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [0, 1, 2, 3]  # one report per epoch


@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.examples
def test_torch_ddp_example(tmp_path: Path) -> None:
    """4 trials of 2 ranks each (DDP over gloo): both ranks of every trial ran, saw a world of 2 and
    stopped at the epoch the study recorded last, so a pruned trial stopped on both at once."""
    folder = copy_example("torch/ddp", tmp_path)
    optimize(folder, "optuna:pruner:n_warmup_steps=0", "trainer:epochs=3", flags=("--local",))
    hyper = yaml.safe_load((folder / "hyperparameters.yml").read_text())
    assert hyper["local"] == {"workers": 1, "gpus_per_trial": 2}
    trials = load_trials(f"sqlite:///{folder / 'results' / hyper['optuna']['storage']}",
                         hyper["optuna"]["study_name"])
    states = sorted(t.state.name for t in trials)
    assert len(trials) == hyper["optuna"]["n_trials"] and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert "COMPLETE" in states
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(len(steps))) and steps, (t.number, steps)
        for rank in (0, 1):
            log = (folder / "results" / "ranks" / f"trial_{t.number}" / f"rank_{rank}.log").read_text()
            assert f"trial {t.number}: rank {rank} of 2" in log
            epochs = [int(e) for e in re.findall(rf"^rank {rank}: epoch (\d+) ", log, flags=re.M)]
            assert epochs == steps, (t.number, rank, epochs, steps)  # the same last epoch on both ranks
        if t.state.name == "COMPLETE":
            assert len(steps) == 3 and t.user_attrs["metrics"]["world_size"] == 2


# --------------------------------------------------------------------------- configs/


CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("hyperparameters*.yml"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_reference_config_loads(name: str) -> None:
    config, model = load_config(CONFIGS / name, CONFIGS / "model_config.yml")
    assert config.optuna.objective.file is not None and config.optuna.objective.file.is_file()
    assert config.slurm is not None  # the references document the slurm section
    # Every parameter key is a path of configs/model_config.yml (a typo would patch nothing),
    # except num_dense, which shows a parameter meant for custom_updates.
    assert set(missing_model_paths(config, model or {})) <= {"num_dense"}
    sbatch_parameters(config)  # the slurm section passes the launcher's checks too
    if config.pbs is not None:
        from hyper_opt.launch.pbs import directives

        directives(config)  # and so does the pbs section


def test_keras_slurm_variant_loads() -> None:
    """The Slurm twin of the Keras example validates and differs only by its slurm section."""
    folder = EXAMPLES / "keras"
    config, _ = load_config(folder / "hyperparameters_slurm.yml", folder / "model_config.yml")
    assert config.slurm is not None
    sbatch_parameters(config)
    local = yaml.safe_load((folder / "hyperparameters.yml").read_text())
    slurm = yaml.safe_load((folder / "hyperparameters_slurm.yml").read_text())
    assert slurm["optuna"]["parameters"] == local["optuna"]["parameters"]


def test_reference_configs_exist() -> None:
    assert {"hyperparameters.yml", "hyperparameters_legacy.yml"} <= set(CONFIG_FILES)
    assert (CONFIGS / "model_config.yml").is_file()


def _mentioned_keys(text: str) -> set[str]:
    """Every YAML ``key: `` in the text: block and flow mappings, active or commented out."""
    return set(re.findall(r"(?:^|[\s{,#])([A-Za-z_]\w*):(?=\s)", text, flags=re.M))


def test_full_reference_mentions_every_key() -> None:
    """configs/hyperparameters.yml documents every key config.py accepts; a new key fails here
    until it is documented there."""
    text = (CONFIGS / "hyperparameters.yml").read_text()
    keys = _mentioned_keys(text)
    accepted = {*HYPER_SECTIONS, *OPTUNA_KEYS, *SLURM_KEYS, *PBS_KEYS, *LOCAL_KEYS, *LOG_KEYS}
    for required, optional in PARAM_SETTINGS.values():
        accepted |= {"type", "settings", "name", *required, *optional}
    assert sorted(accepted - keys) == []
    for ptype in PARAM_SETTINGS:
        assert re.search(rf"type:\s*\"?{ptype}\"?", text), f"parameter type {ptype} is not shown"
    for stype in STORAGE_TYPES:
        assert stype in text, f"storage_type {stype} is not documented"
