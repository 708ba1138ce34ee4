"""No control character reaches a job script, wherever the value comes from (a key of the YAML
file, --set, a path resolved against a folder): refused up front by the CLI with one message
naming the file, the key path and the value, before anything is written or submitted."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from .conftest import write_search

INJECTED = "touch PWNED"
SLURM = {"jobs": 1, "batch": {"t": "00:05:00"}}
PBS = {"jobs": 1, "batch": {"l": "walltime=00:05:00", "A": "acct"}}

CASES: dict[str, tuple[dict[str, Any], list[str], str]] = {
    # name: (extra sections of hyper.yml, extra CLI args, the key path named)
    "save_path": ({"save_path": f"results\n#SBATCH --time=99:00:00\n{INJECTED}", "slurm": SLURM}, [], "save_path"),
    "slurm:folder": ({"slurm": {**SLURM, "folder": f"jobs\n{INJECTED}"}}, [], "slurm:folder"),
    "slurm:python": ({"slurm": {**SLURM, "python": f"python\n{INJECTED}"}}, [], "slurm:python"),
    "pbs log path": ({"pbs": {**PBS, "batch": {**PBS["batch"], "o": "logs/out\n#PBS -l walltime=99:00:00"}}},
                     [], "pbs:batch:o"),
    "pbs:bash": ({"pbs": {**PBS, "bash": ["module load x", f"echo \r{INJECTED}"]}}, [], "pbs:bash:1"),
    "--set": ({"slurm": SLURM}, ["--set", f'slurm:folder="jobs\\n{INJECTED}"'], "slurm:folder"),
}


def _fake_schedulers(folder: Path) -> dict[str, str]:
    """sbatch and qsub that record being called (nothing may be submitted)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "qsub"):
        script = folder / name
        script.write_text(f"#!/bin/sh\ntouch {folder / 'SUBMITTED'}\necho 'Submitted batch job 1'\necho 1.pbs\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _check_refused(proc: Any, key: str, folder: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{key}" in proc.stderr and "control character" in proc.stderr, proc.stderr
    assert "hyper.yml" in proc.stderr and "Traceback" not in proc.stderr
    assert "#SBATCH" not in proc.stdout and "#PBS" not in proc.stdout
    assert not (folder / "PWNED").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_a_control_character_never_reaches_a_job_script(tmp_path: Path, case: str) -> None:
    extra, args, key = CASES[case]
    s = write_search(tmp_path / "s", extra=extra)
    env = _fake_schedulers(tmp_path / "bin")
    dry = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", *args, env=env, timeout=120)
    _check_refused(dry, key, s.folder)
    if case == "--set":
        assert "(set by --set)" in dry.stderr
    real = s.cli("optimize", "hyper.yml", "model.yml", *args, env=env, timeout=120)
    _check_refused(real, key, s.folder)
    assert not (tmp_path / "bin" / "SUBMITTED").exists(), "nothing submitted"
    assert not (s.folder / "results").exists() or not any((s.folder / "results").iterdir()), "nothing written"


def test_a_newline_in_a_resolved_path_never_reaches_a_job_script(tmp_path: Path) -> None:
    """The value is fine (save_path: results), the folder it is resolved against is not."""
    s = write_search(tmp_path / f"s\n#SBATCH --time=99:00:00\n{INJECTED}", extra={"slurm": SLURM})
    env = _fake_schedulers(tmp_path / "bin")
    proc = s.cli("optimize", "hyper.yml", "model.yml", env=env, timeout=120)
    _check_refused(proc, "save_path: (the resolved path)", s.folder)
    assert not (tmp_path / "bin" / "SUBMITTED").exists()


def test_a_tab_in_a_bash_line_is_shell_code_and_allowed(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {**SLURM, "bash": ["if true;\tthen :; fi"]}})
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", timeout=120)
    assert proc.returncode == 0 and "if true;\tthen :; fi" in proc.stdout, proc.stderr
