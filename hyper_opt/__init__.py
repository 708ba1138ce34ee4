"""hyper_opt: hyperparameter searches with optuna, on one machine or across a Slurm cluster.

``import hyper_opt`` is quick: optuna, torch and keras are imported where they are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["BaseObjective", "ConfigError", "HyperOptError", "KerasPruningCallback", "load_config",
           "__version__"]

_LAZY = {
    "BaseObjective": "hyper_opt.objective",
    "KerasPruningCallback": "hyper_opt.pruning",
    "load_config": "hyper_opt.loader",
    "ConfigError": "hyper_opt.exceptions",
    "HyperOptError": "hyper_opt.exceptions",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyper_opt' has no attribute {name!r}")
