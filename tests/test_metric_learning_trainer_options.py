"""Trainer options the YAML passes to pytorch-metric-learning: gradient clippers, frozen models,
frozen trunk BatchNorm, the label hierarchy level, mixed precision; validated up front."""

from __future__ import annotations

import copy
import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt.metric_learning import build as b  # noqa: E402
from hyper_opt.metric_learning.plan import make_plan, quiet_training  # noqa: E402
from hyper_opt.metric_learning.settings import problems, read_settings  # noqa: E402

CONF = {
    "seed": 3,
    "dataset": {"blobs": {"num_classes": 8, "samples_per_class": 12, "num_features": 8, "cluster_std": 2.0}},
    "splits": {"test_size": 2, "test_start_idx": 0, "num_training_partitions": 2},
    "models": {"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8, "batch_norm": True}},
               "embedder": {"Linear": {"out_features": 4}}},
    "loss_funcs": {"metric_loss": {"TripletMarginLoss": {"margin": 0.2}}},
    "optimizers": {"trunk_optimizer": {"SGD": {"lr": 0.5}}, "embedder_optimizer": {"SGD": {"lr": 0.5}}},
    "batch_size": 16, "iterations_per_epoch": 2, "max_epochs": 1, "evaluation": {"knn": "torch"},
}


def conf_with(trainer_kwargs, **top):
    conf = copy.deepcopy(CONF)
    conf["trainer"] = {"MetricLossOnly": trainer_kwargs}
    conf.update(top)
    return conf


def first_fold_trainer(conf):
    settings = read_settings(conf)
    plan = make_plan(conf, settings, trial=None, device="cpu", base_dir=None)
    b.seed_everything(0)
    return plan.builders[0](lambda trainer: None, lambda trainer: True).trainer


def test_the_options_are_validated_with_key_paths():
    assert problems(conf_with({"freeze_trunk_batchnorm": True, "freeze_these": ["embedder"], "label_hierarchy_level": 0,
                               "gradient_clippers": {"trunk_grad_clipper": 1.0,
                                                     "embedder_grad_clipper": {"max_norm": 2, "norm_type": 1},
                                                     "metric_loss_grad_clipper": {"clip_value": 0.5}}},
                              mixed_precision=True)) == []
    found = problems(conf_with({"freeze_trunk_batchnorm": "yes", "freeze_these": ["trunk", "head"],
                                "label_hierarchy_level": -1,
                                "gradient_clippers": {"trunk": 1.0, "embedder_grad_clipper": 0,
                                                      "trunk_grad_clipper": {"max_norm": 1, "clip_value": 2}}},
                               mixed_precision="on"))
    where = "trainer:MetricLossOnly"
    assert found == [
        "mixed_precision: must be true or false, got 'on'",
        f"{where}:freeze_trunk_batchnorm: must be true or false, got 'yes'",
        f"{where}:freeze_these: 'head' is not a key of models or loss_funcs (embedder, metric_loss, trunk)",
        f"{where}:label_hierarchy_level: must be an integer >= 0 or 'all', got -1",
        f"{where}:gradient_clippers:trunk: keys are <name>_grad_clipper where <name> is a key of models or "
        "loss_funcs (embedder, metric_loss, trunk)",
        f"{where}:gradient_clippers:embedder_grad_clipper: max_norm must be > 0, got 0",
        f"{where}:gradient_clippers:trunk_grad_clipper: allowed keys: max_norm (with norm_type) or clip_value, "
        "got ['clip_value', 'max_norm']",
    ], found


def test_gradient_clippers_clip_before_the_step(monkeypatch):
    trainer = first_fold_trainer(conf_with({"gradient_clippers": {"trunk_grad_clipper": 1.0e-3,
                                                                  "embedder_grad_clipper": {"clip_value": 1.0e-4}}}))
    assert set(trainer.gradient_clippers) == {"trunk_grad_clipper", "embedder_grad_clipper"}
    seen = {}
    step = trainer.step_optimizers

    def check_then_step():
        trunk = torch.cat([p.grad.flatten() for p in trainer.models["trunk"].parameters()])
        embedder = torch.cat([p.grad.flatten() for p in trainer.models["embedder"].parameters()])
        seen["trunk"], seen["embedder"] = float(trunk.norm()), float(embedder.abs().max())
        step()

    monkeypatch.setattr(trainer, "step_optimizers", check_then_step)
    with quiet_training(threads=1):
        trainer.train(1, 1)
    assert 0 < seen["trunk"] <= 1.0e-3 * (1 + 1e-4) and 0 < seen["embedder"] <= 1.0e-4 * (1 + 1e-6)


def test_frozen_models_and_frozen_trunk_batchnorm_do_not_change():
    trainer = first_fold_trainer(conf_with({"freeze_these": ["embedder"], "freeze_trunk_batchnorm": True}))
    embedder = copy.deepcopy(trainer.models["embedder"].state_dict())
    trunk = copy.deepcopy(trainer.models["trunk"].state_dict())
    with quiet_training(threads=1):
        trainer.train(1, 1)
    after = trainer.models["trunk"].state_dict()
    assert all(torch.equal(v, trainer.models["embedder"].state_dict()[k]) for k, v in embedder.items())
    assert torch.equal(after["2.running_mean"], trunk["2.running_mean"])  # BatchNorm1d stayed in eval mode
    assert not torch.equal(after["1.weight"], trunk["1.weight"])  # the rest of the trunk trained


def test_mixed_precision_is_ignored_on_a_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hyper_opt.metric_learning.build"):
        trainer = first_fold_trainer(conf_with({}, mixed_precision=True))
    assert type(trainer).__name__ == "MetricLossOnly"
    assert "mixed_precision: ignored on cpu" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs a CUDA device")
def test_mixed_precision_trains_under_autocast_on_cuda():
    conf = conf_with({"gradient_clippers": {"trunk_grad_clipper": 1.0}}, mixed_precision=True)
    settings = read_settings(conf)
    plan = make_plan(conf, settings, trial=None, device="cuda", base_dir=None)
    trainer = plan.builders[0](lambda t: None, lambda t: True).trainer
    assert type(trainer).__name__ == "MixedPrecisionMetricLossOnly"
    before = copy.deepcopy(trainer.models["trunk"].state_dict())
    with quiet_training(threads=1):
        trainer.train(1, 2)
    assert trainer.grad_scaler.get_scale() > 0
    assert any(not torch.equal(v, trainer.models["trunk"].state_dict()[k]) for k, v in before.items())
