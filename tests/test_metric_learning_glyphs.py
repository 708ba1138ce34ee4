"""The glyphs dataset: characters drawn from matplotlib's fonts, deterministic, cached, class-disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")
torch = pytest.importorskip("torch")

from hyper_opt.metric_learning import glyphs as g  # noqa: E402
from hyper_opt.metric_learning.build import load_data  # noqa: E402
from hyper_opt.metric_learning.splits import class_disjoint_splits, indices_of  # noqa: E402

SMALL = {"image_size": 16, "samples_per_class": 3, "scripts": ("digits", "greek")}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_small_build_is_deterministic_and_seeded():
    a_images, a_labels, a_classes = g.build_glyphs(**SMALL, seed=3)
    b_images, b_labels, b_classes = g.build_glyphs(**SMALL, seed=3)
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels) and a_classes == b_classes
    assert a_images.shape == (3 * len(a_classes), 1, 16, 16) and a_images.dtype == np.uint8
    other, _, classes = g.build_glyphs(**SMALL, seed=4)
    assert classes == a_classes and not np.array_equal(other, a_images)
    assert a_classes[:10] == list("0123456789")
    assert len(set(a_classes)) == len(a_classes)
    assert all(a_images[a_labels == c].max() > 128 for c in range(len(a_classes)))  # every drawing has ink


def test_homoglyphs_are_one_class():
    _, _, classes = g.build_glyphs(image_size=16, samples_per_class=2, scripts=("latin", "cyrillic"))
    assert "A" in classes and "\u0410" not in classes  # Latin and Cyrillic A
    assert "o" in classes and "\u043e" not in classes
    assert "\u0416" in classes and "\u042f" in classes  # Zhe and Ya have no Latin twin


@pytest.mark.slow
def test_full_dataset_size_splits_and_cache_reuse(cache_home, monkeypatch):
    data = load_data({"dataset": {"glyphs": {"image_size": 28}}}, None)
    assert data.num_classes >= 200 and len(data) == 20 * data.num_classes
    assert tuple(data.data.shape[1:]) == (1, 28, 28) and data.data.dtype == torch.float32
    assert 0.0 <= float(data.data.min()) and float(data.data.max()) <= 1.0
    assert np.bincount(data.labels).tolist() == [20] * data.num_classes
    files = list((cache_home / "hyper_opt" / "glyphs").glob("glyphs-*.npz"))
    assert len(files) == 1

    # The example's splits: >= 100 training classes, >= 50 held-out test classes, all disjoint.
    splits = class_disjoint_splits(data.num_classes, test_size=0.4, test_start_idx=0.6, num_training_partitions=3,
                                   num_training_sets=2, shuffle_classes=True, seed=0)
    test = set(splits.test_classes)
    train = set(range(data.num_classes)) - test
    assert len(test) >= 50 and len(train) >= 100
    for fold in splits.folds:
        assert not set(fold.train_classes) & set(fold.val_classes)
        assert not (set(fold.train_classes) | set(fold.val_classes)) & test
    test_samples = data.labels[indices_of(data.labels, splits.test_classes)]
    assert set(test_samples.tolist()) == test

    def fail(**_):
        raise AssertionError("the cached file should have been read")

    monkeypatch.setattr(g, "build_glyphs", fail)
    again = load_data({"dataset": {"glyphs": {"image_size": 28}}}, None)
    assert torch.equal(again.data, data.data) and again.class_names == data.class_names
    assert list((cache_home / "hyper_opt" / "glyphs").glob("*")) == files  # no temporary files left


def test_cache_can_be_turned_off_and_bad_options_are_named(cache_home):
    _, _, _, path = g.load_glyphs(**SMALL, cache=False)
    assert path is None and not cache_home.exists()
    for bad, match in (({"image_size": 4}, "image_size"), ({"samples_per_class": 1}, "samples_per_class"),
                       ({"scripts": ["klingon"]}, "scripts"), ({"min_faces": 0}, "min_faces")):
        with pytest.raises(ValueError, match=match):
            g.load_glyphs(**{**SMALL, **bad})


def test_faiss_and_torch_knn_agree_on_glyphs():
    from hyper_opt.metric_learning.evaluation import accuracy, faiss_available, make_calculator

    if not faiss_available():
        pytest.skip("faiss is not installed")
    images, labels, _ = g.build_glyphs(image_size=16, samples_per_class=6, scripts=("digits", "latin"))
    x = torch.nn.functional.normalize(torch.as_tensor(images, dtype=torch.float32).reshape(len(images), -1), dim=1)
    y = torch.as_tensor(labels)
    metrics = ("mean_average_precision_at_r", "precision_at_1", "r_precision")
    by_faiss = accuracy(make_calculator(metrics, knn="faiss"), x, y)
    by_torch = accuracy(make_calculator(metrics, knn="torch"), x, y)
    assert by_faiss == pytest.approx(by_torch, abs=1e-6)
    assert 0.05 < by_torch["mean_average_precision_at_r"] < 0.9


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA build of torchvision beside a CPU torch fails at import
        return False
    return True


@pytest.mark.skipif(not _torchvision_works(), reason="torchvision (matching the installed torch) is not importable")
def test_a_torchvision_trunk_with_random_weights_trains_on_glyphs(tmp_path, cache_home):
    optuna = pytest.importorskip("optuna")
    from hyper_opt.metric_learning.objective import Objective

    conf = {"dataset": {"glyphs": {"image_size": 16, "samples_per_class": 4, "scripts": ["digits", "greek"]}},
            "splits": {"test_size": 0.3, "num_training_partitions": 2, "num_training_sets": 1},
            "models": {"trunk": [{"Conv2d": {"out_channels": 3, "kernel_size": 1}},
                                 {"TorchvisionModel": {"name": "resnet18", "weights": None}}],
                       "embedder": {"MLP": {"output_size": 16}}},
            "loss_funcs": {"metric_loss": "ContrastiveLoss"},
            "optimizers": {"trunk_optimizer": {"Adam": {"lr": 1e-3}}, "embedder_optimizer": {"Adam": {"lr": 1e-3}}},
            "batch_size": 16, "iterations_per_epoch": 2, "max_epochs": 1, "evaluation": {"knn": "torch"}}
    study = optuna.create_study(direction="maximize")
    objective = Objective(conf, "mean_average_precision_at_r", "cpu")
    objective.bind(parameters=(), custom_updates=None, device="cpu", study=study, save_path=tmp_path / "out")
    study.optimize(objective, n_trials=1, catch=())
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    state = torch.load(tmp_path / "out" / "metric_learning" / "trial_0" / "fold_0" / "trunk.pth", weights_only=True)
    assert any(k.startswith("1.layer4") for k in state)  # the ResNet-18 trunk was trained and saved
