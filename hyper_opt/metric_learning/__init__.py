"""The built-in metric-learning objective (pytorch-metric-learning), its splits and evaluation.

Use it from the hyperparameter YAML as ``objective: hyper_opt.metric_learning:Objective``; the
model YAML names the models, losses, miners, sampler, optimizers, trainer and dataset (see
docs/metric_learning.md). ``hyper-opt test`` evaluates a trial on the held-out test classes.

Importing this package is cheap: torch, pytorch-metric-learning and faiss are imported where
they are used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Objective", "validate", "problems", "class_disjoint_splits", "make_calculator",
           "compute_embeddings", "Settings"]

_LAZY = {
    "Objective": "hyper_opt.metric_learning.objective",
    "validate": "hyper_opt.metric_learning.settings",
    "problems": "hyper_opt.metric_learning.settings",
    "Settings": "hyper_opt.metric_learning.settings",
    "class_disjoint_splits": "hyper_opt.metric_learning.splits",
    "make_calculator": "hyper_opt.metric_learning.evaluation",
    "compute_embeddings": "hyper_opt.metric_learning.evaluation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyper_opt.metric_learning' has no attribute {name!r}")
