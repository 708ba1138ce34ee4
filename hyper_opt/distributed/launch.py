"""Starting a trial's ranks: their environment (what ``torchrun`` sets) and their processes.

On one node the worker starts the ``gpus_per_trial`` rank processes itself. Across nodes it
starts one agent per node, through ``srun`` (Slurm) or ``pbsdsh`` (PBS), and each agent starts
its node's ranks the same way; rank 0 is on the worker's node, the first of the job's.

Every rank sees the trial's GPUs on its node in ``CUDA_VISIBLE_DEVICES`` and picks its own with
``LOCAL_RANK``, as under ``torchrun`` (so ``torch.cuda.set_device(LOCAL_RANK)`` works unchanged);
``BaseObjective.device`` is ``cuda:<LOCAL_RANK>`` there. Each rank writes its output to
``save_path/ranks/trial_<number>/rank_<rank>.log``.
"""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# RESUME_ENV: the checkpoint a distributed trial started from ("" when none), what load_checkpoint
# reads on every rank, so that all ranks resume from one checkpoint even once rank 0 saved a newer one.
from hyper_opt.objective import RESUME_ENV

# Tests only: run a trial's "nodes" as srun tasks on the one node of the local cluster.
ONE_NODE_ENV = "HYPER_OPT_TEST_NODES_ON_ONE"


@dataclass
class RankSpec:
    """What every rank of one trial needs; pickled to a private file the ranks read."""

    control: tuple[str, int]  # the worker's channel
    token: str
    hyper_path: str
    model_path: str | None
    overrides: list[str]
    conf: dict[str, Any]  # the model config with the trial's parameters patched in (by the worker)
    trial: dict[str, Any]  # number, trial_id, params, user_attrs, system_attrs, datetime_start
    gpus_per_trial: int
    nodes_per_trial: int
    master_addr: str
    master_port: int
    visible: str | None  # the worker's CUDA_VISIBLE_DEVICES (the trial's GPUs on each node); None: unset, left so
    log_dir: str
    retry_seconds: float = 600.0
    resume: str = ""  # a hard link to the checkpoint the trial started from, or ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.gpus_per_trial * self.nodes_per_trial


def free_port(host: str = "") -> int:
    """A TCP port free now (the rendezvous' MASTER_PORT); what torchrun does without --master-port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def freeze_checkpoint(checkpoint: Path, folder: Path) -> str:
    """A hard link to ``checkpoint`` as it is now (a copy where links are refused), or "" when
    there is none. Saving replaces the file (a rename), so the link keeps the old content."""
    if not checkpoint.exists():
        return ""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    frozen = folder / ".resume.pkl"
    frozen.unlink(missing_ok=True)
    try:
        os.link(checkpoint, frozen)
    except OSError:
        import shutil

        shutil.copy2(checkpoint, frozen)
    return str(frozen)


def write_spec(spec: RankSpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        pickle.dump(spec, fh)
    return path


def read_spec(path: Path) -> RankSpec:
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:  # unpickling runs code: only our own private file
        raise PermissionError(f"refusing the rank spec {path}: not private to this user (mode {st.st_mode & 0o777:o})")
    with open(path, "rb") as fh:
        spec = pickle.load(fh)
    if not isinstance(spec, RankSpec):
        raise TypeError(f"{path} holds no rank spec")
    return spec


def rank_env(spec: RankSpec, node_rank: int, local_rank: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment torchrun gives a rank, plus the trial's GPUs on this node."""
    env = dict(os.environ if base is None else base)
    env.update(spec.extra_env)
    g = spec.gpus_per_trial
    env.update({
        "RANK": str(node_rank * g + local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(spec.world_size),
        "LOCAL_WORLD_SIZE": str(g), "GROUP_RANK": str(node_rank), "NODE_RANK": str(node_rank),
        "MASTER_ADDR": spec.master_addr, "MASTER_PORT": str(spec.master_port),
        RESUME_ENV: spec.resume,
    })
    if spec.visible is not None:  # unset stays unset, as under torchrun: every GPU of the node visible
        env["CUDA_VISIBLE_DEVICES"] = spec.visible
    return env


def rank_log(spec: RankSpec, rank: int) -> Path:
    return Path(spec.log_dir) / f"rank_{rank}.log"


def start_node_ranks(spec_path: Path, spec: RankSpec, node_rank: int) -> list[subprocess.Popen[bytes]]:
    """This node's ranks, each in a session of its own (so that stopping it stops its children)."""
    procs = []
    for local_rank in range(spec.gpus_per_trial):
        rank = node_rank * spec.gpus_per_trial + local_rank
        log = rank_log(spec, rank)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hyper_opt.distributed.rank", str(spec_path), "--node-rank", str(node_rank),
                 "--local-rank", str(local_rank)],
                env=rank_env(spec, node_rank, local_rank), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True))
    return procs


def node_command(spec_path: Path, spec: RankSpec, env: dict[str, str]) -> list[list[str]]:
    """The commands that start one agent per node of the job: one ``srun``, or one ``pbsdsh`` per node."""
    agent = [sys.executable, "-m", "hyper_opt.distributed.rank", str(spec_path), "--agent"]
    k = spec.nodes_per_trial
    if env.get("SLURM_JOB_ID"):
        per_node = k if env.get(ONE_NODE_ENV) else 1
        return [["srun", "--overlap", f"--ntasks={k}", f"--ntasks-per-node={per_node}",
                 f"--nodes={1 if env.get(ONE_NODE_ENV) else k}", "--kill-on-bad-exit=1", "--export=ALL",
                 f"--job-name=trial_{spec.trial['number']}", *agent]]
    if env.get("PBS_JOBID"):
        return [["pbsdsh", "-n", str(index), "--", "/bin/sh", "-c",
                 f"cd {shlex.quote(os.getcwd())} && exec " + shlex.join([*agent, "--node-rank", str(i)])]
                for i, index in enumerate(pbs_node_indices(env, k))]
    raise RuntimeError("nodes_per_trial > 1 needs a Slurm or PBS job (neither SLURM_JOB_ID nor PBS_JOBID is set)")


def pbs_node_indices(env: dict[str, str], k: int) -> list[int]:
    """For ``pbsdsh -n``: the index in the job's node file of the first entry of each of its first
    ``k`` hosts. The file has one line per MPI process (``mpiprocs``), not per chunk, so the i-th
    node is not the i-th line. (Tests, with every chunk on the one node: the first ``k`` lines.)"""
    if env.get(ONE_NODE_ENV):
        return list(range(k))
    try:
        hosts = [h.strip() for h in Path(env.get("PBS_NODEFILE", "")).read_text().splitlines() if h.strip()]
    except OSError as err:
        raise RuntimeError(f"cannot read the job's node file PBS_NODEFILE ({err}) to place the trial's ranks") from err
    first: dict[str, int] = {}
    for index, host in enumerate(hosts):
        first.setdefault(host, index)
    if len(first) < k:
        raise RuntimeError(f"the job has {len(first)} node(s) ({', '.join(first)}) but nodes_per_trial is {k}: "
                           f"ask for {k} chunks on distinct hosts (select={k}:...:mpiprocs=1 with place=scatter)")
    return list(first.values())[:k]


def stop(procs: list[subprocess.Popen[bytes]], *, grace_s: float = 5.0) -> None:
    """SIGTERM each process's group, then SIGKILL what is left after ``grace_s``."""
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig) if _own_group(proc) else proc.send_signal(sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        if all(p.poll() is not None for p in procs):
            return


def _own_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False
