"""One worker: claim a trial within the global budget, train it, record it, repeat.

Every Slurm job and every local worker process runs this loop. Per trial:

1. claim (hyper_opt.claim): under the study's budget lock, start a trial only when that leaves
   the global budget unexceeded, with its first heartbeat and run context recorded before the
   lock is released; stale trials of dead workers are failed and re-queued;
2. train outside the lock, with a heartbeat thread so that a killed worker's trial goes stale;
3. tell optuna the outcome (retrying while the database is unreachable), then write the
   trial's CSV file.

An exception in ``train`` fails that trial only (its traceback is stored in the trial's
``error`` attribute) and the worker goes on; ``max_consecutive_failures`` failures in a row stop
it, because then every trial would fail. The loop also ends when the job's remaining wall time
is shorter than the expected duration of one more trial, or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from hyper_opt import failpoints, results, stopping
from hyper_opt.accounting import STOPPED_ATTR
from hyper_opt.claim import (TIMING_ENV, Claimed, Claimer, Stop, fail_elsewhere,  # noqa: F401 - re-exported
                             run_context)
from hyper_opt.exceptions import HyperOptError, Interrupted, StorageError  # noqa: F401 - Interrupted re-exported
from hyper_opt.code_errors import code_error_stop, stop_on_code_error
from hyper_opt.distributed import RankLost, TrialSize, run_ranks
from hyper_opt.heartbeat import Heartbeat
from hyper_opt.loader import instantiate
from hyper_opt.signals import interrupt_at_safe_point, stop_tracing
from hyper_opt.objective import BaseObjective, trial_device
from hyper_opt.registry import requeue_callback
from hyper_opt.schema import HyperConfig
from hyper_opt.storage import with_db_retry
from hyper_opt.study import Opened, finished_numbers, open_study, recent_durations

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

WAIT_POLL_S = 2.0  # the first wait for a full budget to free up; later ones grow (Worker._wait_delay)
WAIT_MAX_S = 15.0
PREEMPT_GRACE_S = 45  # after SIGUSR1, how long a trial may run on before it is interrupted


@dataclass
class WorkerReport:
    trials: list[int] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    stop: Stop | None = None


class Worker:
    def __init__(self, config: HyperConfig, model: dict[str, Any], *, worker_index: int = 0,
                 deadline: float | None = None, max_trials: int | None = None, size: TrialSize | None = None,
                 schema_checked: bool = False) -> None:
        self.config = config
        self.schema_checked = schema_checked  # the launcher checked optuna's tables (storage.make_storage)
        self.size = size or TrialSize()  # ranks per trial (hyper_opt.distributed); 1: train in this process
        self.model = model
        self.worker_index = worker_index
        self.deadline = deadline  # time.time() by which the worker must have exited
        self.max_trials = max_trials
        self._stop_requested = False
        self.stop_requested = threading.Event()  # seen by BaseObjective.report: stop at a safe point
        self._in_trial = False
        self._alarm: tuple[float, int] | None = None  # when the worker armed SIGALRM, the user's pending alarm
        self._durations: list[float] = []
        self._last_error: BaseException | None = None  # what failed the last trial
        self._interrupt_pending: str | None = None  # a signal deferred out of a finalizer (signals.py)
        self._stop_signal: str | None = None  # the first stopping signal: why an interrupted trial stopped
        self._claimer = Claimer(config, worker_index=worker_index, nodes_per_trial=self.size.nodes_per_trial)
        self.timing = self._claimer.timing  # per claim, with HYPER_OPT_CLAIM_TIMING set (benchmarks/lock_hold.py)
        spec = config.optuna
        self._param_names = [p.name for p in spec.parameters]
        self._metric_names = list(spec.metrics)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self._stop_requested
        self._stop_requested = True
        name = signal.Signals(signum).name
        self._stop_signal = self._stop_signal or name
        if signum in (signal.SIGUSR1, signal.SIGUSR2) and self._in_trial:
            # Slurm's warning before a time limit or preemption: let the objective reach a safe
            # point (its next report, after saving a checkpoint); force the stop if it does not.
            logger.warning("worker %d: %s (job ending): the trial stops at its next report",
                           self.worker_index, name)
            self.stop_requested.set()
            pending = signal.alarm(PREEMPT_GRACE_S)
            if self._alarm is None:
                self._alarm = (time.monotonic(), pending)
            return
        if signum != signal.SIGALRM or not self._interrupt_pending:
            logger.warning("worker %d: %s received; stopping after the current trial is recorded",
                           self.worker_index, name)
        if self._in_trial and (first or signum in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)):
            interrupt_at_safe_point(self, name, frame)

    def _disarm(self) -> None:
        """Cancel the alarm the worker armed (if it did), restoring the user's pending one."""
        if self._alarm is None or threading.current_thread() is not threading.main_thread():
            return
        armed_at, pending = self._alarm
        self._alarm = None
        signal.alarm(0)
        if pending:
            signal.alarm(max(1, round(pending - (time.monotonic() - armed_at))))

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
                signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------------ loop

    def run(self) -> WorkerReport:
        import optuna

        report = WorkerReport()
        self._install_signals()
        opened = open_study(self.config, create=True, worker_index=self.worker_index, worker=True,
                            schema_checked=self.schema_checked)
        device = trial_device(self.config.optuna.gpu)
        objective = instantiate(self.config, self.model, study=opened.study, device=device)
        objective._stop_event = self.stop_requested
        objective._db_retry_seconds = self.config.optuna.db_retry_seconds
        logger.info("worker %d: study %r, device %s, pid %d%s", self.worker_index,
                    self.config.optuna.study_name, device, os.getpid(),
                    f"; {self.size.describe()}" if self.size.ranks > 1 else "")
        self._seed_durations(opened)
        consecutive_failures = waits = 0
        try:
            while True:
                stop = self._should_stop(report)
                if stop is not None:
                    report.stop = stop
                    break
                if code_error_stop(opened, self.config, self.worker_index) is not None:
                    report.stop = Stop.CODE_ERROR
                    break
                claim = self._claim(opened)
                if isinstance(claim, Stop):
                    report.stop = claim
                    break
                if claim is None:  # budget full with trials still running elsewhere: wait for them
                    time.sleep(self._wait_delay(waits))
                    waits += 1
                    continue
                waits = 0
                frozen = self._run_trial(opened, objective, claim)
                report.trials.append(frozen.number)
                report.states[frozen.state.name] = report.states.get(frozen.state.name, 0) + 1
                if frozen.state == optuna.trial.TrialState.FAIL:
                    if stop_on_code_error(opened, self.config, frozen, self._last_error, self.worker_index):
                        report.stop = Stop.CODE_ERROR
                        break
                    consecutive_failures += 1
                    if consecutive_failures >= self.config.optuna.max_consecutive_failures:
                        logger.error("worker %d: %d trials failed in a row; stopping (raise "
                                     "optuna:max_consecutive_failures to allow more)",
                                     self.worker_index, consecutive_failures)
                        report.stop = Stop.FAILURES
                        break
                else:
                    consecutive_failures = 0
                if stopping.stop_rule_fired(opened, self.config.optuna, self.worker_index):
                    report.stop = Stop.LIMIT
                    break
            if report.stop in (Stop.BUDGET, Stop.LIMIT) and self._claimer.sweeps:
                self._write_missing_csvs(opened)
        finally:
            opened.lock.close()
        logger.info("worker %d: stopped: %s; ran %d trial(s) %s", self.worker_index,
                    report.stop.value if report.stop else "?", len(report.trials), report.states)
        return report

    def _write_missing_csvs(self, opened: Opened) -> None:
        """At the end of the study, write the CSV of every finished trial that has none: its
        worker died after recording it, or its disk was full then (derived from the study). Only
        the missing ones are read, and on PostgreSQL only by the first worker to see the budget
        complete (every worker reading every trial of the study as it stopped cost O(workers x
        trials) rows at the end of a search)."""
        seconds = self.config.optuna.db_retry_seconds
        try:
            numbers = with_db_retry(lambda: finished_numbers(opened), seconds=seconds,
                                    what="reading the finished trials")
            present = {p.name for p in self.config.trials_dir.glob("trial_*.csv")}
            for number in numbers:
                if results.trial_csv_path(self.config.trials_dir, number).name in present:
                    continue

                def read(number: int = number) -> optuna.trial.FrozenTrial:
                    store = opened.storage
                    return store.get_trial(store.get_trial_id_from_study_id_trial_number(opened.study_id, number))

                t = with_db_retry(read, seconds=seconds, what=f"reading trial {number}")
                results.write_trial_csv(self.config.trials_dir, t, param_names=self._param_names,
                                        metric_names=self._metric_names, n_values=len(self.config.optuna.directions))
                logger.info("worker %d: wrote the missing CSV of trial %d", self.worker_index, number)
        except (OSError, HyperOptError) as err:
            logger.warning("worker %d: could not write missing trial CSVs: %s", self.worker_index, err)

    def _wait_delay(self, waits: int) -> float:
        """How long to wait before the ``waits``-th next look at a full budget: WAIT_POLL_S, growing
        by half each time up to half the heartbeat interval (at most WAIT_MAX_S, at least
        WAIT_POLL_S), less a random share of up to a half, so that many waiting workers neither
        poll the study every 2 s nor in step. Each look also asks for the stale-trial scan turn, so
        a dead worker's trial is still failed within about ``grace_period + heartbeat_interval``."""
        import random

        interval = self.config.optuna.heartbeat_interval or 0
        cap = max(WAIT_POLL_S, min(interval / 2, WAIT_MAX_S))
        return min(cap, WAIT_POLL_S * 1.5 ** min(waits, 20)) * random.uniform(0.5, 1.0)

    def _should_stop(self, report: WorkerReport) -> Stop | None:
        if self._stop_requested:
            return Stop.SIGNAL
        if self.max_trials is not None and len(report.trials) >= self.max_trials:
            return Stop.MAX_TRIALS
        if self.deadline is not None:
            expected = self.expected_duration()
            left = self.deadline - time.time()
            if left <= 0 or (expected is not None and left < expected):
                logger.info("worker %d: %.0f s of wall time left, a trial takes about %s s; stopping",
                            self.worker_index, left, f"{expected:.0f}" if expected else "?")
                return Stop.WALLTIME
        return None

    def expected_duration(self) -> float | None:
        """A cautious guess of the next trial's duration: the 90th percentile of recent ones."""
        recent = self._durations[-50:]
        if not recent:
            return None
        if len(recent) < 3:
            return max(recent) * 1.2
        return statistics.quantiles(recent, n=10)[-1] * 1.2

    def _seed_durations(self, opened: Opened) -> None:
        self._durations.extend(with_db_retry(lambda: recent_durations(opened, 50), what="reading recent trials",
                                             seconds=self.config.optuna.db_retry_seconds))

    def _claim(self, opened: Opened) -> Claimed | Stop | None:
        """Start a trial if the budget allows (hyper_opt.claim): Claimed, Stop.BUDGET, or None (wait)."""
        return self._claimer.claim(opened)

    def _run_trial(self, opened: Opened, objective: BaseObjective, claim: Claimed) -> optuna.trial.FrozenTrial:
        import optuna

        TS = optuna.trial.TrialState
        trial, trial_id, origin = claim.trial, claim.trial_id, claim.origin
        started = time.time()
        self._last_error = None
        values: Any = None
        state = TS.COMPLETE
        error: str | None = None
        heartbeat = (Heartbeat(opened.storage, trial_id, self.config.optuna.heartbeat_interval, beat_now=False,
                                retry_seconds=self.config.optuna.db_retry_seconds)
                     if self.config.optuna.heartbeat_interval else None)
        try:
            if heartbeat is not None:
                heartbeat.__enter__()
            self._in_trial = True
            try:
                if self._stop_requested:  # the signal came between asking and starting
                    raise Interrupted("worker interrupted before the trial started")
                logger.info("worker %d: trial %d started%s", self.worker_index, trial.number,
                            f" (retry of trial {origin})" if origin is not None else "")
                failpoints.hit("in_train", fail_trial=lambda: self._fail_elsewhere(opened, trial_id))
                values = self._train(objective, trial)
            finally:
                self._in_trial = False
                stop_tracing(self)
                self._disarm()
        except optuna.TrialPruned as err:
            state = TS.PRUNED
            logger.info("worker %d: trial %d pruned: %s", self.worker_index, trial.number, err)
        except (Exception, Interrupted, SystemExit) as err:
            state = TS.FAIL
            self._last_error = err
            error = traceback.format_exc()
            if isinstance(err, SystemExit):  # sys.exit() or an argparse error in train: this trial only
                error += (f"train() called sys.exit({err.code!r}) (exit code {err.code!r}): the trial failed "
                          "and the worker went on with the next one\n")
                logger.error("worker %d: trial %d failed: train() called sys.exit(%r); going on with the "
                             "next trial", self.worker_index, trial.number, err.code)
            elif isinstance(err, (HyperOptError, Interrupted)):
                logger.error("worker %d: trial %d failed: %s", self.worker_index, trial.number, err)
            else:
                logger.error("worker %d: trial %d failed:\n%s", self.worker_index, trial.number, error)
        finally:
            if heartbeat is not None:
                heartbeat.__exit__(None, None, None)
        self._durations.append(time.time() - started)
        interrupted = self._stop_requested and error and "Interrupted" in error
        stopped = ("rank lost" if isinstance(self._last_error, RankLost) else
                   ("preempted" if self._stop_signal in ("SIGUSR1", "SIGUSR2", "SIGALRM") else "cancelled")
                   if interrupted else None)
        frozen = self._record(opened, trial, trial_id, state, values, error, stopped)
        self._claimer.told = trial_id  # the next claim counts it finished without reading the others again
        if frozen.state == TS.FAIL and stopped:
            self._retry(opened, frozen)
        return frozen

    def _train(self, objective: BaseObjective, trial: optuna.Trial) -> Any:
        """``objective(trial)`` here, or on the trial's ranks (hyper_opt.distributed) when it has more than one."""
        if self.size.ranks == 1:
            return objective(trial)
        return run_ranks(objective=objective, trial=trial, size=self.size, config=self.config,
                         stop_event=self.stop_requested, retry_seconds=self.config.optuna.db_retry_seconds)

    def _retry(self, opened: Opened, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue an interrupted trial (scancel, preemption, Ctrl-C) like a stale one: a WAITING
        copy with the same parameters, within optuna:max_retry."""
        callback = requeue_callback(opened.storage, self.config.optuna.max_retry)
        if callback is not None:
            with_db_retry(lambda: callback(opened.study, frozen), seconds=self.config.optuna.db_retry_seconds,
                          what=f"re-queueing trial {frozen.number}")
            logger.info("worker %d: trial %d re-queued to run again", self.worker_index, frozen.number)

    def _record(self, opened: Opened, trial: optuna.Trial, trial_id: int, state: Any, values: Any,
                error: str | None, stopped: str | None = None) -> optuna.trial.FrozenTrial:
        """Tell optuna and write the CSV; a database outage is waited out, not fatal."""
        import optuna

        seconds = self.config.optuna.db_retry_seconds

        def tell() -> optuna.trial.FrozenTrial:
            failpoints.hit("in_tell")
            if error is not None:
                try:
                    if stopped:  # preempted, cancelled or a rank lost: told apart from a failure
                        trial.set_user_attr(STOPPED_ATTR, stopped)
                    trial.set_user_attr("error", error[-8000:])
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # failed meanwhile by another process (cancel, --reload, a stale scan): tell says so
            elif trial.user_attrs.get("error"):  # a retried copy inherited its original's error
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr("error", "")
            if state == optuna.trial.TrialState.COMPLETE:
                return opened.study.tell(trial, values, skip_if_finished=True)
            return opened.study.tell(trial, state=state, skip_if_finished=True)

        failpoints.hit("before_tell", fail_trial=lambda: self._fail_elsewhere(opened, trial_id))
        try:
            frozen = with_db_retry(tell, seconds=seconds, what=f"recording trial {trial.number}")
        except StorageError:
            self._write_orphan(trial, state, values, error)
            raise
        if frozen.state != state and not (state == optuna.trial.TrialState.COMPLETE
                                          and frozen.state == optuna.trial.TrialState.FAIL):
            logger.warning("worker %d: trial %d was already %s when its result arrived (a stale "
                           "trial is failed by other workers after grace_period)",
                           self.worker_index, trial.number, frozen.state.name)
        if frozen.state != optuna.trial.TrialState.FAIL:  # only a retried copy would resume from them
            origin = frozen.user_attrs.get("retry_of", frozen.number)
            shutil.rmtree(self.config.save_path / "checkpoints" / f"trial_{origin}", ignore_errors=True)
        failpoints.hit("after_tell_before_csv")
        try:
            failpoints.hit("in_csv_write")
            results.write_trial_csv(self.config.trials_dir, frozen, param_names=self._param_names,
                                    metric_names=self._metric_names, n_values=len(self.config.optuna.directions))
        except OSError as err:  # the study holds the result; trials.csv is rebuilt from it
            logger.error("worker %d: trial %d is recorded in the study but its CSV could not be written "
                         "(%s); 'hyper-opt report' rebuilds the table from the study", self.worker_index,
                         trial.number, err)
        return frozen

    @staticmethod
    def _fail_elsewhere(opened: Opened, trial_id: int, why: str = "failed by another process (failpoint)") -> None:
        fail_elsewhere(opened, trial_id, why)

    def _write_orphan(self, trial: optuna.Trial, state: Any, values: Any, error: str | None) -> None:
        """Keep a result the database never received, so that it is not lost."""
        import json

        path = self.config.save_path / "unrecorded" / f"trial_{trial.number}.json"
        results.atomic_write_text(path, json.dumps({
            "number": trial.number, "state": state.name, "values": values, "params": trial.params,
            "error": error, **run_context()}, indent=2, default=str))
        logger.error("the database stayed unreachable; trial %d's result is kept in %s", trial.number, path)
