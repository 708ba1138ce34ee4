"""The sections that say where trials run: ``slurm``, ``pbs`` and ``local``, and a trial's size.

A trial uses ``gpus_per_trial`` GPUs (one rank per GPU, default 1) on each of ``nodes_per_trial``
nodes (default 1; ``slurm``/``pbs`` only). A job then runs ``gpus_per_node / gpus_per_trial x
tasks_per_worker`` trials at a time on each node. The sizes that cannot fit a job are refused
here, with their key paths, before anything is created or submitted (:mod:`hyper_opt.config`
collects them with every other problem).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt.checker import Checker
from hyper_opt.schema import DEFAULT_SCHEDULER_FOLDER, DEFAULT_SIGNAL_DELAY_S, LOCAL_KEYS, SchedulerSpec
from hyper_opt.script_values import check_script_values

logger = logging.getLogger("hyper_opt.config")


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _tasks_per_worker(chk: Checker, sec: Mapping[str, Any], section: str) -> int:
    """``tasks_per_worker``, or ``trials_per_job``, its name in echo-opt before 1.0."""
    key = "tasks_per_worker"
    if "trials_per_job" in sec:
        if key in sec:
            chk.add(f"{section}:trials_per_job", "is echo-opt's old name of tasks_per_worker: give one of them")
        else:
            logger.info("%s:trials_per_job is read as tasks_per_worker (its name since echo-opt 1.0)", section)
            key = "trials_per_job"
    return chk.integer(sec.get(key), f"{section}:{key}", minimum=1, default=1)


def check_scheduler(chk: Checker, raw: Any, section: str, allowed: Sequence[str],
                    base: Path, save_path: Path) -> SchedulerSpec | None:
    if raw is None:
        return None
    sec = chk.mapping(raw, section)
    chk.unknown_keys(sec, allowed, section)
    batch = chk.mapping(sec.get("batch"), f"{section}:batch")
    for key, value in batch.items():
        bad = (value is None or isinstance(value, (dict,)) or
               (isinstance(value, list) and section == "slurm"))
        if bad:
            chk.add(f"{section}:batch:{key}", f"must be a string or number, got {value!r}")
    # control characters (a newline becomes a directive of its own): script_values, in load_config
    bash = chk.strings(sec.get("bash"), f"{section}:bash")
    folder = sec.get("folder")
    spec = SchedulerSpec(
        jobs=chk.integer(sec.get("jobs"), f"{section}:jobs", minimum=1, default=1),
        batch=dict(batch),
        bash=bash,
        kernel=chk.string(sec.get("kernel"), f"{section}:kernel"),
        gpus_per_node=chk.integer(sec.get("gpus_per_node"), f"{section}:gpus_per_node", minimum=0, default=0),
        tasks_per_worker=_tasks_per_worker(chk, sec, section),
        array=chk.boolean(sec.get("array"), f"{section}:array", default=False),
        folder=_resolve(base, folder) if isinstance(folder, str) else save_path / DEFAULT_SCHEDULER_FOLDER,
        signal_delay_s=chk.integer(sec.get("signal_delay_s"), f"{section}:signal_delay_s", minimum=0,
                                   default=DEFAULT_SIGNAL_DELAY_S),
        python=chk.string(sec.get("python"), f"{section}:python"),
        gpus_per_trial=chk.integer(sec.get("gpus_per_trial"), f"{section}:gpus_per_trial", minimum=1, default=1),
        nodes_per_trial=chk.integer(sec.get("nodes_per_trial"), f"{section}:nodes_per_trial", minimum=1, default=1),
    )
    _check_trial_size(chk, spec, section)
    return spec


def _check_trial_size(chk: Checker, spec: SchedulerSpec, section: str) -> None:
    """A trial must fit in a job: its GPUs among the job's GPUs per node, its nodes among the job's."""
    g, per_node = spec.gpus_per_trial, spec.gpus_per_node
    if g > 1 and per_node and g > per_node:
        chk.add(f"{section}:gpus_per_trial", f"is {g}, more than the {per_node} GPU(s) of a job's node "
                f"({section}:gpus_per_node); a trial's ranks on one node share that node's GPUs")
    elif g > 1 and per_node and per_node % g:
        chk.add(f"{section}:gpus_per_trial", f"is {g}, which does not divide {section}:gpus_per_node ({per_node}): "
                f"{per_node % g} GPU(s) of every job would stay idle; allowed: a divisor of {per_node}")
    k = spec.nodes_per_trial
    if k == 1:
        return
    asked = job_nodes(spec, section)
    if asked is not None and asked != k:
        where = f"{section}:batch:{asked[1]}"
        chk.add(where, f"asks for {asked[0]} node(s) but {section}:nodes_per_trial is {k}: a job runs trials "
                f"of {k} nodes, so it needs exactly {k} (leave {where} out and hyper_opt asks for {k})")
    if spec.tasks_per_worker > 1:
        chk.add(f"{section}:tasks_per_worker", f"is {spec.tasks_per_worker} with nodes_per_trial {k}: a trial "
                "across nodes runs alone on its GPUs; allowed: 1")


def job_nodes(spec: SchedulerSpec, section: str) -> tuple[int, str] | None:
    """The nodes a job asks for in ``batch`` (Slurm ``nodes``/``N``, PBS ``select=N:...``), and the key."""
    if section == "slurm":
        for key in ("nodes", "N"):
            if key in spec.batch:
                text = str(spec.batch[key]).strip()
                return (int(text), key) if text.isdigit() else (-1, key)
        return None
    for key in ("l", "select"):
        value = spec.batch.get(key)
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            pattern = r"^\s*(\d+)" if key == "select" else r"(?:^|,)\s*select=(\d+)"
            match = re.search(pattern, str(item))
            if match:
                return int(match.group(1)), key
    return None


def check_local(chk: Checker, raw: Any) -> tuple[int, int]:
    """The ``local`` section: ``workers`` and ``gpus_per_trial``."""
    local = chk.mapping(raw, "local")
    if "nodes_per_trial" in local:
        chk.add("local:nodes_per_trial", "a local search runs on this machine only; trials across nodes need a "
                "slurm or pbs section (allowed keys here: " + ", ".join(LOCAL_KEYS) + ")")
        local = {k: v for k, v in local.items() if k != "nodes_per_trial"}
    chk.unknown_keys(local, LOCAL_KEYS, "local")
    workers = chk.integer(local.get("workers"), "local:workers", minimum=1, default=1)
    gpus = chk.integer(local.get("gpus_per_trial"), "local:gpus_per_trial", minimum=1, default=1)
    return workers, gpus


def check_job_values(chk: Checker, hyper: Mapping[str, Any], opt: Mapping[str, Any], save_path: Path,
                     slurm: SchedulerSpec | None, pbs: SchedulerSpec | None,
                     files: tuple[Path, str | Path | None], overrides: Sequence[str]) -> None:
    """With a ``slurm``/``pbs`` section: no control character in what reaches a job script."""
    if slurm is None and pbs is None:
        return
    save_key = "optuna:save_path" if "save_path" not in hyper and "save_path" in opt else "save_path"
    check_script_values(chk, hyper, overrides=overrides, paths={
        save_key: save_path, "slurm:folder": slurm.folder if slurm else None,
        "pbs:folder": pbs.folder if pbs else None, "the hyperparameter file": files[0],
        "the model config file": Path(files[1]) if files[1] is not None else None})
