"""The Slurm job script and parameters as pure functions of the config (no cluster needed)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError
from hyper_opt.launch.slurm import JobMain, sbatch_parameters, sbatch_script, time_limit_seconds, visible_gpus
from hyper_opt.launch.slurm_env import parse_time_left

from .conftest import write_search

GOLDEN = Path(__file__).parent / "golden" / "sbatch_basic.sh"

SLURM = {
    "jobs": 3,
    "gpus_per_node": 2,
    "tasks_per_worker": 2,
    "bash": ["module load cuda", "conda activate 'my env'"],
    "kernel": "echo kernel-line",
    "batch": {"account": "NAML0001", "gres": "gpu:v100:2", "mem": "128G", "n": 8, "t": "12:00:00",
              "J": "hyper_opt", "o": "hyper_opt.out", "e": "hyper_opt.err", "constraint": "a100&ib",
              "exclusive": True},
}


def _config(tmp_path: Path, slurm: dict | None = None):  # type: ignore[no-untyped-def]
    s = write_search(tmp_path / "s", extra={"slurm": slurm or SLURM})
    return load_config(s.hyper, s.model)[0]


def _normalise(text: str, config) -> str:  # type: ignore[no-untyped-def]
    text = text.replace(str(config.hyper_path.parent), "<SEARCH>")
    return text.replace(shlex.quote(sys.executable), "<PYTHON>")


def test_job_script_matches_the_golden_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    text = _normalise(sbatch_script(config), config)
    if os.environ.get("HYPER_OPT_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_short_options_are_spelled_out_and_values_quoted(tmp_path: Path) -> None:
    config = _config(tmp_path)
    params = sbatch_parameters(config)
    assert params["ntasks"] == "8" and params["time"] == "12:00:00" and params["job-name"] == "hyper_opt"
    assert params["output"] == str(config.hyper_path.parent / "hyper_opt.out")
    assert params["exclusive"] is True
    script = sbatch_script(config)
    assert "#SBATCH --constraint='a100&ib'" in script
    assert "conda activate 'my env'" in script
    assert script.index("module load cuda") < script.index("echo kernel-line") < script.index("submitit.core._submit")


def test_gres_is_added_for_gpus_per_node_and_defaults_are_set(tmp_path: Path) -> None:
    params = sbatch_parameters(_config(tmp_path, {"gpus_per_node": 4, "batch": {"partition": "gpu"}}))
    assert params["gres"] == "gpu:4"
    assert params["time"] == "12:00:00" and params["job-name"].startswith("hyper_opt-test-")


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"t": "12 hours"}, "slurm:batch:t: '12 hours' is not a Slurm time"),
        ({"time": "1:2:3:4"}, "slurm:batch:time"),
        ({"mem": "lots"}, "slurm:batch:mem: 'lots' is not a memory size"),
        ({"z": "1"}, "unknown short sbatch option -z"),
        ({"signal": "USR1@10"}, "--signal is set by hyper_opt"),
        ({"t": "10", "time": "20"}, "given twice"),
        ({"bad key": 1}, "is not an sbatch option name"),
        ({"n": "eight"}, "slurm:batch:n: 'eight' is not a count"),
    ],
)
def test_malformed_options_are_refused_naming_the_key(tmp_path: Path, batch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        sbatch_parameters(_config(tmp_path, {"batch": batch}))
    assert expected in str(info.value)


def test_newline_in_a_value_is_refused_when_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="slurm:batch:mem: must not contain a newline"):
        _config(tmp_path, {"batch": {"mem": "4G\n#SBATCH --x"}})


def test_times_and_time_left() -> None:
    assert time_limit_seconds("90") == 5400
    assert time_limit_seconds("1:30") == 90
    assert time_limit_seconds("02:00:00") == 7200
    assert time_limit_seconds("1-2") == 93600
    assert time_limit_seconds("1-00:00:10") == 86410
    assert time_limit_seconds("UNLIMITED") is None
    assert parse_time_left("1-02:03:04") == 93784
    assert parse_time_left("05:00") == 300
    assert parse_time_left("UNLIMITED") is None


def test_each_worker_gets_exactly_one_of_the_jobs_gpus() -> None:
    main = JobMain("h.yml", "m.yml", [], job_index=0, gpus_per_node=2, tasks_per_worker=2)
    assert main.plan({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "2", "3", "3"]
    assert main.plan({"SLURM_JOB_GPUS": "1,5"}) == ["1", "1", "5", "5"]
    assert main.plan({}) == ["", "", "", ""], "a job without GPUs runs CPU workers"
    one = JobMain("h.yml", None, [], job_index=0, gpus_per_node=0, tasks_per_worker=3)
    assert one.plan({}) == ["", "", ""]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}) == []


def test_dry_run_prints_the_script_and_never_calls_sbatch(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": SLURM}, optuna={"storage": "postgresql://u:s3cret@db/x"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\necho called >> {calls}\necho 'Submitted batch job 42'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True,
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert "#SBATCH --gres=gpu:v100:2" in proc.stdout and "submitit.core._submit" in proc.stdout
    assert "3 Slurm job(s)" in proc.stdout and "4 worker(s) each" in proc.stdout
    assert "s3cret" not in proc.stdout + proc.stderr and "postgresql://u:***@db/x" in proc.stdout
    assert not calls.exists(), "--dry-run must not submit"
    assert not s.save_path.exists(), "--dry-run must not create anything"


def test_sbatch_refusal_is_one_clear_error(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {"batch": {"t": "10"}}})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Invalid account or account/partition combination' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = s.cli("optimize", "hyper.yml", "model.yml", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 2
    assert "Invalid account" in proc.stderr and "Traceback" not in proc.stderr


def _chosen_python(tmp_path: Path, config, path: str,  # type: ignore[no-untyped-def]
                   fallback: str = "/fallback/python") -> subprocess.CompletedProcess[str]:
    from hyper_opt.launch.slurm import interpreter

    lines, python = interpreter(config.slurm, fallback=fallback)
    script = tmp_path / "choose.sh"
    script.write_text("\n".join([*lines, f"echo {python}"]) + "\n")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": path, "HOME": str(tmp_path)}, timeout=60)


def test_the_fallback_pythons_path_is_never_run_by_the_shell(tmp_path: Path) -> None:
    """The job's message about the fallback interpreter names its path: `$(...)` or backquotes
    in that path are printed, never run."""
    config = _config(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "python").symlink_to("/usr/bin/python3")  # no hyper_opt there: the fallback runs
    for fallback in ("/opt/py $(touch marker)/python", "/opt/`touch marker`/python", "/opt/a\\nb\"$(touch marker)\"/py"):
        proc = _chosen_python(tmp_path, config, f"{empty}:/usr/bin:/bin", fallback=fallback)
        assert not (tmp_path / "marker").exists(), f"the shell ran a command in {fallback!r}"
        assert proc.stdout.strip() == fallback and fallback in proc.stderr, proc.stderr


def test_bash_lines_choose_the_jobs_python_when_it_has_hyper_opt(tmp_path: Path) -> None:

    config = _config(tmp_path)
    venv_bin = str(Path(sys.executable).parent)  # a python that imports hyper_opt and submitit
    proc = _chosen_python(tmp_path, config, f"{venv_bin}:/usr/bin:/bin")
    assert proc.stdout.strip() in (str(Path(venv_bin) / "python"), str(Path(venv_bin) / "python3")), proc.stderr
    assert proc.stderr == ""
    # A python on PATH without hyper_opt (the system one): the job says so and runs the submitting one.
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "python").symlink_to("/usr/bin/python3")
    proc = _chosen_python(tmp_path, config, f"{empty}:/usr/bin:/bin")
    assert proc.stdout.strip() == "/fallback/python"
    assert "cannot import hyper_opt" in proc.stderr and str(empty / "python") in proc.stderr


def test_without_setup_lines_the_submitting_python_runs(tmp_path: Path) -> None:
    from hyper_opt.launch.slurm import interpreter

    config = _config(tmp_path, {"batch": {"partition": "gpu"}})
    assert interpreter(config.slurm) == ([], shlex.quote(sys.executable))
    config = _config(tmp_path, {**SLURM, "python": "/opt/env/bin/python"})
    assert interpreter(config.slurm) == ([], "/opt/env/bin/python")


def test_dry_run_counts_gpu_workers_from_gres_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hyper_opt.launch.slurm import dry_run

    dry_run(_config(tmp_path, {"jobs": 2, "batch": {"gres": "gpu:v100:2", "t": "01:00:00"}}))
    out = capsys.readouterr().out
    assert "2 worker(s) each (GPU workers" in out and "CPU workers" not in out

def test_a_job_whose_workers_all_fail_fails(tmp_path: Path) -> None:
    from hyper_opt.exceptions import SubmissionError
    from hyper_opt.launch.slurm import JobMain

    main = JobMain(str(tmp_path / "missing.yml"), None, [], job_index=0, gpus_per_node=0, tasks_per_worker=2)
    with pytest.raises(SubmissionError, match="every worker of this job failed"):
        main()


def test_jobs_json_keeps_every_concurrent_record_and_a_corrupt_one_is_named(tmp_path: Path) -> None:
    import threading

    from hyper_opt.config import load_config
    from hyper_opt.exceptions import SubmissionError
    from hyper_opt.launch.records import JOBS_FILE, record_jobs, recorded_jobs

    from .conftest import write_search

    s = write_search(tmp_path / "s")
    config, _ = load_config(s.hyper, s.model)
    threads = [threading.Thread(target=record_jobs, args=(config, [str(i)], tmp_path), kwargs={"scheduler": "slurm"})
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(j["job_id"]) for j in recorded_jobs(config, "slurm")) == list(range(16))
    (config.save_path / JOBS_FILE).write_text("{not json")
    with pytest.raises(SubmissionError, match="jobs.json cannot be read"):
        recorded_jobs(config, "slurm")


def test_sqlite_for_cluster_jobs_gets_a_warning_pointing_elsewhere(tmp_path: Path) -> None:
    from hyper_opt.config import load_config
    from hyper_opt.storage import cluster_storage_warning

    from .conftest import write_search

    s = write_search(tmp_path / "s")
    config, _ = load_config(s.hyper, s.model)
    warning = cluster_storage_warning(config.optuna.storage) or ""
    assert "PostgreSQL" in warning and "journal" in warning
    s = write_search(tmp_path / "j", optuna={"storage_type": "journal", "storage": "study.journal",
                                             "heartbeat_interval": None})
    assert cluster_storage_warning(load_config(s.hyper, s.model)[0].optuna.storage) is None
