"""The fleet benchmark's objective: sleep ``bench:sleep`` seconds, record the span, return a toy loss.

It runs in the threads of benchmarks/fleet.py (many virtual workers in one process): the span is
recorded in that process, keyed by the worker's thread.
"""

from __future__ import annotations

import time

from benchmarks.fleet import record_span
from hyper_opt import BaseObjective


class Objective(BaseObjective):
    def __init__(self, config, metric="val_loss", device="cpu"):
        BaseObjective.__init__(self, config, metric, device)

    def train(self, trial, conf):
        sleep = float(conf.get("bench", {}).get("sleep", 0.0))
        start = time.time()
        x, y = float(conf["model"]["x"]), int(conf["model"]["y"])
        if sleep:
            time.sleep(sleep)
        record_span(start, time.time())
        return {"val_loss": (x - 2.0) ** 2 + (y - 3) ** 2}
