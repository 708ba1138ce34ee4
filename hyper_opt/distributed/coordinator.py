"""The worker's side of a distributed trial: start the ranks, answer them, decide the outcome.

The worker serves the channel from its main thread (so that SIGTERM, Ctrl-C and the alarm after
a preemption warning interrupt it as they interrupt an in-process trial), and watches its ranks:

- ``suggest_*`` from any rank goes to the real trial (the first asks optuna, the others get the
  value recorded), so every rank trains with the same parameters;
- ``report`` is recorded from rank 0 only; ``should_prune`` is decided once per step, when rank 0
  asks, and the other ranks get that decision at the same step (``stop`` when the job is ending:
  every rank raises ``Interrupted`` there, after rank 0 saved its checkpoint);
- a rank that raises fails the trial (:class:`RankFailed`); a rank that dies without a result
  (killed, out of memory, its node lost) fails it too, and the trial is re-queued like a killed
  worker's (:class:`RankLost`). Either way the other ranks are stopped, never left waiting in a
  collective, and nothing stays RUNNING.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt.distributed.channel import Lines, encode
from hyper_opt.distributed.launch import (RankSpec, free_port, freeze_checkpoint, node_command, rank_log,
                                          start_node_ranks, stop, write_spec)
from hyper_opt.exceptions import Interrupted, ObjectiveError
from hyper_opt.storage import with_db_retry

if TYPE_CHECKING:
    import optuna

    from hyper_opt.objective import BaseObjective

logger = logging.getLogger("hyper_opt.worker")

FINISH_GRACE_S = 60.0  # after rank 0's result, how long the other ranks may take to end


class RankFailed(ObjectiveError):
    """A rank raised, or exited with an error: the trial fails (not re-queued, like a raising train)."""


class RankLost(ObjectiveError):
    """A rank died without a result (a signal, the OOM killer, a lost node): failed and re-queued."""


@dataclass(frozen=True)
class TrialSize:
    gpus_per_trial: int = 1
    nodes_per_trial: int = 1

    @property
    def ranks(self) -> int:
        return self.gpus_per_trial * self.nodes_per_trial

    def describe(self) -> str:
        return (f"{self.ranks} rank(s) per trial ({self.gpus_per_trial} per node x {self.nodes_per_trial} "
                "node(s)), one GPU per rank")


def snapshot(trial: optuna.Trial) -> dict[str, Any]:
    return {"number": trial.number, "trial_id": trial._trial_id, "params": dict(trial.params),
            "user_attrs": dict(trial.user_attrs), "system_attrs": {},
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None}


class Coordinator:
    """One distributed trial, from starting its ranks to rank 0's result."""

    def __init__(self, *, trial: optuna.Trial, size: TrialSize, conf: dict[str, Any], config: Any,
                 stop_event: Any, retry_seconds: float, checkpoint: Path | None = None) -> None:
        self.trial = trial
        self.size = size
        self.stop_event = stop_event
        self.retry_seconds = retry_seconds
        multi = size.nodes_per_trial > 1
        host = socket.gethostname() if multi else "127.0.0.1"
        self.server = socket.create_server(("" if multi else "127.0.0.1", 0))
        self.server.setblocking(False)
        log_dir = config.save_path / "ranks" / f"trial_{trial.number}"
        self.spec = RankSpec(
            control=(host, self.server.getsockname()[1]), token=secrets.token_hex(16),
            hyper_path=str(config.hyper_path), model_path=str(config.model_path) if config.model_path else None,
            overrides=list(config.overrides), conf=conf, trial=snapshot(trial),
            gpus_per_trial=size.gpus_per_trial, nodes_per_trial=size.nodes_per_trial, master_addr=host,
            master_port=free_port(), visible=os.environ.get("CUDA_VISIBLE_DEVICES"), log_dir=str(log_dir),
            retry_seconds=retry_seconds, extra_env=dict(os.environ) if multi and os.environ.get("PBS_JOBID") else {},
            resume=freeze_checkpoint(checkpoint, log_dir) if checkpoint is not None else "")
        self.spec_path = log_dir / ".spec.pkl"
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.server, selectors.EVENT_READ, None)
        self.conns: dict[socket.socket, dict[str, Any]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        # Rank 0's pruning decisions in the order it asked; every rank's n-th should_prune gets the
        # n-th (by call, not by step: a step reported twice must not hand out an older decision).
        self.decisions: list[str] = []
        self.parked: list[tuple[socket.socket, int]] = []  # (connection, call index) waiting for rank 0
        self.early_errors: list[int] = []  # ranks that raised before rank 0 had a result
        self.procs: list[subprocess.Popen[bytes]] = []
        self.local = not multi

    # ------------------------------------------------------------------ life

    def run(self) -> dict[str, Any]:
        write_spec(self.spec, self.spec_path)
        try:
            if self.local:
                self.procs = start_node_ranks(self.spec_path, self.spec, 0)
            else:
                self.procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
                              for cmd in node_command(self.spec_path, self.spec, dict(os.environ))]
            logger.info("trial %d: started %s; logs in %s", self.trial.number, self.size.describe(),
                        self.spec.log_dir)
            return self._serve()
        finally:
            stop(self.procs)
            self._close()

    def _serve(self) -> dict[str, Any]:
        finished_at: float | None = None
        while True:
            for key, _ in self.sel.select(timeout=0.2):
                if key.fileobj is self.server:
                    self._accept()
                else:
                    self._receive(key.fileobj)  # type: ignore[arg-type]
            self._check_processes()
            if self.early_errors:
                raise RankFailed(self._error_text(self.early_errors[0]))
            if 0 in self.results:  # rank 0's outcome is the trial's, whatever the others meet after it
                finished_at = finished_at or time.monotonic()
                if len(self.results) == self.size.ranks and self._all_exited(timeout=10.0):
                    return self.results[0]
                if self._all_exited(timeout=0):  # the missing ones died after rank 0's result
                    logger.warning("trial %d: rank(s) %s ended without a result after rank 0's result, which "
                                   "stands", self.trial.number, self._missing())
                    return self.results[0]
                if time.monotonic() - finished_at > FINISH_GRACE_S:
                    logger.warning("trial %d: rank(s) %s did not end %.0f s after rank 0's result; stopped",
                                   self.trial.number, self._missing(), FINISH_GRACE_S)
                    return self.results[0]

    def _all_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _missing(self) -> list[int]:
        return [r for r in range(self.size.ranks) if r not in self.results]

    def _check_processes(self) -> None:
        """A rank (or a node's agent, or srun) that ended without its result before rank 0 had one:
        the trial is lost or failed."""
        if 0 in self.results:
            return
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is None:
                continue
            ranks = [index] if self.local else self._missing()
            if not self.local and code == 0 and not ranks:
                continue
            if self.local and index in self.results:
                continue
            time.sleep(0.2)  # its last message may still be on the way
            for key, _ in self.sel.select(timeout=0):
                if key.fileobj is not self.server:
                    self._receive(key.fileobj)  # type: ignore[arg-type]
            if 0 in self.results:  # rank 0's outcome came meanwhile: it stands
                return
            if self.local and index in self.results or not self.local and not self._missing():
                continue
            who = f"rank {index} (pid {proc.pid})" if self.local else f"rank(s) {ranks} (launched by {proc.args[0]})"
            if code < 0 or (not self.local and code != 1):
                why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"ended with exit code {code}"
                raise RankLost(f"{who} {why} before its result; the trial is re-queued.{self._log_tail(ranks)}")
            raise RankFailed(f"{who} exited with code {code} without a result.{self._log_tail(ranks)}")

    def _log_tail(self, ranks: list[int]) -> str:
        if not ranks:
            return ""
        path = rank_log(self.spec, ranks[0])
        try:
            lines = path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return f" (no log at {path})"
        return f"\nthe end of {path}:\n" + "\n".join(lines)

    def _error_text(self, rank: int) -> str:
        message = self.results[rank]
        return (f"rank {rank} of {self.size.ranks} raised {message.get('type', 'an error')} in train(); the other "
                f"ranks were stopped.\n{message.get('traceback', '')}")

    def _close(self) -> None:
        for conn in list(self.conns):
            self._drop(conn)
        self.sel.close()
        self.server.close()
        self.spec_path.unlink(missing_ok=True)
        if self.spec.resume:
            Path(self.spec.resume).unlink(missing_ok=True)

    def _drop(self, conn: socket.socket) -> None:
        self.conns.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    # ------------------------------------------------------------------ channel

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        self.conns[conn] = {"lines": Lines(), "rank": None}
        self.sel.register(conn, selectors.EVENT_READ, None)

    def _receive(self, conn: socket.socket) -> None:
        state = self.conns.get(conn)
        if state is None:
            return
        try:
            data = conn.recv(1 << 16)
            messages = state["lines"].feed(data) if data else []
        except (OSError, ValueError):
            data, messages = b"", []
        for message in messages:
            self._handle(conn, state, message)
        if not data:
            self._drop(conn)

    def _answer(self, conn: socket.socket, message: dict[str, Any]) -> None:
        try:
            conn.sendall(encode(message))
        except OSError:
            self._drop(conn)

    def _handle(self, conn: socket.socket, state: dict[str, Any], message: dict[str, Any]) -> None:
        op = message.get("op")
        if state["rank"] is None:
            if op != "hello" or not secrets.compare_digest(str(message.get("token", "")), self.spec.token):
                logger.warning("trial %d: a connection without the trial's token was refused", self.trial.number)
                self._drop(conn)
                return
            state["rank"] = int(message["rank"])
            return
        rank = state["rank"]
        if op == "result":
            first = 0 not in self.results  # rank 0 had no result yet (this may be it)
            self.results[rank] = message
            if message.get("kind") == "error":
                if first:
                    self.early_errors.append(rank)
                else:  # e.g. a collective broken by rank 0 leaving after it was pruned
                    logger.warning("trial %d: rank %d raised %s after rank 0's result (%s), which stands",
                                   self.trial.number, rank, message.get("type"), self.results[0].get("kind"))
            if rank == 0:  # the others get "go" at any call rank 0 never made
                self._release(final=True)
            return
        try:
            answer = self._request(conn, rank, op, message)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as err:  # a bad suggestion, a refused report: the rank raises it in train()
            answer = {"error": f"{type(err).__name__}: {err}"}
        if answer is not None:
            self._answer(conn, answer)

    def _request(self, conn: socket.socket, rank: int, op: str | None, message: dict[str, Any]) -> dict[str, Any] | None:
        trial = self.trial
        if op == "suggest":
            return {"value": with_db_retry(lambda: suggest(trial, message["name"], message["dist"]),
                                           seconds=self.retry_seconds, what=f"suggesting {message['name']}")}
        if op == "report":
            step = int(message["step"])
            if rank == 0:
                with_db_retry(lambda: trial.report(float(message["value"]), step), seconds=self.retry_seconds,
                              what=f"reporting step {step}")
            return {"ok": True}
        if op == "should_prune":
            state = self.conns[conn]
            call = state["calls"] = state.get("calls", -1) + 1
            if rank == 0:
                self.decisions.append(self._decide(int(message["step"])))
                self._release()
            elif call >= len(self.decisions):
                if 0 in self.results:
                    return {"decision": "go"}
                self.parked.append((conn, call))
                return None
            return {"decision": self.decisions[call]}
        if op == "set_user_attr":
            if rank == 0:
                with_db_retry(lambda: trial.set_user_attr(message["key"], message["value"]),
                              seconds=self.retry_seconds, what=f"setting {message['key']}")
            return {"ok": True}
        raise ValueError(f"unknown request {op!r}")

    def _decide(self, step: int) -> str:
        if self.stop_event is not None and self.stop_event.is_set():
            return "stop"
        pruned = with_db_retry(self.trial.should_prune, seconds=self.retry_seconds,
                               what=f"asking the pruner at step {step}")
        return "prune" if pruned else "go"

    def _release(self, *, final: bool = False) -> None:
        """Answer the ranks waiting for a decision rank 0 has now made (all of them, "go" where it
        made none, once rank 0 is done: ``final``)."""
        waiting, self.parked = self.parked, []
        for conn, call in waiting:
            if call < len(self.decisions) or final:
                self._answer(conn, {"decision": self.decisions[call] if call < len(self.decisions) else "go"})
            else:
                self.parked.append((conn, call))


def suggest(trial: optuna.Trial, name: str, dist_json: str) -> Any:
    """Suggest ``name`` on the real trial with a distribution a rank built (optuna's own JSON form)."""
    import optuna.distributions as D

    dist = D.json_to_distribution(dist_json)
    if isinstance(dist, D.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, D.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, D.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise ValueError(f"cannot suggest {name!r} from {type(dist).__name__}")


def run_ranks(*, objective: BaseObjective, trial: optuna.Trial, size: TrialSize, config: Any, stop_event: Any,
              retry_seconds: float) -> float | list[float]:
    """Run one trial on ``size.ranks`` ranks; its value(s) as ``objective(trial)`` would return them.

    Raises ``optuna.TrialPruned`` / :class:`Interrupted` when rank 0 was pruned or stopped, and
    :class:`RankFailed` / :class:`RankLost` when a rank failed or died."""
    import optuna

    conf = objective.update_config(trial)  # parameters suggested once, here; every rank gets this conf
    coordinator = Coordinator(trial=trial, size=size, conf=conf, config=config, stop_event=stop_event,
                              retry_seconds=retry_seconds, checkpoint=objective.checkpoint_path(trial) / "checkpoint.pkl")
    result = coordinator.run()
    kind = result["kind"]
    if kind == "pruned":
        raise optuna.TrialPruned(result.get("message", "pruned"))
    if kind == "interrupted":
        raise Interrupted(result.get("message", "the job is ending; the trial stopped, to be resumed"))
    if kind != "ok":
        raise RankFailed(f"rank 0 ended with {kind!r}")
    values = result["values"]
    objective.record_metrics(trial, result["metrics"])
    return values[0] if len(values) == 1 else values
