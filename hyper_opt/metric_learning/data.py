"""Datasets for the metric-learning objective: built-in ones, import paths, image folders.

The ``dataset`` key of the model YAML names one of :data:`BUILTIN_DATASETS` or an import path
``package.module:function`` whose function returns ``(data, labels)`` (arrays or tensors) or a
``torch.utils.data.Dataset`` yielding ``(data, label)`` pairs. Whatever it returns becomes a
:class:`LabeledData`: class indices ``0..C-1`` (in sorted order of the original labels, kept in
``class_names``) and a way to make train/eval subsets, so that image data get augmentation in
training only.

Image datasets follow powerful-benchmarker's folder layouts under one ``dataset_root``::

    cub200:   <dataset_root>/cub2011/CUB_200_2011/images/<class folder>/<image>
    cars196:  <dataset_root>/cars196/cars_annos.mat  (+ the car_ims/ folder it names)
    sop:      <dataset_root>/Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt (+ images)

and ``image_folder`` reads any ``<root>/<class folder>/<image>`` tree. Nothing is downloaded.
Images are decoded with Pillow; torchvision is not needed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LabeledData:
    """A dataset before splitting: integer class labels and train/eval subsets of it."""

    def __init__(self, labels: Sequence[Any], *, class_names: Sequence[Any] | None = None) -> None:
        raw = np.asarray(labels)
        if raw.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {raw.shape}")
        if class_names is None:
            names, index = np.unique(raw, return_inverse=True)
            self.class_names = [_plain(n) for n in names]
            self.labels = index.astype(np.int64)
        else:
            self.class_names = list(class_names)
            self.labels = raw.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray, *, train: bool, labels: np.ndarray | None = None) -> Any:
        """A torch Dataset of ``(data, class index)`` for ``indices``; ``train`` turns on
        augmentation; ``labels`` replace the class indices (one per index) when given."""
        raise NotImplementedError

    def _labels_for(self, indices: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return self.labels[indices] if labels is None else np.asarray(labels, dtype=np.int64)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class ArrayData(LabeledData):
    """Data held in memory as one array/tensor."""

    def __init__(self, data: Any, labels: Sequence[Any], *, class_names: Sequence[Any] | None = None) -> None:
        import torch

        super().__init__(labels, class_names=class_names)
        tensor = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        if len(tensor) != len(self.labels):
            raise ValueError(f"{len(tensor)} samples but {len(self.labels)} labels")
        self.data = tensor

    def subset(self, indices: np.ndarray, *, train: bool, labels: np.ndarray | None = None) -> Any:
        import torch

        indices = np.asarray(indices, dtype=np.int64)
        return torch.utils.data.TensorDataset(self.data[torch.as_tensor(indices)],
                                              torch.as_tensor(self._labels_for(indices, labels)))


class TorchData(LabeledData):
    """A user's torch Dataset yielding ``(data, label)``; labels read from its ``labels`` or
    ``targets`` attribute when it has one, else by iterating it once."""

    def __init__(self, dataset: Any, eval_dataset: Any | None = None) -> None:
        labels = getattr(dataset, "labels", None)
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = [_item_label(dataset[i]) for i in range(len(dataset))]
        super().__init__([_plain(v) for v in labels])
        self.dataset = dataset
        self.eval_dataset = eval_dataset if eval_dataset is not None else dataset

    def subset(self, indices: np.ndarray, *, train: bool, labels: np.ndarray | None = None) -> Any:
        import torch

        indices = np.asarray(indices, dtype=np.int64)
        base = self.dataset if train else self.eval_dataset
        return _Relabeled(torch.utils.data.Subset(base, [int(i) for i in indices]),
                          self._labels_for(indices, labels))


def _item_label(item: Any) -> Any:
    if isinstance(item, dict):
        return item["label"]
    return item[-1]


class _Relabeled:
    """``(data, class index)`` items from a dataset whose own labels may be anything."""

    def __init__(self, dataset: Any, labels: np.ndarray) -> None:
        self.dataset = dataset
        self.labels = labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = self.dataset[i]
        data = item["data"] if isinstance(item, dict) else item[0]
        return data, int(self.labels[i])


# --------------------------------------------------------------------------- images


class ImageTransform:
    """Pillow image -> normalised CHW float tensor.

    Evaluation: resize the shorter side to ``resize``, centre-crop ``image_size``. Training with
    ``augment``: a random crop of 35-100 % of the area and aspect ratio 3/4-4/3 resized to
    ``image_size``, and a random horizontal flip (the paper's RandomResizedCrop + flip).
    """

    def __init__(self, *, image_size: int, resize: int, train: bool, augment: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.image_size, self.resize = int(image_size), int(resize)
        self.train, self.augment = train, augment
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]

    def __call__(self, image: Any) -> Any:
        import torch
        from PIL import Image

        image = image.convert("RGB")
        size = self.image_size
        if self.train and self.augment:
            w, h = image.size
            for _ in range(10):
                area = w * h * random.uniform(0.35, 1.0)
                ratio = float(np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3))))
                cw, ch = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
                if 0 < cw <= w and 0 < ch <= h:
                    left, top = random.randint(0, w - cw), random.randint(0, h - ch)
                    break
            else:
                cw, ch = min(w, h), min(w, h)
                left, top = (w - cw) // 2, (h - ch) // 2
            image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
            if random.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            w, h = image.size
            scale = self.resize / min(w, h)
            image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = image.size
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)


class _ImageDataset:
    def __init__(self, paths: Sequence[str], labels: np.ndarray, transform: Callable[[Any], Any]) -> None:
        self.paths, self.labels, self.transform = list(paths), labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image), int(self.labels[i])


class ImageData(LabeledData):
    """Image files and their labels; decoded lazily, augmented for training only."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[Any], *, image_size: int = 227,
                 resize: int = 256, augment: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(labels)
        if not len(paths):
            raise ValueError("no images found")
        if len(paths) != len(self.labels):
            raise ValueError(f"{len(paths)} images but {len(self.labels)} labels")
        self.paths = [str(p) for p in paths]
        self.options = {"image_size": image_size, "resize": resize, "augment": augment, "mean": mean, "std": std}

    def subset(self, indices: np.ndarray, *, train: bool, labels: np.ndarray | None = None) -> Any:
        indices = np.asarray(indices, dtype=np.int64)
        return _ImageDataset([self.paths[i] for i in indices], self._labels_for(indices, labels),
                             ImageTransform(train=train, **self.options))


def _expand(path: str | Path) -> Path:
    from hyper_opt.metric_learning.paths import expand_path

    return expand_path(path)


def image_folder(root: str | Path, *, image_size: int = 227, resize: int = 256, augment: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> ImageData:
    """``<root>/<class folder>/<image>``: one class per sub-folder (as torchvision's ImageFolder)."""
    root = _expand(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(file)
                labels.append(folder.name)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {root}")
    return ImageData(paths, labels, image_size=image_size, resize=resize, augment=augment, mean=mean, std=std)


def cub200(dataset_root: str | Path, **options: Any) -> ImageData:
    """CUB-200-2011 as powerful-benchmarker lays it out: ``<dataset_root>/cub2011/CUB_200_2011/images``."""
    return image_folder(_expand(dataset_root) / "cub2011" / "CUB_200_2011" / "images", **options)


def cars196(dataset_root: str | Path, **options: Any) -> ImageData:
    """Cars196 as powerful-benchmarker lays it out: ``<dataset_root>/cars196/cars_annos.mat`` whose
    ``annotations`` hold ``relative_im_path`` (``car_ims/000001.jpg``) and ``class`` (1..196)."""
    from scipy.io import loadmat

    folder = _expand(dataset_root) / "cars196"
    annos = folder / "cars_annos.mat"
    if not annos.is_file():
        raise FileNotFoundError(f"Cars196 annotations not found: {annos}")
    mat = loadmat(str(annos))
    records = mat["annotations"][0]
    paths = [folder / str(np.asarray(r["relative_im_path"]).ravel()[0]) for r in records]
    labels = [int(np.asarray(r["class"]).ravel()[0]) for r in records]
    return ImageData(paths, labels, **options)


def sop(dataset_root: str | Path, **options: Any) -> ImageData:
    """Stanford Online Products as powerful-benchmarker lays it out:
    ``<dataset_root>/Stanford_Online_Products/Ebay_train.txt`` and ``Ebay_test.txt`` (header
    ``image_id class_id super_class_id path``); both files are read (the search makes its own
    class-disjoint splits)."""
    folder = _expand(dataset_root) / "Stanford_Online_Products"
    paths, labels = [], []
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        info = folder / name
        if not info.is_file():
            raise FileNotFoundError(f"Stanford Online Products list not found: {info}")
        lines = info.read_text().splitlines()
        for line in lines[1:]:
            parts = line.split()
            if len(parts) >= 4:
                labels.append(int(parts[1]))
                paths.append(folder / parts[3])
    return ImageData(paths, labels, **options)


# --------------------------------------------------------------------------- in-memory data


def digits(*, images: bool = False) -> ArrayData:
    """scikit-learn's digits (1,797 8x8 images, 10 classes; shipped with scikit-learn), pixels
    scaled to [0, 1]: flat 64-vectors, or 1x8x8 images with ``images: true``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return ArrayData(x, y.astype(np.int64))


def blobs(*, num_classes: int = 10, samples_per_class: int = 40, num_features: int = 16,
          cluster_std: float = 1.0, seed: int = 0) -> ArrayData:
    """Gaussian clusters, one per class (scikit-learn's make_blobs): quick synthetic data."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=[int(samples_per_class)] * int(num_classes), n_features=int(num_features),
                      cluster_std=float(cluster_std), random_state=int(seed), center_box=(-4.0, 4.0))
    return ArrayData(x.astype(np.float32), y.astype(np.int64))


def glyphs(*, image_size: int = 32, samples_per_class: int = 20, seed: int = 0,
           scripts: Sequence[str] | None = None, min_faces: int = 8, cache: bool = True) -> ArrayData:
    """Characters drawn in the fonts matplotlib ships, one class per character (about 240),
    ``samples_per_class`` distorted drawings each, as 1 x image_size x image_size images in [0, 1]
    (see :mod:`hyper_opt.metric_learning.glyphs`); cached under the user's cache folder."""
    from hyper_opt.metric_learning.glyphs import SCRIPTS, load_glyphs

    images, labels, classes, _ = load_glyphs(image_size=image_size, samples_per_class=samples_per_class,
                                             seed=seed, scripts=tuple(scripts or SCRIPTS), min_faces=min_faces,
                                             cache=cache)
    return ArrayData(images.astype(np.float32) / 255.0, labels, class_names=classes)


BUILTIN_DATASETS: dict[str, Callable[..., LabeledData]] = {
    "digits": digits, "glyphs": glyphs, "blobs": blobs, "image_folder": image_folder, "cub200": cub200,
    "cars196": cars196, "sop": sop,
}
PATH_KWARGS = ("root", "dataset_root")


def as_labeled_data(result: Any, *, source: str) -> LabeledData:
    """Whatever a dataset function returned, as LabeledData."""
    if isinstance(result, LabeledData):
        return result
    if isinstance(result, tuple) and len(result) == 2 and not _is_dataset(result[0]):
        return ArrayData(result[0], result[1])
    if isinstance(result, tuple) and len(result) == 2 and _is_dataset(result[0]) and _is_dataset(result[1]):
        return TorchData(result[0], result[1])  # (train-transform dataset, eval-transform dataset)
    if _is_dataset(result):
        return TorchData(result)
    raise TypeError(f"{source} returned {type(result).__name__}; expected (data, labels), a torch Dataset "
                    "yielding (data, label), or a (train dataset, eval dataset) pair")


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not hasattr(obj, "shape") \
        and not isinstance(obj, (list, tuple))
