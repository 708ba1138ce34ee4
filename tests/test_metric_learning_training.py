"""One trial of the built-in objective, in process: folds, per-epoch reports, pruning, patience,
best-epoch models, and every pytorch-metric-learning trainer."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

optuna = pytest.importorskip("optuna")
torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt import results  # noqa: E402
from hyper_opt.config import ParameterSpec  # noqa: E402
from hyper_opt.metric_learning.objective import Objective  # noqa: E402

MAP = "mean_average_precision_at_r"


def base_conf(**changes):
    conf = {
        "seed": 3,
        "dataset": {"blobs": {"num_classes": 8, "samples_per_class": 12, "num_features": 8, "cluster_std": 2.0}},
        "splits": {"test_size": 2, "test_start_idx": 0, "num_training_partitions": 3, "num_training_sets": 2},
        "models": {"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}},
        "loss_funcs": {"metric_loss": {"TripletMarginLoss": {"margin": 0.2}}},
        "sampler": {"MPerClassSampler": {"m": 4}},
        "optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.01}}},
        "batch_size": 16,
        "iterations_per_epoch": 3,
        "max_epochs": 3,
        "evaluation": {"knn": "torch"},
    }
    conf.update(copy.deepcopy(changes))
    return conf


def run_trial(conf, save_path, *, pruner=None, params=(), metric=MAP):
    study = optuna.create_study(direction="maximize", pruner=pruner)
    objective = Objective(conf, metric, "cpu")
    objective.bind(parameters=params, custom_updates=None, device="cpu", study=study, save_path=save_path)
    study.optimize(objective, n_trials=1, catch=())
    return study.trials[0]


def test_sequential_folds_report_every_epoch_and_keep_the_best_models(tmp_path):
    trial = run_trial(base_conf(), tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    # step = fold * max_epochs + epoch; the value is the fold's best so far (never decreasing)
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6]
    for fold in (0, 1):
        values = [trial.intermediate_values[fold * 3 + e] for e in (1, 2, 3)]
        assert values == sorted(values)
        summary = trial.user_attrs[f"fold_{fold}"]
        assert summary["epoch"] == [1, 2, 3] and len(summary[MAP]) == 3
        assert summary["best_value"] == max(summary[MAP]) == values[-1]
        assert summary[MAP][summary["best_epoch"] - 1] == summary["best_value"]
    metrics = trial.user_attrs["metrics"]
    bests = [trial.user_attrs[f"fold_{k}"]["best_value"] for k in (0, 1)]
    assert trial.value == pytest.approx(sum(bests) / 2) == pytest.approx(metrics[MAP])
    assert {"precision_at_1", "r_precision", "fold_0_best_epoch", "fold_1_" + MAP} <= set(metrics)
    folder = tmp_path / "metric_learning" / "trial_0"
    rows = results.read_csv(folder / "history.csv")
    assert [(r["fold"], r["epoch"]) for r in rows] == [(f, e) for f in "01" for e in "123"]
    for fold in (0, 1):
        best = yaml.safe_load((folder / f"fold_{fold}" / "best.yml").read_text())
        assert best["best_epoch"] == trial.user_attrs[f"fold_{fold}"]["best_epoch"]
        assert set(torch.load(folder / f"fold_{fold}" / "trunk.pth", weights_only=True)) == {
            "1.weight", "1.bias", "3.weight", "3.bias"}
    splits = yaml.safe_load((folder / "splits.yml").read_text())
    assert splits["test_classes"] == [0, 1]
    for fold in splits["folds"]:
        assert not set(fold["train_classes"]) & set(fold["val_classes"])
        assert not set(fold["train_classes"] + fold["val_classes"]) & {0, 1}
    assert yaml.safe_load((folder / "model_config.yml").read_text())["max_epochs"] == 3


def test_interleaved_folds_report_the_mean_of_fold_bests_per_epoch(tmp_path):
    trial = run_trial(base_conf(fold_schedule="interleaved"), tmp_path)
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.intermediate_values[3] == pytest.approx(trial.value)
    history = [trial.user_attrs[f"fold_{k}"] for k in (0, 1)]
    for epoch in (1, 2, 3):
        mean = sum(max(h[MAP][:epoch]) for h in history) / 2
        assert trial.intermediate_values[epoch] == pytest.approx(mean)


def test_a_pruner_that_should_prune_prunes_and_the_models_are_not_kept(tmp_path):
    # MAP@R never exceeds 1, so a threshold of 1.5 prunes at the first report after warm-up.
    trial = run_trial(base_conf(), tmp_path, pruner=optuna.pruners.ThresholdPruner(lower=1.5, n_warmup_steps=2))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.user_attrs["fold_0"]["epoch"] == [1, 2]  # per-epoch metrics survive pruning
    folder = tmp_path / "metric_learning" / "trial_0"
    assert len(results.read_csv(folder / "history.csv")) == 2
    assert not list(folder.glob("fold_*"))


def test_patience_stops_a_fold(tmp_path):
    # lr 0: nothing changes, so epoch 1 stays the best and patience 1 stops the fold after epoch 3.
    conf = base_conf(optimizers={"trunk_optimizer": {"Adam": {"lr": 0.0}}}, patience=1, max_epochs=6)
    trial = run_trial(conf, tmp_path)
    for fold in (0, 1):
        summary = trial.user_attrs[f"fold_{fold}"]
        assert summary["epoch"] == [1, 2, 3]
        assert summary["best_epoch"] == 1
        assert summary["stopped"].startswith("patience")
    assert sorted(trial.intermediate_values) == [1, 2, 3, 7, 8, 9]
    assert trial.user_attrs["metrics"]["epochs"] == 6


def test_trials_are_reproducible(tmp_path):
    a = run_trial(base_conf(), tmp_path / "a")
    b = run_trial(base_conf(), tmp_path / "b")
    assert a.value == b.value and a.intermediate_values == b.intermediate_values


def test_searched_component_choice_and_arguments(tmp_path):
    conf = base_conf(loss_funcs={"metric_loss": {"choose": "TripletMarginLoss", "TripletMarginLoss": {"margin": 0.2},
                                                 "ArcFaceLoss": {"scale": 16}}},
                     mining_funcs={"tuple_miner": {"choose": "none", "MultiSimilarityMiner": {"epsilon": 0.1}}},
                     optimizers={"trunk_optimizer": {"Adam": {"lr": 0.01}},
                                 "metric_loss_optimizer": {"SGD": {"lr": 0.01}}})
    params = (ParameterSpec("loss_funcs:metric_loss:choose", "categorical", "loss",
                            {"choices": ["ArcFaceLoss"]}),
              ParameterSpec("mining_funcs:tuple_miner:choose", "categorical", "miner",
                            {"choices": ["MultiSimilarityMiner"]}),
              ParameterSpec("loss_funcs:metric_loss:ArcFaceLoss:scale", "float", "scale", {"low": 8.0, "high": 8.0}))
    trial = run_trial(conf, tmp_path, params=params)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    saved = yaml.safe_load((tmp_path / "metric_learning" / "trial_0" / "model_config.yml").read_text())
    assert saved["loss_funcs"]["metric_loss"]["choose"] == "ArcFaceLoss"
    assert saved["loss_funcs"]["metric_loss"]["ArcFaceLoss"]["scale"] == 8.0
    # TripletMarginLoss has no parameters: its optimizer is skipped instead of failing
    trial = run_trial(conf, tmp_path / "triplet")
    assert trial.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize("name, changes", [
    ("TrainWithClassifier", dict(
        trainer="TrainWithClassifier",
        models={"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}, "classifier": {"MLP": {}}},
        loss_funcs={"metric_loss": {"TripletMarginLoss": {}}, "classifier_loss": "CrossEntropyLoss"},
        optimizers={"trunk_optimizer": {"Adam": {"lr": 0.01}}, "classifier_optimizer": {"Adam": {"lr": 0.01}}},
        loss_weights={"classifier_loss": 0.5})),
    ("CascadedEmbeddings", dict(
        trainer={"CascadedEmbeddings": {"embedding_sizes": [4, 4]}},
        models={"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}, "classifier_1": {"Linear": {}}},
        loss_funcs={"metric_loss_0": {"TripletMarginLoss": {}}, "metric_loss_1": {"ContrastiveLoss": {}},
                    "classifier_loss_1": "CrossEntropyLoss"},
        mining_funcs={"tuple_miner_0": {"MultiSimilarityMiner": {}}},
        optimizers={"trunk_optimizer": {"Adam": {"lr": 0.01}}, "classifier_1_optimizer": {"Adam": {"lr": 0.01}}})),
    ("DeepAdversarialMetricLearning", dict(
        trainer={"DeepAdversarialMetricLearning": {"metric_alone_epochs": 1, "g_triplets_per_anchor": 5}},
        models={"trunk": {"MLP": {"hidden_sizes": [], "output_size": 8}}, "embedder": {"MLP": {"output_size": 8}},
                "generator": {"MLP": {"hidden_sizes": [16]}}},
        loss_funcs={"metric_loss": {"TripletMarginLoss": {}}, "synth_loss": {"TripletMarginLoss": {}},
                    "g_adv_loss": {"TripletMarginLoss": {"margin": 0.1}}},
        optimizers={"trunk_optimizer": {"Adam": {"lr": 0.01}}, "embedder_optimizer": {"Adam": {"lr": 0.01}},
                    "generator_optimizer": {"Adam": {"lr": 0.01}}},
        max_epochs=2)),
    ("TwoStreamMetricLoss", dict(trainer="TwoStreamMetricLoss", sampler=None,
                                 loss_funcs={"metric_loss": {"TripletMarginLoss": {}}})),
    ("sequential list of torch.nn modules and a scheduler", dict(
        models={"trunk": [{"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": 8}}]},
        lr_schedulers={"trunk_scheduler_by_epoch": {"StepLR": {"step_size": 1, "gamma": 0.5}},
                       "trunk_scheduler_by_plateau": {"ReduceLROnPlateau": {"mode": "max"}}})),
])
def test_every_trainer_runs(tmp_path, name, changes):
    trial = run_trial(base_conf(**{"max_epochs": 1, **changes}), tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE, name
    assert 0.0 <= trial.value <= 1.0 and not math.isnan(trial.value)


def test_the_saved_models_are_the_best_epochs_models(tmp_path):
    from hyper_opt.metric_learning.evaluation import evaluate, make_calculator
    from hyper_opt.metric_learning.plan import make_plan
    from hyper_opt.metric_learning.settings import read_settings

    conf = base_conf(max_epochs=4)
    trial = run_trial(conf, tmp_path)
    settings = read_settings(conf)
    plan = make_plan(conf, settings, trial=None, device="cpu", base_dir=None)
    calculator = make_calculator([MAP, "precision_at_1", "r_precision"], knn="torch")
    for fold in (0, 1):
        folder = tmp_path / "metric_learning" / "trial_0" / f"fold_{fold}"
        models = plan.fold_models(fold)
        models["trunk"].load_state_dict(torch.load(folder / "trunk.pth", weights_only=True))
        built = plan.builders[fold](lambda t: None, lambda t: True)  # only for its validation set
        got = evaluate(models, built.val, calculator)
        assert got[MAP] == pytest.approx(trial.user_attrs[f"fold_{fold}"]["best_value"], abs=1e-6)
        assert got == pytest.approx(yaml.safe_load((folder / "best.yml").read_text())["metrics"], abs=1e-6)
