"""One rank of a distributed trial (``python -m hyper_opt.distributed.rank SPEC``), or one node's agent.

A rank loads the search's files as the worker did, builds the user's objective, and calls its
``train(trial, conf)`` with :class:`RankTrial`, a stand-in whose questions go to the trial's
worker (:mod:`.coordinator`). It ends with one ``result`` message: rank 0's holds the metric
value(s), computed here so that a missing or non-numeric metric is named as it is in one process.

``--agent`` starts the ranks of one node (under ``srun`` or ``pbsdsh``) and waits for them: when
one ends with an error, or the agent is told to stop, it stops the others and exits non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyper_opt.distributed.channel import Client
from hyper_opt.distributed.launch import RankSpec, read_spec, start_node_ranks, stop
from hyper_opt.exceptions import Interrupted

logger = logging.getLogger("hyper_opt.rank")


class RankTrial:
    """What ``train`` sees as its trial on a rank: optuna's ``Trial`` methods users call, answered
    by the trial's worker, so that every rank gets the same parameters and pruning decisions."""

    distributed = True

    def __init__(self, client: Client, rank: int, snap: dict[str, Any]) -> None:
        self._client = client
        self.rank = rank
        self.number: int = snap["number"]
        self._trial_id: int = snap["trial_id"]
        self.params: dict[str, Any] = dict(snap["params"])
        self.user_attrs: dict[str, Any] = dict(snap["user_attrs"])
        self.system_attrs: dict[str, Any] = dict(snap["system_attrs"])
        start = snap.get("datetime_start")
        self.datetime_start = datetime.datetime.fromisoformat(start) if start else None
        self.study = None  # the study lives with the worker; ranks reach it only through this trial
        self._step: int | None = None

    # ------------------------------------------------------------------ suggestions

    def _suggest(self, name: str, dist: Any) -> Any:
        from optuna.distributions import distribution_to_json

        value = self._client.ask({"op": "suggest", "name": name, "dist": distribution_to_json(dist)})["value"]
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        from optuna.distributions import FloatDistribution

        return self._suggest(name, FloatDistribution(low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        from optuna.distributions import IntDistribution

        return int(self._suggest(name, IntDistribution(low, high, step=step, log=log)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        return self._suggest(name, CategoricalDistribution(list(choices)))

    def suggest_uniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high)

    def suggest_loguniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high, log=True)

    def suggest_discrete_uniform(self, name: str, low: float, high: float, q: float) -> float:
        return self.suggest_float(name, low, high, step=q)

    # ------------------------------------------------------------------ pruning

    def report(self, value: float, step: int) -> None:
        """Rank 0's value is recorded; every rank's step is the one its ``should_prune`` asks about."""
        value = float(value)
        step = int(step)
        self._step = step
        if self.rank == 0:
            self._client.ask({"op": "report", "value": value, "step": step})

    def should_prune(self) -> bool:
        """The decision rank 0 got at this step (every rank waits for it); raises ``Interrupted``
        when the job is ending, on every rank at the same step."""
        if self._step is None:
            return False
        decision = self._client.ask({"op": "should_prune", "step": self._step})["decision"]
        if decision == "stop":
            raise Interrupted(f"the job is ending; trial stopped at step {self._step}, to be resumed")
        return decision == "prune"

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
        if self.rank == 0:
            self._client.ask({"op": "set_user_attr", "key": key, "value": value})

    def set_system_attr(self, key: str, value: Any) -> None:  # optuna deprecated it for users; kept local
        self.system_attrs[key] = value


def _die_with_parent() -> None:
    """Linux: end this rank when its worker (or agent) dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_rank(spec: RankSpec, spec_path: Path) -> int:
    import optuna

    from hyper_opt.loader import instantiate, load_config
    from hyper_opt.objective import trial_device

    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return 1
    for sig in (signal.SIGUSR1, signal.SIGUSR2):  # the worker decides when the job is ending
        signal.signal(sig, signal.SIG_IGN)
    rank = int(os.environ["RANK"])
    client = Client(tuple(spec.control), spec.token, rank)  # type: ignore[arg-type]
    try:
        config, model = load_config(spec.hyper_path, spec.model_path, overrides=spec.overrides)
        logging.basicConfig(level=config.log_level, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s")
        objective = instantiate(config, model or {}, study=None, device=trial_device(config.optuna.gpu))
        objective._db_retry_seconds = spec.retry_seconds
        trial = RankTrial(client, rank, spec.trial)
        logger.info("trial %d: rank %d of %d, device %s, pid %d", trial.number, rank, spec.world_size,
                    objective.device, os.getpid())
        results = objective.train(trial, spec.conf)  # type: ignore[arg-type]
        message: dict[str, Any] = {"op": "result", "kind": "ok"}
        if rank == 0:
            values = objective.values(results)
            message.update(values=values if isinstance(values, list) else [values],
                           metrics=objective.metrics(results))
        client.send(message)
        return 0
    except optuna.TrialPruned as err:
        client.send({"op": "result", "kind": "pruned", "message": str(err)})
        return 0
    except Interrupted as err:
        client.send({"op": "result", "kind": "interrupted", "message": str(err)})
        return 0
    except BaseException as err:  # noqa: BLE001 - every failure of a rank is the trial's, with its traceback
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        try:
            client.send({"op": "result", "kind": "error", "type": type(err).__name__, "traceback": text[-8000:]})
        except ConnectionError:
            pass
        return 1
    finally:
        client.close()


def run_agent(spec: RankSpec, spec_path: Path, node_rank: int) -> int:
    """One node's ranks: start them, wait; stop them all when one fails or this agent is stopped."""
    procs = start_node_ranks(spec_path, spec, node_rank)

    def on_signal(signum: int, frame: Any) -> None:
        stop(procs)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    while True:
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            stop(procs)
            return 1 if bad[0] == 1 else (128 - bad[0] if bad[0] < 0 else bad[0])
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hyper_opt.distributed.rank",
                                description="One rank (or one node's agent) of a hyper_opt distributed trial.")
    p.add_argument("spec", type=Path)
    p.add_argument("--agent", action="store_true", help="start this node's ranks and wait for them")
    p.add_argument("--node-rank", type=int, help="this node's index in the trial (default: SLURM_PROCID)")
    p.add_argument("--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    spec = read_spec(args.spec)
    node_rank = args.node_rank if args.node_rank is not None else int(os.environ.get("SLURM_PROCID", "0"))
    if args.agent:
        return run_agent(spec, args.spec, node_rank)
    return run_rank(spec, args.spec)


if __name__ == "__main__":
    raise SystemExit(main())
