"""The built-in metric-learning objective, with the CPU time of each trial recorded.

``train`` is hyper_opt.metric_learning's; this subclass only records the process CPU time
(all threads) and wall time spent in it as the user attributes ``bench_cpu_s`` and
``bench_wall_s``, also for pruned trials, so that the search-efficiency benchmark can put the
best value found against the compute spent.
"""

from __future__ import annotations

import time

from hyper_opt.metric_learning.objective import Objective as MetricLearningObjective


class Objective(MetricLearningObjective):
    def train(self, trial, conf):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return super().train(trial, conf)
        finally:
            trial.set_user_attr("bench_cpu_s", time.process_time() - cpu)
            trial.set_user_attr("bench_wall_s", time.perf_counter() - wall)
