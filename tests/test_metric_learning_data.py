"""Datasets: built-in arrays, import paths, and the CUB200 / Cars196 / SOP / image-folder loaders
on tiny generated image folders (powerful-benchmarker's layouts)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt.metric_learning import data as d  # noqa: E402
from hyper_opt.metric_learning.build import load_data  # noqa: E402


def _png(path, seed, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_cub(root, classes=4, per_class=3):
    images = root / "cub2011" / "CUB_200_2011" / "images"
    for c in range(classes):
        for i in range(per_class):
            _png(images / f"{c + 1:03d}.Bird_{c}" / f"bird_{c}_{i}.png", 10 * c + i)
    return root


def make_cars(root, classes=3, per_class=2):
    from scipy.io import savemat

    folder = root / "cars196"
    n = classes * per_class
    annotations = np.zeros((1, n), dtype=[("relative_im_path", "O"), ("class", "O")])
    for k in range(n):
        rel = f"car_ims/{k + 1:06d}.png"
        _png(folder / rel, k)
        annotations[0, k]["relative_im_path"] = np.array([rel])
        annotations[0, k]["class"] = np.array([[k % classes + 1]], dtype=np.uint8)
    savemat(str(folder / "cars_annos.mat"), {"annotations": annotations})
    return root


def make_sop(root, classes=4, per_class=2):
    folder = root / "Stanford_Online_Products"
    lines = {"Ebay_train.txt": [], "Ebay_test.txt": []}
    k = 0
    for c in range(classes):
        name = "Ebay_train.txt" if c < classes // 2 else "Ebay_test.txt"
        for i in range(per_class):
            rel = f"bicycle_final/{c}_{i}.JPG"
            _png(folder / rel, k)
            k += 1
            lines[name].append(f"{k} {c + 1} 1 {rel}")
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(["image_id class_id super_class_id path", *rows]) + "\n")
    return root


@pytest.mark.parametrize("loader, make, classes, samples", [
    (d.cub200, make_cub, 4, 12), (d.cars196, make_cars, 3, 6), (d.sop, make_sop, 4, 8)])
def test_benchmark_layouts(tmp_path, loader, make, classes, samples):
    data = loader(make(tmp_path), image_size=8, resize=10)
    assert data.num_classes == classes and len(data) == samples
    assert sorted(set(data.labels.tolist())) == list(range(classes))
    assert np.bincount(data.labels).tolist() == [samples // classes] * classes
    evaluated = data.subset(np.arange(samples), train=False)
    x, y = evaluated[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == data.labels[0]
    assert torch.equal(evaluated[0][0], evaluated[0][0])  # evaluation is deterministic
    trained = data.subset(np.arange(samples), train=True, labels=np.zeros(samples, dtype=np.int64))
    assert trained[1][0].shape == (3, 8, 8) and trained[1][1] == 0


def test_cub_class_names_come_from_the_folders(tmp_path):
    data = d.cub200(make_cub(tmp_path, classes=2, per_class=1))
    assert data.class_names == ["001.Bird_0", "002.Bird_1"]
    assert "cub2011/CUB_200_2011/images/001.Bird_0/bird_0_0.png" in data.paths[0]


def test_missing_dataset_folders_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="cars_annos.mat"):
        d.cars196(tmp_path)
    with pytest.raises(FileNotFoundError, match="Ebay_train.txt"):
        d.sop(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        d.cub200(tmp_path)


def test_image_transform_crops_flips_and_normalises():
    image = Image.fromarray(np.full((30, 40, 3), 255, dtype=np.uint8))
    evaluation = d.ImageTransform(image_size=16, resize=20, train=False)(image)
    assert evaluation.shape == (3, 16, 16)
    expected = (1.0 - np.array(d.IMAGENET_MEAN)) / np.array(d.IMAGENET_STD)
    assert torch.allclose(evaluation[:, 0, 0], torch.tensor(expected, dtype=torch.float32))
    assert d.ImageTransform(image_size=16, resize=20, train=True)(image).shape == (3, 16, 16)


def test_builtin_arrays_and_import_paths(tmp_path, monkeypatch):
    digits = d.digits()
    assert len(digits) == 1797 and digits.num_classes == 10 and digits.data.shape == (1797, 64)
    assert float(digits.data.max()) == 1.0
    assert d.digits(images=True).data.shape == (1797, 1, 8, 8)
    module = tmp_path / "my_data.py"
    module.write_text(
        "import numpy as np, torch\n"
        "def arrays(n=4):\n"
        "    return np.arange(n * 6, dtype=np.float32).reshape(n * 2, 3), ['b', 'a'] * n\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    targets = [5, 7, 5]\n"
        "    def __len__(self): return 3\n"
        "    def __getitem__(self, i): return torch.full((2,), float(i)), self.targets[i]\n"
        "def dataset():\n"
        "    return DS()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    arrays = load_data({"dataset": {"my_data:arrays": {"n": 3}}}, None)
    assert arrays.class_names == ["a", "b"] and arrays.labels.tolist() == [1, 0] * 3
    torch_data = load_data({"dataset": "my_data.dataset"}, None)
    assert torch_data.class_names == [5, 7] and torch_data.labels.tolist() == [0, 1, 0]
    x, y = torch_data.subset(np.array([1, 2]), train=False)[0]
    assert x.tolist() == [1.0, 1.0] and y == 1
    sys.modules.pop("my_data", None)


def test_a_trial_trains_a_cnn_on_an_image_folder(tmp_path):
    optuna = pytest.importorskip("optuna")
    from hyper_opt.metric_learning.objective import Objective

    root = tmp_path / "images"
    for c in range(8):
        for i in range(4):
            _png(root / f"class_{c}" / f"{i}.png", 100 * c + i, size=(12, 12))
    conf = {"dataset": {"image_folder": {"root": "images", "image_size": 8, "resize": 10}},
            "splits": {"test_size": 2, "test_start_idx": 0, "num_training_partitions": 2, "num_training_sets": 1},
            "models": {"trunk": {"CNN": {"channels": [4], "output_size": 4}}},
            "loss_funcs": {"metric_loss": "ContrastiveLoss"},
            "optimizers": {"trunk_optimizer": {"SGD": {"lr": 0.01}}},
            "batch_size": 4, "iterations_per_epoch": 2, "max_epochs": 1, "evaluation": {"knn": "torch"}}
    (tmp_path / "model.yml").write_text("")
    study = optuna.create_study(direction="maximize")
    objective = Objective(conf, "mean_average_precision_at_r", "cpu")
    objective.bind(parameters=(), custom_updates=None, device="cpu", study=study, save_path=tmp_path / "out")
    objective.model_path = tmp_path / "model.yml"  # the root is relative to the model config
    study.optimize(objective, n_trials=1, catch=())
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert (tmp_path / "out" / "metric_learning" / "trial_0" / "fold_0" / "trunk.pth").is_file()
