"""One worker: claim a trial within the global budget, train it, record it, repeat.

Every Slurm job and every local worker process runs this loop. Per trial:

1. under the study's budget lock: fail stale trials (dead workers; their copies are re-queued),
   count finished (COMPLETE + PRUNED) and RUNNING trials, and start a trial only when that
   leaves the budget unexceeded. This makes the final count exact with any number of workers;
2. train outside the lock, with a heartbeat thread so that a killed worker's trial goes stale;
3. tell optuna the outcome (retrying while the database is unreachable), then write the
   trial's CSV file.

An exception in ``train`` fails that trial only (its traceback is stored in the trial's
``error`` attribute) and the worker goes on; ``max_consecutive_failures`` failures in a row stop
it, because then every trial would fail. The loop also ends when the job's remaining wall time
is shorter than the expected duration of one more trial, or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import signal
import socket
import statistics
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from hyper_opt import results
from hyper_opt.config import HyperConfig
from hyper_opt.exceptions import HyperOptError, StorageError
from hyper_opt.objective import BaseObjective, instantiate, pick_device
from hyper_opt.storage import is_connection_error, with_db_retry
from hyper_opt.study import Opened, ask, counts, fail_stale_trials, open_study

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

WAIT_POLL_S = 2.0
PREEMPT_GRACE_S = 45  # after SIGUSR1, how long a trial may run on before it is interrupted


class Stop(enum.Enum):
    BUDGET = "the study reached n_trials finished trials"
    WALLTIME = "not enough wall time left for another trial"
    SIGNAL = "interrupted"
    FAILURES = "too many consecutive failed trials"
    MAX_TRIALS = "this worker's own trial limit was reached"


class Interrupted(Exception):
    """Raised inside ``train`` when the worker is asked to stop (SIGINT/SIGTERM)."""


@dataclass
class WorkerReport:
    trials: list[int] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    stop: Stop | None = None


class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds; survives database outages."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hyper_opt-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as err:  # the next beat tries again
                logger.warning("heartbeat failed: %s", str(err).splitlines()[0] if str(err) else err)

    def __enter__(self) -> _Heartbeat:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_context() -> dict[str, str]:
    """Where a trial ran: recorded with the trial and in its CSV."""
    return {
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", "") and
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
        or os.environ.get("SLURM_JOB_ID", ""),
        "pbs_job_id": os.environ.get("PBS_JOBID", ""),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "worker_pid": str(os.getpid()),
    }


class Worker:
    def __init__(self, config: HyperConfig, model: dict[str, Any], *, worker_index: int = 0,
                 deadline: float | None = None, max_trials: int | None = None) -> None:
        self.config = config
        self.model = model
        self.worker_index = worker_index
        self.deadline = deadline  # time.time() by which the worker must have exited
        self.max_trials = max_trials
        self._stop_requested = False
        self.stop_requested = threading.Event()  # seen by BaseObjective.report: stop at a safe point
        self._in_trial = False
        self._durations: list[float] = []
        spec = config.optuna
        self._param_names = [p.name for p in spec.parameters]
        self._metric_names = list(spec.metrics)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self._stop_requested
        self._stop_requested = True
        name = signal.Signals(signum).name
        if signum in (signal.SIGUSR1, signal.SIGUSR2) and self._in_trial:
            # Slurm's warning before a time limit or preemption: let the objective reach a safe
            # point (its next report, after saving a checkpoint); force the stop if it does not.
            logger.warning("worker %d: %s (job ending): the trial stops at its next report",
                           self.worker_index, name)
            self.stop_requested.set()
            signal.alarm(PREEMPT_GRACE_S)
            return
        logger.warning("worker %d: %s received; stopping after the current trial is recorded",
                       self.worker_index, name)
        if self._in_trial and (first or signum == signal.SIGALRM):
            raise Interrupted(f"worker interrupted by {name}")

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
                signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------------ loop

    def run(self) -> WorkerReport:
        import optuna

        report = WorkerReport()
        self._install_signals()
        opened = open_study(self.config, create=True, worker_index=self.worker_index)
        device = pick_device() if self.config.optuna.gpu or os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
        objective = instantiate(self.config, self.model, study=opened.study, device=device)
        objective._stop_event = self.stop_requested
        logger.info("worker %d: study %r, device %s, pid %d", self.worker_index,
                    self.config.optuna.study_name, device, os.getpid())
        self._seed_durations(opened)
        consecutive_failures = 0
        try:
            while True:
                stop = self._should_stop(report)
                if stop is not None:
                    report.stop = stop
                    break
                claim = self._claim(opened)
                if isinstance(claim, Stop):
                    report.stop = claim
                    break
                if claim is None:  # budget full with trials still running elsewhere: wait for them
                    time.sleep(WAIT_POLL_S)
                    continue
                frozen = self._run_trial(opened, objective, claim)
                report.trials.append(frozen.number)
                report.states[frozen.state.name] = report.states.get(frozen.state.name, 0) + 1
                if frozen.state == optuna.trial.TrialState.FAIL:
                    consecutive_failures += 1
                    if consecutive_failures >= self.config.optuna.max_consecutive_failures:
                        logger.error("worker %d: %d trials failed in a row; stopping (raise "
                                     "optuna:max_consecutive_failures to allow more)",
                                     self.worker_index, consecutive_failures)
                        report.stop = Stop.FAILURES
                        break
                else:
                    consecutive_failures = 0
        finally:
            opened.lock.close()
        logger.info("worker %d: stopped: %s; ran %d trial(s) %s", self.worker_index,
                    report.stop.value if report.stop else "?", len(report.trials), report.states)
        return report

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
        import optuna

        done = opened.storage.get_all_trials(opened.study_id, deepcopy=False,
                                             states=(optuna.trial.TrialState.COMPLETE,))
        for t in done[-50:]:
            if t.datetime_start and t.datetime_complete:
                self._durations.append((t.datetime_complete - t.datetime_start).total_seconds())

    def _claim(self, opened: Opened) -> optuna.Trial | Stop | None:
        """Start a trial if the budget allows: a Trial, Stop.BUDGET, or None (wait and retry)."""
        import optuna

        def attempt() -> optuna.Trial | Stop | None:
            TS = optuna.trial.TrialState
            with opened.lock.hold():
                if self.config.optuna.heartbeat_interval:
                    fail_stale_trials(opened.study)
                c = counts(opened)
                finished = c[TS.COMPLETE.name] + c[TS.PRUNED.name]
                n_trials = self.config.optuna.n_trials
                if finished >= n_trials:
                    return Stop.BUDGET
                if finished + c[TS.RUNNING.name] >= n_trials:
                    # Only wait where a dead worker's trial can go stale and be retried.
                    return None if self.config.optuna.heartbeat_interval else Stop.BUDGET
                return ask(opened.study)

        return with_db_retry(attempt, seconds=self.config.optuna.db_retry_seconds, what="starting a trial")

    def _run_trial(self, opened: Opened, objective: BaseObjective, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        import optuna

        TS = optuna.trial.TrialState
        trial_id = opened.storage.get_trial_id_from_study_id_trial_number(opened.study_id, trial.number)
        started = time.time()
        values: Any = None
        state = TS.COMPLETE
        error: str | None = None
        heartbeat = (_Heartbeat(opened.storage, trial_id, self.config.optuna.heartbeat_interval)
                     if self.config.optuna.heartbeat_interval else None)
        try:
            if heartbeat is not None:
                heartbeat.__enter__()
            self._in_trial = True
            try:
                if self._stop_requested:  # the signal came between asking and starting
                    raise Interrupted("worker interrupted before the trial started")
                origin = with_db_retry(lambda: self._start_bookkeeping(opened, trial, trial_id),
                                       seconds=self.config.optuna.db_retry_seconds,
                                       what=f"starting trial {trial.number}")
                logger.info("worker %d: trial %d started%s", self.worker_index, trial.number,
                            f" (retry of trial {origin})" if origin is not None else "")
                values = objective(trial)
            finally:
                self._in_trial = False
                signal.alarm(0) if threading.current_thread() is threading.main_thread() else None
        except optuna.TrialPruned as err:
            state = TS.PRUNED
            logger.info("worker %d: trial %d pruned: %s", self.worker_index, trial.number, err)
        except Exception as err:
            state = TS.FAIL
            error = traceback.format_exc()
            if isinstance(err, (HyperOptError, Interrupted)):
                logger.error("worker %d: trial %d failed: %s", self.worker_index, trial.number, err)
            else:
                logger.error("worker %d: trial %d failed:\n%s", self.worker_index, trial.number, error)
        finally:
            if heartbeat is not None:
                heartbeat.__exit__(None, None, None)
        self._durations.append(time.time() - started)
        frozen = self._record(opened, trial, trial_id, state, values, error)
        if self._stop_requested and frozen.state == TS.FAIL and error and "Interrupted" in error:
            self._retry(opened, frozen)
        return frozen

    def _retry(self, opened: Opened, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue an interrupted trial (scancel, preemption, Ctrl-C) like a stale one: a WAITING
        copy with the same parameters, within optuna:max_retry."""
        callback = getattr(opened.storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is None:
            import optuna

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.config.optuna.max_retry)
                            if self.config.optuna.max_retry else None)
        if callback is not None:
            with_db_retry(lambda: callback(opened.study, frozen), seconds=self.config.optuna.db_retry_seconds,
                          what=f"re-queueing trial {frozen.number}")
            logger.info("worker %d: trial %d re-queued to run again", self.worker_index, frozen.number)

    @staticmethod
    def _start_bookkeeping(opened: Opened, trial: optuna.Trial, trial_id: int) -> int | None:
        """Record where the trial runs; return the trial it retries, if it is a retried copy."""
        origin = opened.storage.get_trial_system_attrs(trial_id).get("failed_trial")
        attrs: dict[str, Any] = dict(run_context())
        if origin is not None:
            attrs["retry_of"] = origin  # same parameters, same checkpoint folder
        for key, value in attrs.items():
            if value != "":  # one INSERT each: skip what is not there (no Slurm job, no GPU)
                trial.set_user_attr(key, value)
        return origin

    def _record(self, opened: Opened, trial: optuna.Trial, trial_id: int, state: Any, values: Any,
                error: str | None) -> optuna.trial.FrozenTrial:
        """Tell optuna and write the CSV; a database outage is waited out, not fatal."""
        import optuna

        seconds = self.config.optuna.db_retry_seconds

        def tell() -> optuna.trial.FrozenTrial:
            if error is not None:
                trial.set_user_attr("error", error[-8000:])
            if state == optuna.trial.TrialState.COMPLETE:
                return opened.study.tell(trial, values, skip_if_finished=True)
            return opened.study.tell(trial, state=state, skip_if_finished=True)

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
        results.write_trial_csv(self.config.trials_dir, frozen, param_names=self._param_names,
                                metric_names=self._metric_names, n_values=len(self.config.optuna.directions))
        return frozen

    def _write_orphan(self, trial: optuna.Trial, state: Any, values: Any, error: str | None) -> None:
        """Keep a result the database never received, so that it is not lost."""
        import json

        path = self.config.save_path / "unrecorded" / f"trial_{trial.number}.json"
        results.atomic_write_text(path, json.dumps({
            "number": trial.number, "state": state.name, "values": values, "params": trial.params,
            "error": error, **run_context()}, indent=2, default=str))
        logger.error("the database stayed unreachable; trial %d's result is kept in %s", trial.number, path)


def is_db_down(err: BaseException) -> bool:
    return is_connection_error(err) or isinstance(err, StorageError)
