"""Run a study's workers as processes on this machine and wait for them.

Each worker is ``python -m hyper_opt.run HYPER.yml MODEL.yml --worker-index i`` (the command a
Slurm job runs), its output in ``<save_path>/logs/worker_<i>.log``. The parent shows progress
from the study itself. Ctrl-C (or SIGTERM) asks every worker to stop; a worker that does not
stop in time is killed, and any trial it left RUNNING is failed and re-queued here, so that
nothing stays RUNNING.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from hyper_opt import secrets
from hyper_opt.schema import HyperConfig
from hyper_opt.storage import with_db_retry
from hyper_opt.study import Opened, best_summary, counts, n_finished

logger = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


def worker_command(config: HyperConfig, *, worker_index: int, extra: Sequence[str] = ()) -> list[str]:
    """The argv of one worker (absolute paths, the same overrides as the parent; when one holds a
    password they all travel in the environment instead, see :mod:`hyper_opt.secrets`)."""
    from hyper_opt.launch.job import worker_argv

    model = str(config.model_path) if config.model_path is not None else None
    overrides = secrets.for_worker(config.overrides)[0]  # a password goes by environment
    return worker_argv(str(config.hyper_path), model, overrides, worker_index=worker_index,
                       gpus_per_trial=config.local_gpus_per_trial) + list(extra)


def local_gpu_groups(config: HyperConfig, workers: int, env: dict[str, str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each local worker of a search with ``local:gpus_per_trial`` > 1:
    its own group of the visible GPUs while there are enough, else unchanged (None)."""
    from hyper_opt.launch.job import visible_gpus

    g = config.local_gpus_per_trial
    gpus = visible_gpus(env)
    if g == 1 or len(gpus) < g * workers:
        if g > 1 and gpus:
            logger.warning("local:gpus_per_trial is %d with %d worker(s) but %d GPU(s) are visible: the "
                           "workers' ranks share them", g, workers, len(gpus))
        return [None] * workers
    return [",".join(gpus[i * g:(i + 1) * g]) for i in range(workers)]


_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} finished [{elapsed}]{postfix}"


class _Progress:
    """The study's progress (finished of n_trials, running, failed, best) as a tqdm bar redrawn in
    place on a terminal; in a log file, the same line (tqdm's format_meter) at most every 10 s."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        from tqdm import tqdm

        self.total, self.stream = total, stream
        self.bar = (tqdm(total=total, file=stream, unit="trial", dynamic_ncols=True, mininterval=0.5,
                         leave=True, bar_format=_BAR_FORMAT) if stream.isatty() else None)
        self._started = time.monotonic()
        self._last_print = 0.0
        self._last_done = -1
        self._best: str | None = None
        self._best_at = 0.0

    BEST_EVERY_S = 5.0  # on a terminal, the best value is read again at most this often

    def show(self, finished: int, running: int, failed: int, best: str | Callable[[], str]) -> None:
        """``best`` may be a function: it is called only when the line is drawn and the finished
        count changed (optuna's ``best_trial`` is a query and a trial read, ~80 ms on PostgreSQL;
        polled every second it took a tenth of a core from the workers beside it)."""
        done = min(finished, self.total)
        if self.bar is not None:
            now = time.monotonic()
            if not callable(best):
                self._best = best
            elif self._best is None or (done != self.bar.n and (now - self._best_at >= self.BEST_EVERY_S
                                                                or done == self.total)):
                self._best, self._best_at = best(), now
            self.bar.set_postfix_str(f"{running} running, {failed} failed  {self._best}".rstrip(), refresh=False)
            if done != self.bar.n:
                self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done != self._last_done and (now - self._last_print > 10 or done == self.total):
            from tqdm import tqdm

            postfix = f"{running} running, {failed} failed  {best() if callable(best) else best}".rstrip()
            line = tqdm.format_meter(done, self.total, now - self._started, ncols=100, bar_format=_BAR_FORMAT,
                                     postfix=postfix)
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_print, self._last_done = now, done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


Started = list[tuple[subprocess.Popen[bytes], Any]]  # the worker processes and their open log files


def start_workers(config: HyperConfig, workers: int, *, debug: bool = False, wait_for_go: bool = False) -> Started:
    """Start ``workers`` worker processes. ``wait_for_go``: they import everything and load the
    files, then wait on stdin (``--wait-for-go``) until :func:`release` (or :func:`abandon`): the
    launcher starts them before its own checks, so that a worker's start-up (about as long as a
    plain optuna process's) runs beside them instead of after them (docs/benchmarks.md, start-up)."""
    log_dir = config.save_path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: Started = []
    extra = ["--debug"] if debug else []
    if wait_for_go:
        extra += ["--wait-for-go", "--schema-checked"]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(secrets.for_worker(config.overrides)[1])
    for i, gpus in enumerate(local_gpu_groups(config, workers, env)):
        log = open(log_dir / f"worker_{i}.log", "ab")  # noqa: SIM115 - closed by run_local or abandon
        proc = subprocess.Popen(worker_command(config, worker_index=i, extra=extra), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
                                start_new_session=True,
                                env=env if gpus is None else {**env, "CUDA_VISIBLE_DEVICES": gpus})
        procs.append((proc, log))
    return procs


def release(procs: Started) -> None:
    """Let workers started with ``wait_for_go`` open the study (the launcher's checks passed)."""
    for proc, _ in procs:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # a worker that died meanwhile: run_local reports it
                proc.stdin.write(b"go\n")
                proc.stdin.close()


def abandon(procs: Started) -> None:
    """Stop workers started with ``wait_for_go`` that will not be released (the launcher refused
    or found nothing to do). Until ``go`` a worker only imports and reads the files, so it is
    killed rather than left to finish importing (about a second of CPU each) and see the end of
    its input."""
    for proc, log in procs:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        log.close()


def run_local(config: HyperConfig, opened: Opened, *, workers: int, debug: bool = False,
              stream: IO[str] | None = None, poll_s: float = 1.0, started: Started | None = None) -> int:
    """Start ``workers`` worker processes (or release the ``started`` ones) and wait; return the
    number that exited with an error."""
    stream = stream or sys.stderr
    log_dir = config.save_path / "logs"
    procs: Started = []
    interrupted = False
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt
        for proc, _ in procs:  # a second Ctrl-C reaches the workers too (their own sessions)
            if proc.poll() is None:
                proc.send_signal(signum)

    # Before any worker runs: a Ctrl-C from here on stops the workers instead of leaving them behind.
    for sig in previous:
        signal.signal(sig, on_signal)
    progress = _Progress(config.optuna.n_trials, stream)
    record: Path | None = None
    try:
        try:
            procs.extend(start_workers(config, workers, debug=debug) if started is None else started)
            release(procs)
            logger.info("started %d local worker(s); logs in %s", len(procs), log_dir)
            record = record_local_workers(config, [p.pid for p, _ in procs])
            while any(p.poll() is None for p, _ in procs):
                _show(progress, opened)
                _wait_all(procs, poll_s)
        except KeyboardInterrupt:
            stream.write("\nstopping workers (the running trials are recorded as FAIL)...\n")
            _stop(procs)
        _show(progress, opened)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.close()
        for _, log in procs:
            log.close()
    with_db_retry(lambda: _fail_orphans(opened, [p.pid for p, _ in procs], max_retry=config.optuna.max_retry),
                  seconds=config.optuna.db_retry_seconds, what="checking for trials left RUNNING")
    if record is not None:
        record.unlink(missing_ok=True)  # after the orphans: cancel waits for this file to go
    bad = [(i, p.returncode) for i, (p, _) in enumerate(procs) if p.returncode != 0]
    for i, rc in bad:
        if not interrupted:
            tail = _tail(log_dir / f"worker_{i}.log")
            stream.write(f"worker {i} exited with code {rc}; last lines of {log_dir / f'worker_{i}.log'}:\n{tail}\n")
    return len(bad)


LOCAL_WORKERS_FILE = "local_workers.json"


def record_local_workers(config: HyperConfig, pids: Sequence[int]) -> Path:
    """``save_path/local_workers.json``: this process (which stops its workers on SIGTERM, as on
    Ctrl-C), its host and its workers, so that ``hyper-opt cancel`` can stop a local search."""
    import json
    import socket

    from hyper_opt.results import atomic_write_text

    path = config.save_path / LOCAL_WORKERS_FILE
    atomic_write_text(path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                        "workers": list(pids)}))
    return path


def _wait_all(procs: Started, seconds: float) -> None:
    """Wait until every worker has exited or ``seconds`` have passed (the search's end is seen at
    once, not at the next progress line)."""
    deadline = time.monotonic() + seconds
    for proc, _ in procs:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return


def _show(progress: _Progress, opened: Opened) -> None:
    try:
        c = counts(opened)
        progress.show(n_finished(c), c["RUNNING"], c["FAIL"], lambda: best_summary(opened.study))
    except Exception as err:  # the display must never stop the search
        logger.debug("progress: %s", err)


def _stop(procs: list[tuple[subprocess.Popen[bytes], Any]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid, STOP_GRACE_S)
            proc.kill()
            proc.wait()


def _fail_orphans(opened: Opened, pids: Sequence[int], *, max_retry: int) -> None:
    """Fail (and re-queue, within max_retry) RUNNING trials of workers that are gone."""
    from hyper_opt.study import fail_running_trials
    from hyper_opt.worker import run_context

    host = run_context()["hostname"]
    pids_text = {str(p) for p in pids}

    def reason(trial: Any) -> str | None:
        mine = trial.user_attrs.get("hostname") == host and str(trial.user_attrs.get("worker_pid")) in pids_text
        return "the worker process ended during the trial" if mine else None

    for number in fail_running_trials(opened, reason, max_retry=max_retry):
        logger.warning("trial %d was left RUNNING by a stopped worker; marked FAIL", number)


TAIL_MAX_BYTES = 256 * 1024  # the most a worker's log tail reads, however long its lines


def _tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a worker's log, indented, read backwards from its end in
    blocks (a 600 MB log cost 1.26 GB of memory and 7.5 s read whole): at most TAIL_MAX_BYTES."""
    block = 8192
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n", 0, len(data) - 1) < lines and end - pos < TAIL_MAX_BYTES:
                step = min(block, pos, TAIL_MAX_BYTES - (end - pos))
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").splitlines()  # the first may be cut: beyond ``lines``
    return "\n".join("    " + line for line in text[-lines:])
