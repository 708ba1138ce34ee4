"""The claim: start a trial only when the study's global budget allows it, and fail stale trials.

Under the study's budget lock, count finished (COMPLETE + PRUNED) and RUNNING trials and start a
trial (pop a WAITING one or create one) only when that leaves the budget unexceeded, recording its
first heartbeat and run context before the lock is released. On PostgreSQL all of it is one
transaction (:meth:`BudgetLock.transaction`): a worker killed in the middle leaves nothing. This
makes the final count exact with any number of workers, and no RUNNING trial is ever without a
heartbeat or an owner. The lock is held for a few queries only: the ``optuna.Trial`` (where the
sampler's ``before_trial`` runs, and relative sampling at the first suggestion) is built after it
is released, and stale trials (dead workers, and RUNNING trials that never recorded a heartbeat;
their copies are re-queued) are failed outside it, at most once per ``heartbeat_interval`` and
whenever the budget is full.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyper_opt import failpoints, server_side, stopping
from hyper_opt.registry import requeue_callback
from hyper_opt.schema import HyperConfig
from hyper_opt.storage import _sqlstate, with_db_retry
from hyper_opt.study import (Opened, counts, fail_silent_trials, fail_stale_on_server, fail_stale_trials,
                             first_heartbeat, make_trial, reload_study, remember_trial, set_user_attrs,
                             start_trial)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

# Set (to anything) to keep, per claim, how long the budget lock was held (Worker.timing:
# "lock_s", "claim_s", "trial_built_s"); for benchmarks/lock_hold.py, off otherwise.
TIMING_ENV = "HYPER_OPT_CLAIM_TIMING"
# Set (to anything) to keep PostgreSQL on the path without hyper_opt's server-side objects (what a
# database user without CREATE rights gets): for tests and the before/after benchmarks.
NO_SERVER_ENV = "HYPER_OPT_NO_SERVER_SIDE"


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


def owner(nodes_per_trial: int = 1) -> dict[str, Any]:
    """The run context without its empty entries (no Slurm job, no GPU: left out), and the GPUs
    the trial holds, for its GPU-hours (hyper_opt.accounting): its visible GPUs on each of its
    nodes; 0 on the CPU (which also replaces a retried original's)."""
    found: dict[str, Any] = {k: v for k, v in run_context().items() if v != ""}
    visible = [g for g in found.get("cuda_visible_devices", "").split(",") if g.strip() not in ("", "-1")]
    found["gpus"] = len(visible) * nodes_per_trial
    return found


def fail_elsewhere(opened: Opened, trial_id: int, why: str = "failed by another process (failpoint)") -> None:
    """Mark a trial FAIL with ``why`` as its error. The failpoints' ``failed`` does it behind
    the worker's back, as ``cancel``, ``--reload`` or another worker's stale scan do."""
    import optuna

    opened.storage.set_trial_user_attr(trial_id, "error", why)
    opened.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


class Claimer:
    """One worker's claims and stale-trial scans (its state: when it last scanned, the timings)."""

    def __init__(self, config: HyperConfig, *, worker_index: int = 0, nodes_per_trial: int = 1) -> None:
        self.config = config
        self.worker_index = worker_index
        self.nodes_per_trial = nodes_per_trial
        self._last_scan = -float("inf")  # time.monotonic() of the last stale-trial scan (or turn asked for)
        self.timing: list[dict[str, float]] | None = [] if os.environ.get(TIMING_ENV) else None
        self._server: bool | None = None  # hyper_opt's server-side objects in use (None: not decided yet)
        self.told: int | None = None  # the trial this worker told last, for the next claim's count (server path)
        # Whether this worker writes the CSVs that dead workers left missing when the budget is
        # full: every worker on the transaction path; on the server path the first to see it.
        self.sweeps = True

    def server_side(self, opened: Opened) -> bool:
        """Whether this worker uses hyper_opt's objects on the server (PostgreSQL; see
        hyper_opt.server_side): decided once, and off for good when they cannot be created."""
        if self._server is None:
            # A budget (optuna:budget) or stop rule is checked under the lock from the trials' times:
            # that claim keeps the transaction path, where the check runs (hyper_opt.stopping).
            self._server = (server_side.supported(opened.storage) and not os.environ.get(NO_SERVER_ENV)
                            and not stopping.applies(self.config.optuna))
        return self._server

    def scan_interval(self, opened: Opened) -> float:
        """How often this worker looks for stale trials: every heartbeat interval; on PostgreSQL it
        asks for the study's scan turn every half interval instead (one worker of the study gets
        it per half interval), so that a stale trial is failed within ``heartbeat_interval`` of
        going stale whatever the number of workers."""
        interval = float(self.config.optuna.heartbeat_interval or 0)
        return interval / 2 if self.server_side(opened) else interval

    def _scan_stale(self, opened: Opened) -> None:
        """Fail stale trials (optuna's heartbeat check) and RUNNING trials that never beat; their
        copies are re-queued. Outside the budget lock where the claim is one transaction (a live
        worker's trial is never visible there without its heartbeat); under it elsewhere. Only
        one process succeeds in failing a trial (optuna's ``set_trial_state_values`` refuses a
        finished one), so only one copy is made. On PostgreSQL only the worker that takes the
        study's scan turn looks (one statement; the others skip): the scans per interval do not
        grow with the number of workers."""
        spec = self.config.optuna
        if not spec.heartbeat_interval:
            return
        self._last_scan = time.monotonic()
        grace = spec.grace_period or 2 * spec.heartbeat_interval
        if self.server_side(opened):
            try:
                fail_stale_on_server(opened, interval_s=self.scan_interval(opened), grace_period=grace)
                return
            except server_side.NotInstalled:
                self._server = False
        fail_stale_trials(opened.study)
        fail_silent_trials(opened, grace_period=grace)

    def claim(self, opened: Opened) -> Claimed | Stop | None:
        """Start a trial if the budget allows: a Claimed trial, Stop.BUDGET, or None (wait and retry).

        The new trial's first heartbeat and its run context are recorded here, under the budget
        lock, so that no other worker ever sees a RUNNING trial it cannot account for; the
        ``optuna.Trial`` is built once the lock is released. On PostgreSQL the claim is one
        statement (hyper_opt.server_side), so the lock is held for the server's time only."""
        spec = self.config.optuna
        on_server = self.server_side(opened)
        atomic = on_server or opened.lock.atomic(opened.storage)
        due = bool(spec.heartbeat_interval) and time.monotonic() - self._last_scan >= self.scan_interval(opened)
        timing: dict[str, float] = {}
        if due and atomic:
            with_db_retry(lambda: self._scan_stale(opened), seconds=spec.db_retry_seconds,
                          what="failing stale trials")
        claim_started = time.perf_counter()
        made: list[server_side.ServerClaim] = []
        try:
            result = with_db_retry(
                (lambda: self._attempt_on_server(opened, timing, made)) if on_server
                else (lambda: self._attempt(opened, atomic=atomic, due=due, timing=timing)),
                seconds=spec.db_retry_seconds, what="starting a trial")
        except server_side.NotInstalled:
            self._server = False
            return self.claim(opened)
        if result is None and not due:  # about to wait: free the slots of dead workers first
            self._scan_before_waiting(opened, atomic)
        if result is None or isinstance(result, Stop):
            return result
        trial_id, origin = result
        built = time.perf_counter()

        def build() -> optuna.Trial:  # committed: the trial is RUNNING with a heartbeat whatever happens here
            failpoints.hit("building_trial")
            if made:  # started on the server, behind the back of optuna's cache
                remember_trial(opened, trial_id, number=made[-1].number, started_utc=made[-1].started,
                               popped=made[-1].popped)
            return make_trial(opened, trial_id)

        trial = with_db_retry(build, seconds=spec.db_retry_seconds, what=f"building trial {trial_id}")
        if self.timing is not None:
            self.timing.append({**timing, "claim_s": built - claim_started,
                                "trial_built_s": time.perf_counter() - built})
        return Claimed(trial, trial_id, origin)

    def _attempt_on_server(self, opened: Opened, timing: dict[str, float],
                           made: list[server_side.ServerClaim]) -> tuple[int, int | None] | Stop | None:
        """One try of the claim as one statement on PostgreSQL (hyper_opt.server_side.claim)."""
        spec = self.config.optuna
        failpoints.hit("holding_budget_lock")  # the nearest point: just before; nothing is written yet
        started = time.perf_counter()
        try:
            got = server_side.claim(opened.storage, study_id=opened.study_id, lock_key=opened.lock.key,
                                    n_trials=spec.n_trials, can_wait=bool(spec.heartbeat_interval),
                                    lock_timeout_s=opened.lock.timeout_s, heartbeat=bool(spec.heartbeat_interval),
                                    attrs=owner(self.nodes_per_trial), done=self.told)
        except Exception as err:
            if _sqlstate(err) == "55P03":  # lock_timeout: a hung holder, not an outage
                raise opened.lock.stuck() from None
            raise
        self.told = None  # counted (or already counted by another claim)
        timing.update(lock_s=got.held_s, call_s=time.perf_counter() - started)
        if not got.started_trial:
            self.sweeps = got.outcome == "budget-first"
            return None if got.outcome == "wait" else Stop.BUDGET
        assert got.trial_id is not None
        made.append(got)
        try:  # committed: a failure from here on fails and re-queues the trial at once
            failpoints.hit("after_ask")
            failpoints.hit("before_heartbeat")
        except BaseException:
            with contextlib.suppress(Exception):
                self._abandon(opened, got.trial_id)
            raise
        return got.trial_id, got.origin

    def _attempt(self, opened: Opened, *, atomic: bool, due: bool,
                 timing: dict[str, float]) -> tuple[int, int | None] | Stop | None:
        """One try of the claim under the budget lock (retried by the caller on an outage)."""
        import optuna

        spec = self.config.optuna
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
                                               owner=None if atomic else owner(self.nodes_per_trial))
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

    def _start_bookkeeping(self, opened: Opened, trial_id: int, origin: int | None, conn: Any = None) -> None:
        """Record where the trial runs (and which trial a retried copy retries): one statement."""
        attrs: dict[str, Any] = owner(self.nodes_per_trial)
        if origin is not None:
            attrs["retry_of"] = origin  # same parameters, same checkpoint folder
        set_user_attrs(opened, trial_id, attrs, conn)

    def _abandon(self, opened: Opened, trial_id: int) -> None:
        """A trial the claim started but could not finish starting (it never ran): FAIL, and a
        WAITING copy within optuna:max_retry, as a stale scan does later where there is one."""
        fail_elsewhere(opened, trial_id, "the worker's claim failed after starting it")
        callback = requeue_callback(opened.storage, self.config.optuna.max_retry)
        if callback is not None:
            callback(opened.study, opened.storage.get_trial(trial_id))
