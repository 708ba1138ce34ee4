"""End to end through the command line: a search with the built-in objective, ``hyper-opt test``
(which must never change the study), a model-definition file in the optuna-metric-learning style,
and the digits example at a tiny budget."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, write_search

pytestmark = pytest.mark.cpu  # trains models: holds a CPU slot (tests/conftest.py, cpu_slot)

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

MAP = "mean_average_precision_at_r"
OBJECTIVE = "hyper_opt.metric_learning:Objective"
EXAMPLE = REPO / "examples" / "torch" / "metric_learning"

MODEL = {
    "seed": 1,
    "dataset": {"blobs": {"num_classes": 10, "samples_per_class": 12, "num_features": 8, "cluster_std": 2.0}},
    "splits": {"test_size": 0.4, "test_start_idx": 0.8, "num_training_partitions": 2},  # test: 8, 9, 0, 1
    "models": {"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}},
    "loss_funcs": {"metric_loss": {"choose": "TripletMarginLoss", "TripletMarginLoss": {"margin": 0.2},
                                   "ContrastiveLoss": {"neg_margin": 1.0}}},
    "sampler": {"MPerClassSampler": {"m": 4}},
    "optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.01}}},
    "batch_size": 16,
    "iterations_per_epoch": 3,
    "max_epochs": 2,
    "evaluation": {"knn": "torch"},
}
PARAMETERS = {
    "loss_funcs:metric_loss:choose": {
        "type": "categorical", "settings": {"name": "loss", "choices": ["TripletMarginLoss", "ContrastiveLoss"]}},
    "optimizers:trunk_optimizer:Adam:lr": {"type": "loguniform", "settings": {"name": "lr", "low": 1e-3, "high": 3e-2}},
}


def snapshot(search) -> list:
    """Everything the study holds, to compare before and after."""
    hyper = search.hyper_config()["optuna"]
    storage = f"sqlite:///{search.save_path / hyper.get('storage', 'hyper_opt.db')}"
    study = optuna.load_study(study_name=hyper["study_name"], storage=storage)
    trials = [(t.number, t.state, t.params, t.values, t.intermediate_values, t.user_attrs, t.system_attrs,
               t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)]
    return [study.user_attrs, study.directions, trials]


@pytest.mark.slow
def test_search_then_test_reads_fold_models_and_never_changes_the_study(tmp_path):
    search = write_search(tmp_path / "s", model=MODEL, optuna={
        "objective": OBJECTIVE, "metric": MAP, "direction": "maximize", "n_trials": 2,
        "parameters": PARAMETERS})
    search.cli("optimize", "hyper.yml", "model.yml", check=True)
    before = snapshot(search)
    assert [t[1] for t in before[2]] == [optuna.trial.TrialState.COMPLETE] * 2
    best = max(before[2], key=lambda t: t[3][0])[0]

    proc = search.cli("test", "hyper.yml", "model.yml", check=True)
    for row in ("untrained", "raw_input", "fold_0", "fold_1", "mean_of_folds", "concatenated"):
        assert f"\n{row} " in proc.stdout, proc.stdout
    folder = search.save_path / "metric_learning" / f"trial_{best}"
    report = yaml.safe_load((folder / "test_results.yml").read_text())
    assert report["trial"] == best and report["test_classes"] == [8, 9, 0, 1] and report["test_samples"] == 48
    scores = report["results"]
    for metric in (MAP, "precision_at_1", "r_precision"):
        assert scores["mean_of_folds"][metric] == pytest.approx(
            (scores["fold_0"][metric] + scores["fold_1"][metric]) / 2)
        assert all(0.0 <= row[metric] <= 1.0 for row in scores.values())
    assert scores["fold_0"] != scores["untrained"]  # the saved weights were loaded
    csv = (folder / "test_results.csv").read_text().splitlines()
    assert csv[0] == f"model,{MAP},precision_at_1,r_precision"
    assert [line.split(",")[0] for line in csv[1:3]] == ["untrained", "raw_input"]
    assert float(csv[2].split(",")[1]) == pytest.approx(scores["raw_input"][MAP])
    # raw_input: the blobs' 8 features of the test classes, L2-normalised, scored with the same kNN
    import torch

    from hyper_opt.metric_learning.data import blobs
    from hyper_opt.metric_learning.evaluation import accuracy, make_calculator

    data = blobs(**MODEL["dataset"]["blobs"])
    keep = torch.as_tensor(np.isin(data.labels, [8, 9, 0, 1]))
    x = torch.nn.functional.normalize(data.data[keep], dim=1)
    expected = accuracy(make_calculator([MAP], knn="torch"), x, torch.as_tensor(data.labels)[keep])
    assert scores["raw_input"][MAP] == pytest.approx(expected[MAP], abs=1e-6)

    other = 1 - best
    search.cli("test", "hyper.yml", "model.yml", "--trial", str(other), "--no-baseline", check=True)
    report = yaml.safe_load((search.save_path / "metric_learning" / f"trial_{other}" / "test_results.yml").read_text())
    assert "untrained" not in report["results"] and "raw_input" not in report["results"]
    assert report["trial"] == other
    missing = search.cli("test", "hyper.yml", "model.yml", "--trial", "7")
    assert missing.returncode == 2 and "has no trial 7" in missing.stderr
    assert snapshot(search) == before


MODEL_DEF = textwrap.dedent('''
    """A model-definition file in the optuna-metric-learning style (get(conf, trial))."""
    import torch
    from pytorch_metric_learning import losses, samplers
    from sklearn.datasets import load_digits


    def get(conf, trial):
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)

        def subset(classes):
            keep = torch.isin(y, torch.tensor(classes))
            return torch.utils.data.TensorDataset(x[keep], y[keep])

        lr = trial.suggest_float("model_lr", 1e-4, 1e-2, log=True)
        dim = trial.suggest_categorical("dim", [16, 32])

        def model_generator():
            trunk = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
            embedder = torch.nn.Linear(64, dim)
            optimizers = {"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=lr),
                          "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=lr)}
            return {"trunk": trunk, "embedder": embedder}, optimizers, {"metric_loss": losses.ContrastiveLoss()}

        def dataset_fold_generator():
            for train, dev in (([0, 1, 2], [3, 4]), ([3, 4], [0, 1, 2])):
                dataset = subset(train)
                sampler = samplers.MPerClassSampler(dataset.tensors[1], m=conf["m"],
                                                    length_before_new_iter=conf["data_per_epoch"])
                yield dataset, subset(dev), sampler, conf["batch_size"]

        return {"modules": model_generator, "fold_generator": dataset_fold_generator,
                "test_dataset": lambda: subset([5, 6, 7, 8, 9])}
''')


@pytest.mark.slow
def test_a_model_definition_file_runs(tmp_path):
    model = {"model_def_fn": "model_def.py", "m": 4, "batch_size": 16, "data_per_epoch": 160, "max_epochs": 3,
             "patience": 0, "iterations_per_epoch": 5, "evaluation": {"knn": "torch"}}
    search = write_search(tmp_path / "s", model=model, optuna={
        "objective": OBJECTIVE, "metric": MAP, "direction": "maximize", "n_trials": 2, "parameters": {},
        "pruner": {"type": "NopPruner"}})
    (search.folder / "model_def.py").write_text(MODEL_DEF)
    search.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=search.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{search.save_path / 'hyper_opt.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert set(trial.params) == {"model_lr", "dim"}
        assert len(trial.intermediate_values) >= 2  # reported per epoch, both folds
        for fold in (0, 1):
            epochs = trial.user_attrs[f"fold_{fold}"]["epoch"]
            assert 2 <= len(epochs) <= 3  # patience 0 stops a fold after its first non-improving epoch
    proc = search.cli("test", "hyper.yml", "model.yml", check=True)
    assert "concatenated" in proc.stdout
    trial = study.best_trial.number
    report = yaml.safe_load((search.save_path / "metric_learning" / f"trial_{trial}" / "test_results.yml").read_text())
    assert report["test_samples"] == 896  # digits 5-9
    proc = search.cli("test", "hyper.yml", "--model-def-fn", "model_def.py", "--no-baseline", check=True)
    assert "fold_1" in proc.stdout


@pytest.mark.slow
@pytest.mark.examples
def test_the_digits_example_at_a_tiny_budget_beats_the_untrained_model(tmp_path):
    folder = tmp_path / "metric_learning"
    folder.mkdir()
    for name in ("hyperparameters_digits.yml", "model_config_digits.yml"):
        shutil.copy(EXAMPLE / name, folder / name.replace("_digits", ""))
    enqueue = ("optuna:enqueue=[{loss: MultiSimilarityLoss, ms_beta: 50.0, miner: MultiSimilarityMiner, "
               "lr: 0.001, embedding_size: 32}]")
    from conftest import Search

    search = Search(folder=folder, hyper=folder / "hyperparameters.yml", model=folder / "model_config.yml")
    search.cli("optimize", "hyperparameters.yml", "model_config.yml", "--set", "optuna:n_trials=3",
               "--set", enqueue, "--set", "max_epochs=4", check=True)
    proc = search.cli("test", "hyperparameters.yml", "model_config.yml", check=True)
    files = [Path(line) for line in proc.stdout.splitlines()[-1].removeprefix("results: ").split(", ")]
    scores = yaml.safe_load(files[0].read_text())["results"]
    print(proc.stdout)
    assert scores["mean_of_folds"][MAP] > scores["untrained"][MAP] + 0.02
    assert scores["concatenated"][MAP] > scores["untrained"][MAP] + 0.02


@pytest.mark.slow
@pytest.mark.examples
def test_the_glyphs_example_at_a_tiny_budget_beats_raw_inputs_and_the_untrained_model(tmp_path):
    """One enqueued trial, one fold, 3 short epochs: already well above both baselines on the 96
    held-out characters (the full example's figures are in its README)."""
    folder = tmp_path / "metric_learning"
    folder.mkdir()
    for name in ("hyperparameters.yml", "model_config.yml"):
        shutil.copy(EXAMPLE / name, folder / name)
    enqueue = ("optuna:enqueue=[{loss: MultiSimilarityLoss, ms_beta: 50.0, miner: MultiSimilarityMiner, "
               "lr: 0.001, embedding_size: 64}]")
    from conftest import Search

    search = Search(folder=folder, hyper=folder / "hyperparameters.yml", model=folder / "model_config.yml")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    search.cli("optimize", "hyperparameters.yml", "model_config.yml", "--set", "optuna:n_trials=1", "--set", enqueue,
               "--set", "local:workers=1", "--set", "max_epochs=3", "--set", "iterations_per_epoch=20",
               "--set", "splits:num_training_sets=1", check=True, env=env)
    proc = search.cli("test", "hyperparameters.yml", "model_config.yml", check=True, env=env)
    print(proc.stdout)
    report = yaml.safe_load((folder / "results" / "metric_learning" / "trial_0" / "test_results.yml").read_text())
    scores = report["results"]
    assert len(report["test_classes"]) >= 50 and report["test_samples"] == 20 * len(report["test_classes"])
    assert scores["fold_0"][MAP] > scores["raw_input"][MAP] + 0.05
    assert scores["fold_0"][MAP] > scores["untrained"][MAP] + 0.10
