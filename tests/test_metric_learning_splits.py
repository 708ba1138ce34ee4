"""Class-disjoint splits: test classes held out (wrapping around), partitions, folds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hyper_opt.metric_learning.splits import SplitError, class_disjoint_splits, indices_of


def _check(splits, n):
    test = set(splits.test_classes)
    parts = [set(p) for p in splits.partitions]
    for a, b in itertools.combinations([test, *parts], 2):
        assert not a & b
    assert test.union(*parts) == set(range(n))
    for fold in splits.folds:
        train, val = set(fold.train_classes), set(fold.val_classes)
        assert not train & val and not train & test and not val & test
        assert val == parts[fold.index]
        assert train == set().union(*(p for j, p in enumerate(parts) if j != fold.index))


@pytest.mark.parametrize("n, kwargs, test_classes", [
    (10, dict(test_size=0.5, test_start_idx=0.5, num_training_partitions=2), [5, 6, 7, 8, 9]),
    (10, dict(test_size=0.3, test_start_idx=0.9, num_training_partitions=3), [9, 0, 1]),  # wraps around
    (10, dict(test_size=4, test_start_idx=8, num_training_partitions=3), [8, 9, 0, 1]),  # counts, wraps
    (200, dict(test_size=0.5, test_start_idx=0.5, num_training_partitions=4), list(range(100, 200))),
    (12, dict(test_size=0, test_start_idx=0, num_training_partitions=3), []),
    (7, dict(test_size=0.2, test_start_idx=0.0, num_training_partitions=2), [0]),  # int(0.2 * 7) = 1
])
def test_class_disjoint_splits(n, kwargs, test_classes):
    splits = class_disjoint_splits(n, **kwargs)
    assert list(splits.test_classes) == test_classes
    assert len(splits.partitions) == kwargs["num_training_partitions"]
    assert len(splits.folds) == kwargs["num_training_partitions"]  # num_training_sets defaults to all
    sizes = [len(p) for p in splits.partitions]
    assert max(sizes) - min(sizes) <= 1
    _check(splits, n)


def test_num_training_sets_uses_the_first_partitions_as_folds():
    splits = class_disjoint_splits(10, test_size=0.5, test_start_idx=0.5, num_training_partitions=2,
                                   num_training_sets=2)
    assert [f.val_classes for f in splits.folds] == [(0, 1, 2), (3, 4)]
    assert [f.train_classes for f in splits.folds] == [(3, 4), (0, 1, 2)]
    one = class_disjoint_splits(20, test_size=0.5, num_training_partitions=4, num_training_sets=1)
    assert len(one.folds) == 1 and len(one.partitions) == 4
    _check(one, 20)


def test_shuffled_classes_are_seeded_and_reproducible():
    a = class_disjoint_splits(30, test_size=0.5, num_training_partitions=3, shuffle_classes=True, seed=3)
    b = class_disjoint_splits(30, test_size=0.5, num_training_partitions=3, shuffle_classes=True, seed=3)
    c = class_disjoint_splits(30, test_size=0.5, num_training_partitions=3, shuffle_classes=True, seed=4)
    assert a == b
    assert a.test_classes != c.test_classes
    assert a.test_classes != tuple(range(15, 30))
    _check(a, 30)
    _check(c, 30)


@pytest.mark.parametrize("kwargs, message", [
    (dict(test_size=0.5, num_training_partitions=4), "at least 8"),  # 5 left for 4 partitions
    (dict(test_size=1.5), "fraction"),
    (dict(test_size=10), "leave some"),
    (dict(num_training_partitions=1), ">= 2"),
    (dict(num_training_partitions=2, num_training_sets=3), "num_training_sets"),
])
def test_impossible_splits_are_refused(kwargs, message):
    with pytest.raises(SplitError, match=message):
        class_disjoint_splits(10, **kwargs)


def test_indices_of_selects_samples_of_the_classes():
    labels = np.array([3, 1, 2, 3, 0, 1])
    assert list(indices_of(labels, [1, 3])) == [0, 1, 3, 5]
    assert list(indices_of(labels, [])) == []
