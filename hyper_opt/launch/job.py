"""What a batch job runs on its node, for every scheduler: its workers, one per GPU slot.

A job (Slurm through submitit, or a PBS ``qsub`` script) runs ``gpus_per_node x
tasks_per_worker`` worker processes (``python -m hyper_opt.run``), each with
``CUDA_VISIBLE_DEVICES`` set to exactly one of the GPUs the scheduler gave the job (its
environment, never ``nvidia-smi``), or CPU workers when it gave none. Each worker gets the job's
deadline minus a margin, so that it starts no trial that would not end in time. The job forwards
SIGTERM/SIGINT (PBS at its walltime, ``qdel``) and SIGUSR1/SIGUSR2 to its workers; a worker
records its running trial as failed and re-queues it.

Only submission, the job script and the job queries differ per scheduler
(:mod:`hyper_opt.launch.slurm`, :mod:`hyper_opt.launch.pbs`). ``python -m hyper_opt.launch.job``
is the entry point of a PBS job script.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyper_opt.schema import SchedulerSpec

logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


PYTHON_VAR = "HYPER_OPT_PYTHON"


def interpreter(spec: SchedulerSpec, *, fallback: str | None = None) -> tuple[list[str], str]:
    """The shell lines that choose the job's Python, and how to name it in the job's command.

    ``python`` in the section names it outright. Otherwise, when ``bash``/``kernel`` lines are
    given they set up the environment (``conda activate env``, ``module load``), as they did with
    echo-opt: the job runs the ``python`` they put on PATH, after checking that it imports
    hyper_opt and submitit; where it does not, the job says so in its log and runs the
    submitting interpreter instead. Without such lines, the submitting interpreter runs.
    """
    fallback = fallback or sys.executable
    if spec.python:
        return [], spec.python
    if not [*spec.bash, *([spec.kernel] if spec.kernel else [])]:
        return [], shlex.quote(fallback)
    quoted = shlex.quote(fallback)
    # The path stays outside the double quotes (a quoted word of its own): inside them the shell
    # would still run a `$(...)` or backquote in it. printf, not echo: no backslash escapes either.
    lines = [
        f'{PYTHON_VAR}="$(command -v python || command -v python3)"',
        f'if [ -z "${PYTHON_VAR}" ] || ! "${PYTHON_VAR}" -c "import hyper_opt, submitit" >/dev/null 2>&1; then',
        "  printf '%s\\n' "
        f'"hyper_opt: the python set up by the bash/kernel lines (${{{PYTHON_VAR}:-none on PATH}}) cannot '
        f'import hyper_opt and submitit; running "{quoted}" instead (install hyper_opt in that environment, '
        f'or set python: in this section)" >&2',
        f"  {PYTHON_VAR}={quoted}",
        "fi",
    ]
    return lines, f'"${PYTHON_VAR}"'


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs the scheduler gave the job: CUDA_VISIBLE_DEVICES (set by Slurm, and by PBS with
    cgroups), else SLURM_JOB_GPUS; never nvidia-smi."""
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = env.get(key, "").strip()
        if value and value not in ("NoDevFiles", "-1"):
            return [g.strip() for g in value.split(",") if g.strip()]
    return []


def plan_workers(env: Mapping[str, str], *, gpus_per_node: int, tasks_per_worker: int,
                 gpus_per_trial: int = 1) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each worker of a job ("" for a CPU worker): one GPU each, or a
    group of ``gpus_per_trial`` GPUs for the ranks of a distributed trial."""
    gpus = visible_gpus(env)
    if gpus_per_node and len(gpus) > gpus_per_node:
        gpus = gpus[:gpus_per_node]
    g = max(gpus_per_trial, 1)
    if len(gpus) < g:  # no GPU (or too few for one trial): CPU workers, their ranks on the CPU
        return [""] * (max(gpus_per_node // g, 1) * tasks_per_worker)
    groups = [",".join(gpus[i:i + g]) for i in range(0, len(gpus) - g + 1, g)]
    return [group for group in groups for _ in range(tasks_per_worker)]


def jobs_workers(spec: SchedulerSpec, gpus: int | None) -> int:
    """Workers (trials at a time) in each job: from gpus_per_node, else from the GPUs the job's
    batch options ask for, one group of gpus_per_trial each."""
    if spec.gpus_per_node or not gpus:
        return spec.workers_per_job
    return max(gpus // spec.gpus_per_trial, 1) * spec.tasks_per_worker


def trial_plan(spec: SchedulerSpec, workers: int) -> str:
    """The --dry-run line about a trial's size: trials at a time, ranks per trial, GPUs per rank."""
    ranks = spec.gpus_per_trial * spec.nodes_per_trial
    if ranks == 1:
        return f"{workers} at a time per job, 1 rank each (train runs in the worker), 1 GPU per rank"
    where = (f"{spec.gpus_per_trial} per node on {spec.nodes_per_trial} nodes (srun/pbsdsh)"
             if spec.nodes_per_trial > 1 else "on the job's node")
    return (f"{workers} at a time per job, {ranks} ranks each ({where}; RANK, LOCAL_RANK, WORLD_SIZE, "
            f"MASTER_ADDR/MASTER_PORT set as torchrun does), 1 GPU per rank")


def worker_argv(hyper_path: str, model_path: str | None, overrides: Sequence[str], *, worker_index: int,
                deadline: float | None = None, python: str | None = None, gpus_per_trial: int = 1,
                nodes_per_trial: int = 1) -> list[str]:
    """The argv of one worker in a job (the same overrides as the submitting command)."""
    cmd = [python or sys.executable, "-m", "hyper_opt.run", hyper_path]
    if model_path:
        cmd.append(model_path)
    cmd += ["--worker-index", str(worker_index)]
    if gpus_per_trial > 1:
        cmd += ["--gpus-per-trial", str(gpus_per_trial)]
    if nodes_per_trial > 1:
        cmd += ["--nodes-per-trial", str(nodes_per_trial)]
    if deadline is not None:
        cmd += ["--deadline", f"{deadline:.0f}"]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


def start_workers(plan: Sequence[str], *, hyper_path: str, model_path: str | None, overrides: Sequence[str],
                  job_index: int, deadline: float | None, env: Mapping[str, str] | None = None,
                  gpus_per_trial: int = 1, nodes_per_trial: int = 1) -> list[subprocess.Popen[bytes]]:
    """Start one worker per entry of ``plan``, each seeing only its GPU; worker indices are
    ``job_index * len(plan) + i`` (they offset the sampler's seed)."""
    base_env = dict(os.environ if env is None else env)
    procs = []
    for i, gpu in enumerate(plan):
        worker_env = {**base_env, "CUDA_VISIBLE_DEVICES": gpu}
        cmd = worker_argv(hyper_path, model_path, overrides, worker_index=job_index * len(plan) + i,
                          deadline=deadline, gpus_per_trial=gpus_per_trial, nodes_per_trial=nodes_per_trial)
        procs.append(subprocess.Popen(cmd, env=worker_env))
    return procs


def forward_signals(procs: Sequence[subprocess.Popen[bytes]],
                    signals: Sequence[signal.Signals] = FORWARDED) -> Callable[[], None]:
    """Pass these signals on to the workers still running; returns a function restoring the old
    handlers. A worker that gets SIGTERM records its running trial FAIL and re-queues it."""
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: Any) -> None:
        print(f"hyper_opt job: {signal.Signals(signum).name} received; passing it to the workers", flush=True)
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except OSError:
                    pass

    for sig in signals:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def wait_all(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """Wait for every worker (signals arriving meanwhile are handled, then waiting goes on)."""
    codes = []
    for proc in procs:
        while True:
            try:
                codes.append(proc.wait())
                break
            except InterruptedError:  # pragma: no cover - Python retries wait() itself
                continue
    return codes


def run_job(*, hyper_path: str, model_path: str | None, overrides: Sequence[str], job_index: int,
            gpus_per_node: int, tasks_per_worker: int, deadline: float | None, stop_margin_s: int,
            job_id: str, env: Mapping[str, str] | None = None, gpus_per_trial: int = 1,
            nodes_per_trial: int = 1) -> list[int]:
    """A job's whole life on its node: plan, start, forward signals, wait; the exit codes."""
    env = dict(os.environ if env is None else env)
    plan = plan_workers(env, gpus_per_node=gpus_per_node, tasks_per_worker=tasks_per_worker,
                        gpus_per_trial=gpus_per_trial)
    stop_at = deadline - stop_margin_s if deadline is not None else None
    left = f"; workers stop starting trials in {stop_at - time.time():.0f} s" if stop_at else ""
    print(f"hyper_opt job {job_id}: {len(plan)} worker(s), GPUs {plan}{left}", flush=True)
    procs = start_workers(plan, hyper_path=hyper_path, model_path=model_path, overrides=overrides,
                          job_index=job_index, deadline=stop_at, env=env, gpus_per_trial=gpus_per_trial,
                          nodes_per_trial=nodes_per_trial)
    restore = forward_signals(procs)
    try:
        codes = wait_all(procs)
    finally:
        restore()
    print(f"hyper_opt job {job_id}: workers exited with {codes}", flush=True)
    return codes


# --------------------------------------------------------------------------- PBS job entry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyper_opt.launch.job",
                                description="Run a PBS job's hyper_opt workers (used by the job script).")
    p.add_argument("hyper")
    p.add_argument("model", nargs="?")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--job-index", type=int, default=0)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-worker", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=int, default=1)
    p.add_argument("--nodes-per-trial", type=int, default=1)
    p.add_argument("--stop-margin", type=int, default=0, help="seconds before the walltime to stop starting trials")
    p.add_argument("--walltime", type=int, help="the job's walltime in seconds, when qstat cannot tell")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a PBS job script: deadline from the job's walltime, then :func:`run_job`."""
    import hyper_opt
    from hyper_opt.launch.pbs_env import command, fill_gpus, job_attrs, job_deadline, job_id

    args = _parser().parse_args(argv)
    started = time.time()
    env = dict(os.environ)
    print(f"hyper_opt job: {sys.executable}, hyper_opt from {os.path.dirname(hyper_opt.__file__)}", flush=True)
    attrs = job_attrs(env)
    deadline = job_deadline(env, attrs)
    if deadline is not None:
        print(f"hyper_opt job: the walltime ends at {deadline:.0f} ({time.ctime(deadline)})", flush=True)
    elif args.walltime:
        deadline = started + args.walltime  # the job started a little earlier: keep a margin
        print(f"hyper_opt job: qstat ({command('qstat', env) or 'none found'}) gave no walltime for "
              f"{env.get('PBS_JOBID') or 'this job'}; assuming {args.walltime} s from now", flush=True)
    warning = fill_gpus(env, attrs)
    if warning is None and args.gpus_per_node and not visible_gpus(env):
        warning = (f"WARNING: gpus_per_node is {args.gpus_per_node} but PBS gave this job no GPU "
                   "(no ngpus in its select, no CUDA_VISIBLE_DEVICES): its workers run on the CPU")
    if warning:
        print(f"hyper_opt job: {warning}", flush=True)
    array_index = env.get("PBS_ARRAY_INDEX", "")
    job_index = int(array_index) if array_index.isdigit() else args.job_index
    codes = run_job(hyper_path=args.hyper, model_path=args.model, overrides=args.overrides, job_index=job_index,
                    gpus_per_node=args.gpus_per_node, tasks_per_worker=args.tasks_per_worker,
                    deadline=deadline, stop_margin_s=args.stop_margin, job_id=job_id(env) or "?", env=env,
                    gpus_per_trial=args.gpus_per_trial, nodes_per_trial=args.nodes_per_trial)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
