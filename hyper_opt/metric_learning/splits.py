"""Class-disjoint splits as in "A Metric Learning Reality Check" (Musgrave et al., 2020).

The classes (sorted, or shuffled with a seed) are laid out in a ring. ``test_size`` classes
starting at ``test_start_idx`` (wrapping around the end) are the held-out test set, never seen
by the search. The remaining classes are cut into ``num_training_partitions`` contiguous,
class-disjoint partitions; fold ``k`` (``k < num_training_sets``) validates on partition ``k``
and trains on all the others. Fractions are of the number of classes, as in
powerful-benchmarker: ``test_size: 0.5, test_start_idx: 0.5`` holds out the second half.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class SplitError(ValueError):
    """The split settings do not fit the dataset's classes."""


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: class indices to train on and to validate on."""

    index: int
    train_classes: tuple[int, ...]
    val_classes: tuple[int, ...]


@dataclass(frozen=True)
class Splits:
    order: tuple[int, ...]  # the classes in ring order (sorted unless shuffled)
    test_classes: tuple[int, ...]
    partitions: tuple[tuple[int, ...], ...]
    folds: tuple[Fold, ...]

    def as_dict(self, class_names: Sequence[Any] | None = None) -> dict[str, Any]:
        """A YAML-friendly description (original class names when given)."""
        def names(classes: Sequence[int]) -> list[Any]:
            return [class_names[c] if class_names is not None else c for c in classes]
        return {
            "test_classes": names(self.test_classes),
            "partitions": [names(p) for p in self.partitions],
            "folds": [{"fold": f.index, "train_classes": names(f.train_classes),
                       "val_classes": names(f.val_classes)} for f in self.folds],
        }


def _count(value: float | int, n: int, what: str) -> int:
    if isinstance(value, bool):
        raise SplitError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if not 0.0 <= float(value) < 1.0:
        raise SplitError(f"{what} must be a fraction in [0, 1) or a whole number of classes, got {value!r}")
    return int(float(value) * n)


def class_disjoint_splits(num_classes: int, *, test_size: float | int = 0.5, test_start_idx: float | int = 0.5,
                          num_training_partitions: int = 4, num_training_sets: int | None = None,
                          shuffle_classes: bool = False, seed: int = 0) -> Splits:
    """Split class indices ``0..num_classes-1`` into a test set and cross-validation folds.

    ``test_size``: a fraction of the classes (float < 1; rounded down) or a number of classes
    (int; 0 for no test set). ``test_start_idx``: where the test block starts, a fraction or a
    class position; it wraps around. ``num_training_sets`` (default: all partitions) folds are
    made. Raises :class:`SplitError` when a fold would have fewer than two training or
    validation classes.
    """
    n = int(num_classes)
    if num_training_sets is None:
        num_training_sets = num_training_partitions
    if num_training_partitions < 2:
        raise SplitError(f"num_training_partitions must be >= 2, got {num_training_partitions}")
    if not 1 <= num_training_sets <= num_training_partitions:
        raise SplitError(f"num_training_sets must be between 1 and num_training_partitions "
                         f"({num_training_partitions}), got {num_training_sets}")
    order = list(range(n))
    if shuffle_classes:
        order = [int(c) for c in np.random.default_rng(seed).permutation(n)]
    n_test = _count(test_size, n, "test_size")
    start = _count(test_start_idx, n, "test_start_idx") if n else 0
    if not 0 <= n_test < n:
        raise SplitError(f"test_size gives {n_test} test classes out of {n}; leave some for training")
    test = [order[(start + i) % n] for i in range(n_test)]
    test_set = set(test)
    rest = [c for c in order if c not in test_set]
    if not shuffle_classes:
        rest.sort()
    needed = 2 * num_training_partitions
    if len(rest) < needed:
        raise SplitError(f"{len(rest)} classes are left after the {n_test} test classes; "
                         f"{num_training_partitions} partitions need at least {needed} "
                         "(two validation classes each)")
    partitions = tuple(tuple(int(c) for c in p) for p in np.array_split(np.asarray(rest, dtype=np.int64),
                                                                        num_training_partitions))
    folds = tuple(
        Fold(index=k, val_classes=partitions[k],
             train_classes=tuple(c for j, p in enumerate(partitions) if j != k for c in p))
        for k in range(num_training_sets))
    splits = Splits(order=tuple(order), test_classes=tuple(test), partitions=partitions, folds=folds)
    check_disjoint(splits, n)
    return splits


def check_disjoint(splits: Splits, num_classes: int) -> None:
    """Test classes, partitions and each fold's train/val classes never overlap, and together
    they cover every class once. Raises SplitError otherwise (a bug, never a user's mistake)."""
    groups = [set(splits.test_classes), *map(set, splits.partitions)]
    for a, b in itertools.combinations(groups, 2):
        if a & b:
            raise SplitError(f"splits overlap on classes {sorted(a & b)}")
    if sum(len(g) for g in groups) != num_classes or set().union(*groups) != set(range(num_classes)):
        raise SplitError("the splits do not cover every class exactly once")
    for fold in splits.folds:
        train, val = set(fold.train_classes), set(fold.val_classes)
        if train & val or train & groups[0] or val & groups[0]:
            raise SplitError(f"fold {fold.index}: train, validation and test classes overlap")


def indices_of(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Positions of the samples whose label is one of ``classes`` (in dataset order)."""
    return np.flatnonzero(np.isin(labels, np.asarray(list(classes), dtype=labels.dtype)))
