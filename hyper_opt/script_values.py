"""Values that reach a job script: no control characters, wherever they come from.

A job script (the sbatch file submitit writes, the qsub script) is text that the scheduler reads
line by line (``#SBATCH``/``#PBS`` directives) and the shell runs: a newline in a value put into
it becomes a directive or command of its own, whatever quoting the value gets. So every value
that can reach one is checked up front (after ``--set`` overrides, and as a resolved path where
it is one): the ``slurm``/``pbs`` sections (``batch`` values and keys, ``bash``, ``kernel``,
``python``, ``folder``), ``save_path`` (the default job folder and PBS log paths are under it),
and the paths of the two files the jobs read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyper_opt.checker import Checker
from hyper_opt.keypath import parse_override

# C0 and C1 controls and DEL; a tab too, except in shell lines (sbatch and qsub split directives at it).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
SHELL_KEYS = ("bash", "kernel", "python")  # shell code, where a tab is blank space


def control_problem(value: str, *, tab: bool = False) -> str | None:
    """What is wrong with ``value`` in a job script (``tab``: a tab is allowed), or None."""
    found = (CONTROL_BUT_TAB if tab else CONTROL).search(value)
    if found is None:
        return None
    return (f"must not contain a newline or other control character (found {found.group()!r} at "
            f"position {found.start()}): in a job script it would start a directive or command of its "
            f"own; got {value!r}")


def check_script_values(chk: Checker, hyper: Mapping[str, Any], *, paths: Mapping[str, Path | None],
                        overrides: Sequence[str] = ()) -> None:
    """Add a problem for every value with a control character that would reach a job script:
    the strings (and keys) of the ``slurm`` and ``pbs`` sections of ``hyper`` and ``paths``
    (key path -> resolved path). A value set by ``--set`` is named so."""
    from_command_line = set()
    for text in overrides:
        try:
            path, _ = parse_override(text)
        except Exception:  # noqa: BLE001 - reported where the overrides were applied
            continue
        from_command_line.add(":".join(path[1:] if path[0] == "hyper" else path))

    reported: set[str] = set()

    def add(where: str, problem: str) -> None:
        reported.add(where)
        chk.add(where, problem + (" (set by --set)" if where in from_command_line else ""))

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            parts = where.split(":")
            problem = control_problem(value, tab=len(parts) > 1 and parts[1] in SHELL_KEYS)
            if problem:
                add(where, problem)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                problem = control_problem(key) if isinstance(key, str) else None
                if problem:
                    add(f"{where}:{key!r}", "the key " + problem)
                walk(item, f"{where}:{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}:{i}")

    for section in ("slurm", "pbs"):
        walk(hyper.get(section), section)
    for where, path in paths.items():
        if path is None or where in reported:  # the value itself was named already
            continue
        problem = control_problem(str(path))
        if problem:
            add(where, f"(the resolved path) {problem}")
