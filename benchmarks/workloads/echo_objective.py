"""The benchmark objective for echo-opt 1.3.1 (runs in benchmarks/.venv-echo).

The same work as hyper_objective.py, written the way echo-opt expects: ``Objective(config,
metric, device)`` subclassing ``echo.src.base_objective.BaseObjective``, ``train`` returning a
dict with the metric.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import RECORDER, toy_loss  # noqa: E402

from echo.src.base_objective import BaseObjective  # noqa: E402


class Objective(BaseObjective):
    def __init__(self, config, metric="val_loss", device="cpu"):
        BaseObjective.__init__(self, config, metric, device)
        RECORDER.configure(config.get("bench", {}).get("timing_dir"), "echo")

    def train(self, trial, conf):
        sleep = float(conf.get("bench", {}).get("sleep", 0.0))
        with RECORDER.span():
            loss = toy_loss(float(conf["model"]["x"]), int(conf["model"]["y"]))
            if sleep:
                time.sleep(sleep)
        return {"val_loss": loss}
