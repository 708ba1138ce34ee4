"""aimlutils' ``hyper_opt`` names (``aimlutils.hyper_opt.*``, before it became echo-opt),
answered by hyper_opt while the real aimlutils is absent.

``from aimlutils.hyper_opt.base_objective import *`` brings what that module held at the top
level (the base class, ``trial_suggest_loader``, and the modules it had imported: optuna, os,
sys, copy, random, logging, ``pd`` where pandas is installed), because objective files use them.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import sys
import warnings
from collections import defaultdict
from typing import Any

import optuna

from hyper_opt import pruning
from hyper_opt.compat._legacy import LegacyObjective, supported_trials, trial_suggest_loader
from hyper_opt.compat.echo import recursive_update, samplers

try:
    import pandas as pd
except ImportError:  # pandas is optional; star-importers that use pd need it installed
    pass

logger = logging.getLogger("aimlutils.hyper_opt")

supported_samplers = ["TPESampler", "GridSampler", "RandomSampler", "CmaEsSampler"]

__all__ = ["BaseObjective", "KerasPruningCallback", "recursive_update", "samplers", "supported_samplers",
           "supported_trials", "trial_suggest_loader", "copy", "defaultdict", "os", "random", "sys",
           "warnings", "optuna", "logging"]


class BaseObjective(LegacyObjective):
    """aimlutils' base class: ``__init__(self, study, config, metric="val_loss", device="cpu")``."""


def KerasPruningCallback(trial: Any, monitor: str, interval: int = 1) -> Any:  # noqa: N802 - a class to users
    """aimlutils' callback (``interval`` now optional, as its own example called it without one);
    a metric missing from the epoch logs is skipped with one warning."""
    return pruning.KerasPruningCallback(trial, monitor, interval=interval, on_missing="warn")
