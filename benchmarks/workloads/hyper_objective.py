"""The benchmark objective for hyper_opt: sleep ``train:sleep`` seconds, return a toy loss.

The model config carries ``model: {x, y}`` (patched by the parameters ``model:x`` and
``model:y``) and ``bench: {sleep, timing_dir, steps}``. With ``steps`` > 0 the sleep is split
into that many reported steps (for pruning benchmarks); otherwise nothing is reported.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import RECORDER, toy_loss  # noqa: E402

from hyper_opt import BaseObjective  # noqa: E402


class Objective(BaseObjective):
    def __init__(self, config, metric="val_loss", device="cpu"):
        BaseObjective.__init__(self, config, metric, device)
        bench = config.get("bench", {})
        RECORDER.configure(bench.get("timing_dir"), "hyper_opt")

    def train(self, trial, conf):
        bench = conf.get("bench", {})
        sleep = float(bench.get("sleep", 0.0))
        with RECORDER.span():
            loss = toy_loss(float(conf["model"]["x"]), int(conf["model"]["y"]))
            if sleep:
                time.sleep(sleep)
        return {"val_loss": loss}
