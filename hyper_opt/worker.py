"""One worker: claim a trial within the global budget, train it, record it, repeat.

Every Slurm job and every local worker process runs this loop. Per trial:

1. claim: under the study's budget lock, count finished (COMPLETE + PRUNED) and RUNNING trials
   and start a trial (pop a WAITING one or create one) only when that leaves the budget
   unexceeded, recording its first heartbeat and run context before the lock is released. On
   PostgreSQL all of it is one transaction (:meth:`BudgetLock.transaction`): a worker killed in
   the middle leaves nothing. This makes the final count exact with any number of workers, and
   no RUNNING trial is ever without a heartbeat or an owner. The lock is held for a few queries
   only: the ``optuna.Trial`` (where the sampler's ``before_trial`` runs, and relative sampling
   at the first suggestion) is built after it is released, and stale trials (dead workers, and
   RUNNING trials that never recorded a heartbeat; their copies are re-queued) are failed
   outside it, at most once per ``heartbeat_interval`` and whenever the budget is full;
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
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from hyper_opt import failpoints, results, stopping
from hyper_opt.exceptions import HyperOptError, Interrupted, StorageError  # noqa: F401 - Interrupted re-exported
from hyper_opt.accounting import STOPPED_ATTR
from hyper_opt.code_errors import code_error_stop, stop_on_code_error
from hyper_opt.distributed import RankLost, TrialSize, run_ranks
from hyper_opt.heartbeat import Heartbeat
from hyper_opt.loader import instantiate
from hyper_opt.signals import interrupt_at_safe_point, stop_tracing
from hyper_opt.objective import BaseObjective, trial_device
from hyper_opt.registry import requeue_callback
from hyper_opt.schema import HyperConfig
from hyper_opt.storage import with_db_retry
from hyper_opt.study import (Opened, counts, fail_silent_trials, fail_stale_trials, first_heartbeat, make_trial,
                             open_study, recent_durations, reload_study, set_user_attrs, start_trial)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

WAIT_POLL_S = 2.0
PREEMPT_GRACE_S = 45  # after SIGUSR1, how long a trial may run on before it is interrupted
# Set (to anything) to keep, per claim, how long the budget lock was held (Worker.timing:
# "lock_s", "claim_s", "trial_built_s"); for benchmarks/lock_hold.py, off otherwise.
TIMING_ENV = "HYPER_OPT_CLAIM_TIMING"


class Stop(enum.Enum):
    BUDGET = "the study reached n_trials finished trials"
    WALLTIME = "not enough wall time left for another trial"
    SIGNAL = "interrupted"
    FAILURES = "too many consecutive failed trials"
    MAX_TRIALS = "this worker's own trial limit was reached"
    CODE_ERROR = "an error in the objective's code or files that every trial would meet"
    LIMIT = "the study's budget (optuna:budget) or stop rule (optuna:stop) ended the search"


@dataclass
class Claimed:
    """A trial this worker started: its heartbeat and run context are already recorded."""

    trial: optuna.Trial
    trial_id: int
    origin: int | None  # the trial it retries, for a re-queued copy


@dataclass
class WorkerReport:
    trials: list[int] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    stop: Stop | None = None


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
                 deadline: float | None = None, max_trials: int | None = None, size: TrialSize | None = None) -> None:
        self.config = config
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
        self._last_scan = -float("inf")  # time.monotonic() of the last stale-trial scan
        self._last_error: BaseException | None = None  # what failed the last trial
        self._interrupt_pending: str | None = None  # a signal deferred out of a finalizer (signals.py)
        self._stop_signal: str | None = None  # the first stopping signal: why an interrupted trial stopped
        self.timing: list[dict[str, float]] | None = [] if os.environ.get(TIMING_ENV) else None
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
        opened = open_study(self.config, create=True, worker_index=self.worker_index, worker=True)
        device = trial_device(self.config.optuna.gpu)
        objective = instantiate(self.config, self.model, study=opened.study, device=device)
        objective._stop_event = self.stop_requested
        objective._db_retry_seconds = self.config.optuna.db_retry_seconds
        logger.info("worker %d: study %r, device %s, pid %d%s", self.worker_index,
                    self.config.optuna.study_name, device, os.getpid(),
                    f"; {self.size.describe()}" if self.size.ranks > 1 else "")
        self._seed_durations(opened)
        consecutive_failures = 0
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
                    time.sleep(WAIT_POLL_S)
                    continue
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
            if report.stop is Stop.BUDGET:
                self._write_missing_csvs(opened)
        finally:
            opened.lock.close()
        logger.info("worker %d: stopped: %s; ran %d trial(s) %s", self.worker_index,
                    report.stop.value if report.stop else "?", len(report.trials), report.states)
        return report

    def _write_missing_csvs(self, opened: Opened) -> None:
        """At the end of the study, write the CSV of every finished trial that has none: its
        worker died after recording it, or its disk was full then (derived from the study)."""
        import optuna

        TS = optuna.trial.TrialState
        try:
            trials = with_db_retry(lambda: opened.storage.get_all_trials(
                opened.study_id, deepcopy=False, states=(TS.COMPLETE, TS.PRUNED, TS.FAIL)),
                seconds=self.config.optuna.db_retry_seconds, what="reading the finished trials")
            for t in trials:
                if not results.trial_csv_path(self.config.trials_dir, t.number).exists():
                    results.write_trial_csv(self.config.trials_dir, t, param_names=self._param_names,
                                            metric_names=self._metric_names,
                                            n_values=len(self.config.optuna.directions))
                    logger.info("worker %d: wrote the missing CSV of trial %d", self.worker_index, t.number)
        except (OSError, HyperOptError) as err:
            logger.warning("worker %d: could not write missing trial CSVs: %s", self.worker_index, err)

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

    def _scan_stale(self, opened: Opened) -> None:
        """Fail stale trials (optuna's heartbeat check) and RUNNING trials that never beat; their
        copies are re-queued. Outside the budget lock where the claim is one transaction (a live
        worker's trial is never visible there without its heartbeat); under it elsewhere. Only
        one process succeeds in failing a trial (optuna's ``set_trial_state_values`` refuses a
        finished one), so only one copy is made."""
        spec = self.config.optuna
        if not spec.heartbeat_interval:
            return
        self._last_scan = time.monotonic()
        fail_stale_trials(opened.study)
        fail_silent_trials(opened, grace_period=spec.grace_period or 2 * spec.heartbeat_interval)

    def _claim(self, opened: Opened) -> Claimed | Stop | None:
        """Start a trial if the budget allows: a Claimed trial, Stop.BUDGET, or None (wait and retry).

        The new trial's first heartbeat and its run context are recorded here, under the budget
        lock, so that no other worker ever sees a RUNNING trial it cannot account for; the
        ``optuna.Trial`` is built once the lock is released."""
        import optuna

        spec = self.config.optuna
        atomic = opened.lock.atomic(opened.storage)
        due = bool(spec.heartbeat_interval) and time.monotonic() - self._last_scan >= spec.heartbeat_interval
        timing: dict[str, float] = {}

        def attempt() -> tuple[int, int | None] | Stop | None:
            TS = optuna.trial.TrialState
            created = False
            made: list[int] = []
            started = time.perf_counter()
            try:
                with opened.lock.transaction(opened.storage) as conn:
                    locked = time.perf_counter()
                    failpoints.hit("holding_budget_lock")
                    if due and not atomic:
                        self._scan_stale(opened)
                    c = counts(opened, conn)
                    finished = c[TS.COMPLETE.name] + c[TS.PRUNED.name]
                    if finished >= spec.n_trials:
                        return Stop.BUDGET
                    if stopping.applies(spec) and stopping.reached(opened, spec, self.worker_index, conn):
                        return Stop.LIMIT
                    if finished + c[TS.RUNNING.name] >= spec.n_trials:
                        # Only wait where a dead worker's trial can go stale and be retried.
                        return None if spec.heartbeat_interval else Stop.BUDGET
                    if not opened.lock.owned():  # the journal's lease, lost while suspended: count again
                        logger.warning("worker %d: the budget lock was taken over while this worker was "
                                       "suspended; nothing written, claiming again", self.worker_index)
                        return None
                    created = True
                    trial_id, origin = start_trial(opened, waiting=c[TS.WAITING.name] > 0,
                                                   owner=None if atomic else self._owner())
                    made.append(trial_id)
                    failpoints.hit("after_ask")
                    failpoints.hit("before_heartbeat")
                    if spec.heartbeat_interval:
                        first_heartbeat(opened, trial_id, conn)
                    self._start_bookkeeping(opened, trial_id, origin, conn)
                    committing = time.perf_counter()
                timing.update(lock_s=time.perf_counter() - locked, wait_s=locked - started,
                              commit_s=time.perf_counter() - committing)
                return trial_id, origin
            except BaseException:
                if created and atomic:  # rolled back: optuna's cache may hold a trial that is not there
                    with contextlib.suppress(Exception):
                        reload_study(opened)
                if made and not atomic:  # committed, never ran: fail and re-queue it now, as a stale scan would
                    with contextlib.suppress(Exception):
                        self._abandon(opened, made[0])
                raise

        if due and atomic:
            with_db_retry(lambda: self._scan_stale(opened), seconds=spec.db_retry_seconds,
                          what="failing stale trials")
        claim_started = time.perf_counter()
        result = with_db_retry(attempt, seconds=spec.db_retry_seconds, what="starting a trial")
        if result is None and not due:  # about to wait: free the slots of dead workers first
            self._scan_before_waiting(opened, atomic)
        if result is None or isinstance(result, Stop):
            return result
        trial_id, origin = result
        built = time.perf_counter()

        def build() -> optuna.Trial:  # committed: the trial is RUNNING with a heartbeat whatever happens here
            failpoints.hit("building_trial")
            return make_trial(opened, trial_id)

        trial = with_db_retry(build, seconds=spec.db_retry_seconds, what=f"building trial {trial_id}")
        if self.timing is not None:
            self.timing.append({**timing, "claim_s": built - claim_started,
                                "trial_built_s": time.perf_counter() - built})
        return Claimed(trial, trial_id, origin)

    def _scan_before_waiting(self, opened: Opened, atomic: bool) -> None:
        """Fail stale trials before waiting for a full budget to free up (under the budget lock
        where the claim is no transaction)."""

        def scan() -> None:
            if atomic:
                self._scan_stale(opened)
                return
            with opened.lock.hold():
                self._scan_stale(opened)

        with_db_retry(scan, seconds=self.config.optuna.db_retry_seconds, what="failing stale trials")

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

    def _start_bookkeeping(self, opened: Opened, trial_id: int, origin: int | None, conn: Any = None) -> None:
        """Record where the trial runs (and which trial a retried copy retries): one statement."""
        attrs: dict[str, Any] = self._owner()  # no Slurm job, no GPU: left out
        if origin is not None:
            attrs["retry_of"] = origin  # same parameters, same checkpoint folder
        set_user_attrs(opened, trial_id, attrs, conn)

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
        """Mark a trial FAIL with ``why`` as its error. The failpoints' ``failed`` does it behind
        the worker's back, as ``cancel``, ``--reload`` or another worker's stale scan do."""
        import optuna

        opened.storage.set_trial_user_attr(trial_id, "error", why)
        opened.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)

    def _abandon(self, opened: Opened, trial_id: int) -> None:
        """A trial the claim started but could not finish starting (it never ran): FAIL, and a
        WAITING copy within optuna:max_retry, as a stale scan does later where there is one."""
        self._fail_elsewhere(opened, trial_id, "the worker's claim failed after starting it")
        callback = requeue_callback(opened.storage, self.config.optuna.max_retry)
        if callback is not None:
            callback(opened.study, opened.storage.get_trial(trial_id))

    def _owner(self) -> dict[str, Any]:
        """The run context, and the GPUs the trial holds (for its GPU-hours; none on the CPU)."""
        owner: dict[str, Any] = {k: v for k, v in run_context().items() if v != ""}
        visible = [g for g in owner.get("cuda_visible_devices", "").split(",") if g.strip() not in ("", "-1")]
        owner["gpus"] = len(visible) * self.size.nodes_per_trial  # 0 also replaces a retried original's
        return owner

    def _write_orphan(self, trial: optuna.Trial, state: Any, values: Any, error: str | None) -> None:
        """Keep a result the database never received, so that it is not lost."""
        import json

        path = self.config.save_path / "unrecorded" / f"trial_{trial.number}.json"
        results.atomic_write_text(path, json.dumps({
            "number": trial.number, "state": state.name, "values": values, "params": trial.params,
            "error": error, **run_context()}, indent=2, default=str))
        logger.error("the database stayed unreachable; trial %d's result is kept in %s", trial.number, path)
