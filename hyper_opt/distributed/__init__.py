"""Trials larger than one GPU: a trial's ranks, started the way ``torchrun`` starts them.

With ``gpus_per_trial: G`` (and ``nodes_per_trial: K`` under Slurm or PBS) every trial runs
``G x K`` rank processes. The worker that claimed the trial stays its owner in the study (the
heartbeat, ``tell``, the CSV, the checkpoints' bookkeeping) and does not train itself: it starts
the ranks (:mod:`.launch`), answers their questions over a channel of its own
(:mod:`.coordinator`), and records the outcome. Each rank runs the user's ``train(trial, conf)``
with a stand-in trial (:mod:`.rank`) whose ``suggest_*``, ``report`` and ``should_prune`` go to
the worker, so every rank gets the same parameters and the same pruning decision at the same
step. docs/distributed.md says why this channel and not ``torch.distributed`` or the study.
"""

from __future__ import annotations

from hyper_opt.distributed.coordinator import RankFailed, RankLost, TrialSize, run_ranks

__all__ = ["RankFailed", "RankLost", "TrialSize", "run_ranks"]
