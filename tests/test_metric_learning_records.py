"""TensorBoard records of a metric-learning trial: the scalars per fold, the losses' and miners'
statistics, the hparams record, and nothing breaks without the tensorboard package."""

from __future__ import annotations

import logging

import pytest

optuna = pytest.importorskip("optuna")
torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt.metric_learning import records  # noqa: E402
from hyper_opt.metric_learning.objective import Objective  # noqa: E402

MAP = "mean_average_precision_at_r"
CONF = {
    "seed": 3,
    "dataset": {"blobs": {"num_classes": 8, "samples_per_class": 12, "num_features": 8, "cluster_std": 2.0}},
    "splits": {"test_size": 2, "test_start_idx": 0, "num_training_partitions": 2},
    "models": {"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}},
    "loss_funcs": {"metric_loss": {"TripletMarginLoss": {"margin": 0.2}}},
    "mining_funcs": {"tuple_miner": {"MultiSimilarityMiner": {"epsilon": 0.1}}},
    "sampler": {"MPerClassSampler": {"m": 4}},
    "optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.01}}},
    "batch_size": 16, "iterations_per_epoch": 3, "max_epochs": 2, "evaluation": {"knn": "torch"},
}


def run_trial(conf, save_path):
    study = optuna.create_study(direction="maximize")
    objective = Objective(conf, MAP, "cpu")
    objective.bind(parameters=(), custom_updates=None, device="cpu", study=study, save_path=save_path)
    study.enqueue_trial({})
    study.optimize(objective, n_trials=1, catch=())
    return study.trials[0]


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_losses_metrics_learning_rates_and_statistics(tmp_path):
    pytest.importorskip("tensorboard")
    trial = run_trial({**CONF, "tensorboard": {"statistics": True}}, tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    board = tmp_path / "metric_learning" / "trial_0" / "tensorboard"
    for fold in (0, 1):
        got = scalars(board / f"fold_{fold}")
        assert [s for s, _ in got["train/total_loss"]] == [0, 1, 2, 3, 4, 5]  # every iteration
        assert len(got["train/metric_loss"]) == 6
        history = trial.user_attrs[f"fold_{fold}"][MAP]
        assert [v for _, v in got[f"val/{MAP}"]] == pytest.approx(history)  # every epoch
        assert [s for s, _ in got["val/precision_at_1"]] == [1, 2]
        assert got["lr/trunk_optimizer"] == [(1, pytest.approx(0.01)), (2, pytest.approx(0.01))]
        assert len(got["train/epoch_loss"]) == 2
        # pytorch-metric-learning's own records: the pairs the miner found, the loss's statistics
        assert len(got["tuple_miner/num_pos_pairs"]) == 6 and len(got["tuple_miner/num_neg_pairs"]) == 6
        assert any(tag.startswith("metric_loss/") for tag in got), sorted(got)
    assert list((board / "hparams").glob("events.out.tfevents.*"))  # the hparams view's record


def test_without_statistics_only_losses_and_metrics_and_without_tensorboard_nothing(tmp_path, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    run_trial({**CONF, "tensorboard": True}, tmp_path / "a")
    got = scalars(tmp_path / "a" / "metric_learning" / "trial_0" / "tensorboard" / "fold_0")
    assert "train/total_loss" in got and not any(tag.startswith("tuple_miner/") for tag in got)

    monkeypatch.setattr(records, "tensorboard_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hyper_opt.metric_learning.records"):
        trial = run_trial({**CONF, "tensorboard": True}, tmp_path / "b")
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert "tensorboard package is not installed" in caplog.text
    assert not (tmp_path / "b" / "metric_learning" / "trial_0" / "tensorboard").exists()


def test_the_setting_is_validated():
    from hyper_opt.metric_learning.settings import problems

    assert problems({**CONF, "tensorboard": "yes"}) == ["tensorboard: must be true, false or {statistics: true}, "
                                                        "got 'yes'"]
    assert problems({**CONF, "tensorboard": {"stats": True}}) == [
        "tensorboard:stats: unknown key (allowed: statistics)"]
