"""The PBS job script, options, qstat parsing and submission, without a cluster (a fake qsub)."""

from __future__ import annotations

import os
import shlex
import stat
import sys
import time
from pathlib import Path

import pytest

from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError
from hyper_opt.launch import pbs
from hyper_opt.launch.job import plan_workers, worker_argv
from hyper_opt.launch.pbs_env import deadline_from_attrs, host_gpus, parse_qstat_full, walltime_seconds

from .conftest import write_search

GOLDEN = Path(__file__).parent / "golden"
# Captured from OpenPBS 23.06.06 (PBS Pro's open-source edition) in the local cluster.
QSTAT_F_RUNNING, JOB_RUNNING = "qstat_f_openpbs-23.06.06_running.txt", "1.localhost"

# The echo-opt torch example's own pbs section (NCAR Casper).
CASPER = {"jobs": 1, "tasks_per_worker": 1, "gpus_per_node": 1, "bash": ["source ~/.bashrc", "conda activate echo"],
          "batch": {"l": ["select=1:ncpus=8:ngpus=1:mem=64GB", "walltime=12:00:00"], "A": "NAML0001",
                    "q": "casper", "N": "torch_example", "o": "./out", "e": "./err"}}
# What PBS Pro understands and Slurm's torque wrapper does not: several select chunks,
# gpu_type, one -l string with several resources, an array, flags, quoting.
DERECHO = {"jobs": 4, "array": True, "gpus_per_node": 4, "tasks_per_worker": 2, "kernel": "conda activate 'my env'",
           "batch": {"l": "select=2:ncpus=64:ngpus=4:mem=480GB:gpu_type=a100+1:ncpus=8:mem=32GB,walltime=6:00:00",
                     "A": "UCSU0001", "q": "main", "j": "oe", "r": "y", "m": "n", "V": True, "h": False,
                     "W": "depend=afterok:123.desched1", "o": "/glade/derecho/scratch/me/logs"}}

# Research projects' own pbs sections (echo-opt users on NCAR's Casper and Derecho).
RESEARCH = {
    "miles-holodec": {"jobs": 10, "tasks_per_worker": 1, "gpus_per_node": 1,
                      "bash": ["source ~/.bashrc", "conda activate holodec"],
                      "batch": {"N": "echo-holo", "A": "NAML0001", "q": "casper", "o": "out", "e": "out",
                                "l": ["select=1:ncpus=8:ngpus=1:mem=128GB", "walltime=12:00:00", "gpu_type=v100"]}},
    "miles-credit": {"jobs": 30, "tasks_per_worker": 1, "gpus_per_node": 1,
                     "bash": ["source ~/.bashrc", "conda activate holodec"],
                     "batch": {"N": "echo-vit", "A": "NAML0001", "q": "casper", "o": "out", "e": "out",
                               "l": ["select=1:ncpus=8:ngpus=1:mem=128GB:cpu_type=milan", "walltime=12:00:00",
                                     "gpu_type=a100"]}},
    "seals-ml": {"jobs": 10, "gpus_per_node": 4, "bash": ["source ~/.bashrc", "conda activate seals_20240515"],
                 "batch": {"l": ["select=1:ncpus=64:ngpus=4:mem=128GB", "walltime=12:00:00"], "A": "NRAL0033",
                           "q": "main", "N": "seals-echo", "o": "/glade/derecho/scratch/dgagne/seals_echo/",
                           "e": "/glade/derecho/scratch/dgagne/seals_echo/"}},
    "mlmicrophysics": {"jobs": 20, "bash": ["source ~/.bashrc", "conda activate mlmicro"],
                       "batch": {"l": ["select=1:ncpus=16:ngpus=1:mem=384GB", "walltime=24:00:00", "gpu_type=v100"],
                                 "A": "P93300606", "q": "casper", "N": "echo_trial", "o": "echo_trial.out",
                                 "e": "echo_trial.err"}},
}


def _config(tmp_path: Path, section: dict, **kw):  # type: ignore[no-untyped-def]
    s = write_search(tmp_path / "s", extra={"pbs": section}, **kw)
    return load_config(s.hyper, s.model)[0]


def _normalise(text: str, config) -> str:  # type: ignore[no-untyped-def]
    text = text.replace(str(config.hyper_path.parent), "<SEARCH>")
    text = text.replace(shlex.quote(sys.executable), "<PYTHON>")
    return text.replace(config.optuna.study_name, "<STUDY>")


@pytest.mark.parametrize(("name", "section", "kwargs"), [
    ("pbs_casper.sh", CASPER, {"job_index": 0, "n_jobs": 1}),
    ("pbs_derecho_array.sh", DERECHO, {"job_index": 0, "n_jobs": 4}),
])
def test_job_script_matches_the_golden_file(tmp_path: Path, name: str, section: dict, kwargs: dict,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPER_OPT_CWD", str(tmp_path / "s"))  # where the search was started
    monkeypatch.delenv("HYPER_OPT_PBS_BIN", raising=False)
    config = _config(tmp_path, section)
    text = _normalise(pbs.job_script(config, **kwargs), config)
    if os.environ.get("HYPER_OPT_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()


def test_casper_section_directives(tmp_path: Path) -> None:
    config = _config(tmp_path, CASPER)
    opts = pbs.as_mapping(pbs.directives(config))
    assert opts["l"] == ["select=1:ncpus=8:ngpus=1:mem=64GB", "walltime=12:00:00"]
    assert opts["o"] == [str(config.save_path / "out")], "relative -o is under save_path, as in echo-opt"
    assert pbs.walltime_s(pbs.directives(config)) == 43200
    assert pbs.requested_gpus(pbs.directives(config)) == 1
    script = pbs.job_script(config)
    assert script.index('cd "$HYPER_OPT_CWD"') < script.index("source ~/.bashrc") < script.index("conda activate echo")
    assert script.index("conda activate echo") < script.index("-m hyper_opt.launch.job")
    assert "--gpus-per-node 1 --tasks-per-worker 1 --stop-margin 60 --walltime 43200" in script


@pytest.mark.parametrize("project", sorted(RESEARCH))
def test_research_projects_pbs_sections_pass_unchanged(tmp_path: Path, project: str) -> None:
    section = RESEARCH[project]
    config = _config(tmp_path, section)
    opts = pbs.as_mapping(pbs.directives(config))
    assert opts["l"] == section["batch"]["l"] and opts["N"] == [section["batch"]["N"]]
    script = pbs.job_script(config)
    assert all(f"#PBS -l {item}" in script for item in section["batch"]["l"])
    assert pbs.walltime_s(pbs.directives(config)) in (43200, 86400)
    if section["batch"]["o"].startswith("/"):
        assert opts["o"] == [section["batch"]["o"]]


def test_defaults_name_and_gpus(tmp_path: Path) -> None:
    config = _config(tmp_path, {"gpus_per_node": 2, "batch": {"q": "gpu"}})
    opts = pbs.as_mapping(pbs.directives(config))
    assert opts["N"] == [f"hyper_opt-{config.optuna.study_name}"]
    assert opts["l"] == ["select=1:ngpus=2"], "gpus_per_node without a select asks for the GPUs"
    assert "--walltime" not in pbs.job_script(config), "no walltime: the queue's default, read from qstat"


def test_separate_jobs_differ_only_in_job_index(tmp_path: Path) -> None:
    config = _config(tmp_path, {**CASPER, "jobs": 3})
    a, b = pbs.job_script(config, job_index=0, n_jobs=3), pbs.job_script(config, job_index=2, n_jobs=3)
    assert "#PBS -J" not in a
    assert a.replace("--job-index 0", "--job-index 2").replace("job 0 of", "job 2 of") == b


def test_python_of_the_job_can_be_set(tmp_path: Path) -> None:
    config = _config(tmp_path, {**CASPER, "python": "conda run -n echo python"})
    assert "\nexec conda run -n echo python -m hyper_opt.launch.job " in pbs.job_script(config)


def test_overrides_reach_the_workers_quoted(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": CASPER}, model={"model": {"x": 0.0}, "name": "a"})
    config = load_config(s.hyper, s.model, overrides=["optuna:n_trials=7", "model:name=a b"])[0]
    script = pbs.job_script(config)
    assert "--set optuna:n_trials=7 --set 'model:name=a b'" in script


@pytest.mark.parametrize(("batch", "expected"), [
    ({"l": "walltime=12 hours"}, "pbs:batch:l: 'walltime=12 hours' is not 'resource=value'"),
    ({"l": ["walltime=1:2:3:4"]}, "pbs:batch:l[0]: walltime '1:2:3:4' is not [[hours:]minutes:]seconds"),
    ({"l": ["select=1:ncpus=8:=1"]}, "pbs:batch:l[0]: select '1:ncpus=8:=1' is not N:resource=value"),
    ({"l": [{"select": 1}]}, "pbs:batch:l[0]: must be a string"),
    ({"walltime": "01:00:00"}, "unknown qsub option -walltime"),
    ({"walltime": "01:00:00"}, 'a resource goes under l, e.g. l: ["walltime=..."]'),
    ({"x": "1"}, "pbs:batch:x: unknown qsub option -x (known: A (account)"),
    ({"I": True}, "pbs:batch:I: -I cannot be given (an interactive job runs no script)"),
    ({"J": "0-3"}, "use pbs:array: true"),
    ({"r": "maybe"}, "pbs:batch:r: -r takes y or n, got 'maybe'"),
    ({"j": "oo"}, "pbs:batch:j: -j takes oe, eo or n"),
    ({"N": "my job"}, "pbs:batch:N: 'my job' must be one word"),
    ({"V": "yes please"}, "pbs:batch:V: -V is a flag"),
    ({"p": "high"}, "pbs:batch:p: the priority 'high' is not an integer"),
    ({"q": ["a", "b"]}, "pbs:batch:q: must be a string or number"),
])
def test_malformed_options_are_refused_naming_the_key(tmp_path: Path, batch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        pbs.directives(_config(tmp_path, {"batch": batch}))
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        pbs.directives(_config(tmp_path, {"batch": {"l": ["walltime=x"], "r": "maybe", "zz": 1}}))
    assert len(info.value.problems) == 3


def test_newline_in_a_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="newline"):
        pbs.directives(_config(tmp_path, {"batch": {"l": ["walltime=01:00:00\n#PBS -q x"]}}))


def test_yaml_booleans_for_rerunnable(tmp_path: Path) -> None:
    assert pbs.as_mapping(pbs.directives(_config(tmp_path, {"batch": {"r": True}})))["r"] == ["y"]


def test_walltimes() -> None:
    assert walltime_seconds("12:00:00") == 43200
    assert walltime_seconds("90:00") == 5400
    assert walltime_seconds("3600") == 3600
    assert walltime_seconds("1:00:00.5") == 3600
    assert walltime_seconds("12 hours") is None
    assert pbs.stop_margin_s(120) == 30 and pbs.stop_margin_s(43200) == 60 and pbs.stop_margin_s(None) == 60


def test_qstat_full_of_a_running_pbs_pro_job() -> None:
    jobs = parse_qstat_full((GOLDEN / QSTAT_F_RUNNING).read_text())
    job = jobs[JOB_RUNNING]
    assert job["job_state"] == "R" and job["Resource_List.walltime"] == "00:00:20"
    assert job["Resource_List.select"] == "1:ncpus=2:ngpus=2"
    assert job["exec_vnode"] == "(localhost:ncpus=2:ngpus=2)" and host_gpus(job) == 2
    assert "PBS_O_WORKDIR=/tmp/openpbs," in job["Variable_List"], "wrapped lines are joined"
    assert ":/root/.pyenv/plugins/pyenv-virtualenv/shims:" in job["Variable_List"], "a wrap inside a word"
    start = time.mktime(time.strptime("Wed Dec  2 17:42:23 2026", "%a %b %d %H:%M:%S %Y"))
    assert deadline_from_attrs(job) == start + 20, "start time + walltime"
    no_stime = {k: v for k, v in job.items() if k != "stime"}
    assert deadline_from_attrs(no_stime, now=1000.0) == 1000.0 + 20 - 1, "walltime - used"
    assert deadline_from_attrs({"job_state": "Q"}) is None


def test_qstat_x_full_of_finished_jobs_a_walltime_kill_and_an_array() -> None:
    jobs = parse_qstat_full((GOLDEN / "qstat_xf_openpbs-23.06.06_finished.txt").read_text())
    assert set(jobs) == {"0.localhost", "1.localhost", "2[].localhost"}
    assert {j: a["job_state"] for j, a in jobs.items()} == dict.fromkeys(jobs, "F")
    assert jobs["0.localhost"]["Exit_status"] == "0"
    assert jobs["0.localhost"]["comment"].endswith("on (localhost:ncpus=2) and finished"), "a wrap inside a word"
    killed = jobs["1.localhost"]
    assert killed["Exit_status"] == "-29", "PBS Pro's status of a job killed at its walltime"
    assert killed["comment"].endswith("(localhost:ncpus=2:ngpus=2) and exceeded resource walltime"), \
        "a wrap before a space keeps the space"
    array = jobs["2[].localhost"]
    assert array["array"] == "True" and array["array_indices_submitted"] == "0-1"
    assert array["Output_Path"] == "localhost:/tmp/openpbs/arr.o2.^array_index^"
    subjobs = parse_qstat_full((GOLDEN / "qstat_xft_openpbs-23.06.06_array.txt").read_text())
    assert list(subjobs) == ["2[].localhost", "2[0].localhost", "2[1].localhost"]
    assert subjobs["2[1].localhost"]["exec_vnode"] == "(localhost:ncpus=1:ngpus=1)"


def test_qstat_full_of_slurms_torque_wrapper() -> None:
    text = ("Job Id:\t5\n\tJob_Name = pbstry\n\tJob_Owner = root@localhost\n\tjob_state = C\n\tqueue = debug\n"
            "\tResource_List.walltime = 00:02:00\n\tResource_List.ncpus = 2\n\n")
    job = parse_qstat_full(text)["5"]
    assert job["job_state"] == "C" and job["Resource_List.walltime"] == "00:02:00"


def test_gpus_of_a_job_without_cuda_visible_devices() -> None:
    from hyper_opt.launch.pbs_env import fill_gpus, host_gpus

    two = {"exec_host": "gpu01/0*2", "exec_vnode": "(gpu01:ncpus=2:ngpus=2)", "Resource_List.ngpus": "2"}
    assert host_gpus(two) == 2
    chunks = {"exec_host": "n1/0*8+n2/0*8", "exec_vnode": "(n1[0]:ngpus=1)+(n1[1]:ncpus=8:ngpus=2)+(n2:ngpus=4)",
              "Resource_List.ngpus": "7"}
    assert host_gpus(chunks) == 3, "only the first host's chunks: the workers run there"
    assert host_gpus({"exec_vnode": "(n1:ncpus=8)", "Resource_List.select": "1:ncpus=8:ngpus=2+1:ngpus=1"}) == 2, \
        "the scheduler does not allocate ngpus: the first chunk asked for"
    cpu_job = parse_qstat_full((GOLDEN / "qstat_xf_openpbs-23.06.06_cpu_job_walltime.txt").read_text())
    [attrs] = cpu_job.values()
    assert attrs["Resource_List.ngpus"] == "4" and attrs["Resource_List.select"] == "1:ncpus=1"
    assert host_gpus(attrs) is None, "the job-wide ngpus came from the queue's resources_max, not the job"
    env: dict[str, str] = {}
    warning = fill_gpus(env, two)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and "set no CUDA_VISIBLE_DEVICES" in (warning or "")
    env = {"CUDA_VISIBLE_DEVICES": "GPU-aa"}
    assert fill_gpus(env, two) is None and env["CUDA_VISIBLE_DEVICES"] == "GPU-aa", "the hook's choice is kept"
    env = {}
    assert fill_gpus(env, attrs) is None and "CUDA_VISIBLE_DEVICES" not in env


def test_pbs_commands_can_come_from_a_folder_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyper_opt.launch.pbs_env import command

    bin_dir = tmp_path / "pbs_bin"
    _fake(bin_dir, "qstat", "exit 0\n")
    assert command("qstat", {"HYPER_OPT_PBS_BIN": str(bin_dir), "PATH": "/nowhere"}) == str(bin_dir / "qstat")
    assert command("qdel", {"HYPER_OPT_PBS_BIN": str(bin_dir), "PATH": os.environ["PATH"]}) is None
    assert command("qstat", {"PATH": str(bin_dir)}) == str(bin_dir / "qstat")
    monkeypatch.setenv("HYPER_OPT_PBS_BIN", str(bin_dir))
    script = pbs.job_script(_config(tmp_path, CASPER))
    assert f"export HYPER_OPT_PBS_BIN={bin_dir}" in script, "the job asks the same installation"


def test_job_ids_from_qsub() -> None:
    assert pbs.parse_job_id("4158733.casper-pbs\n") == "4158733.casper-pbs"
    assert pbs.parse_job_id("4158730[].casper-pbs\n") == "4158730[].casper-pbs"
    assert pbs.parse_job_id("some banner\n123\n") == "123"
    assert pbs.parse_job_id("qsub: Unknown queue\n") is None
    assert pbs.parse_job_id("") is None


def test_each_worker_gets_one_of_the_jobs_gpus() -> None:
    assert plan_workers({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, gpus_per_node=2, tasks_per_worker=2) == \
        ["GPU-aa", "GPU-aa", "GPU-bb", "GPU-bb"]
    assert plan_workers({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, gpus_per_node=0, tasks_per_worker=1) == ["0", "1", "2", "3"]
    assert plan_workers({}, gpus_per_node=1, tasks_per_worker=2) == ["", ""]
    argv = worker_argv("h.yml", None, ["a:b=1"], worker_index=3, deadline=1234.6)
    assert argv[1:] == ["-m", "hyper_opt.run", "h.yml", "--worker-index", "3", "--deadline", "1235", "--set", "a:b=1"]


# --------------------------------------------------------------------------- a fake qsub on PATH


def _fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(bin_dir: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_submission_writes_the_script_and_records_the_job(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": {**CASPER, "jobs": 2}}, optuna={"n_trials": 4})
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _fake(bin_dir, "qsub", f'echo "$PWD $*" >> {calls}\nn=$(wc -l < {calls})\necho "$((4158732 + n)).casper-pbs"\n')
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True, env=_env(bin_dir))
    assert "submitted 2 PBS job(s): 4158733.casper-pbs 4158734.casper-pbs" in proc.stdout
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{s.save_path} pbs/job_") and lines[0].endswith("_0.sh")
    script = (s.save_path / lines[1].split()[1]).read_text()
    assert "--job-index 1" in script and "#PBS -q casper" in script
    import json

    record = json.loads((s.save_path / "jobs.json").read_text())
    assert [(r["job_id"], r["scheduler"]) for r in record] == [("4158733.casper-pbs", "pbs"), ("4158734.casper-pbs", "pbs")]


def test_reload_submits_only_what_the_budget_needs(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": {**CASPER, "jobs": 5}}, optuna={"n_trials": 3})
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True)
    s.rewrite_hyper(lambda h: h["optuna"].update(n_trials=5))
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _fake(bin_dir, "qsub", f'echo "$*" >> {calls}\necho 77.srv\n')
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--reload", check=True, env=_env(bin_dir))
    assert len(calls.read_text().splitlines()) == 2, proc.stdout  # 2 trials left, 1 worker per job


def test_qsub_refusal_is_one_clear_error(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": CASPER})
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "qsub", "echo 'qsub: Unknown queue' >&2\nexit 170\n")
    proc = s.cli("optimize", "hyper.yml", "model.yml", env=_env(bin_dir))
    assert proc.returncode == 2
    assert "qsub refused the job (exit 170)" in proc.stderr and "Unknown queue" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_qsub_on_path_is_refused_naming_local(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": CASPER})
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = s.cli("optimize", "hyper.yml", "model.yml", env={"PATH": str(empty)})
    assert proc.returncode == 2
    assert "qsub is not on PATH" in proc.stderr and "--local" in proc.stderr
    assert not (s.save_path / "trials").exists(), "nothing ran on this machine"


def test_no_sbatch_on_path_is_refused_naming_local(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {"batch": {"t": "10"}}})
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = s.cli("optimize", "hyper.yml", "model.yml", env={"PATH": str(empty)})
    assert proc.returncode == 2 and "sbatch is not on PATH" in proc.stderr and "--local" in proc.stderr


def test_both_sections_pick_by_path_or_ask(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {"batch": {"t": "10"}}, "pbs": CASPER})
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", env={"PATH": str(empty)})
    assert proc.returncode == 2 and "--scheduler slurm or --scheduler pbs" in proc.stderr
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", "--scheduler", "pbs", check=True,
                 env={"PATH": str(empty)})
    assert "#PBS -q casper" in proc.stdout
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "qsub", "echo 1.srv\n")
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True, env={"PATH": str(bin_dir)})
    assert "PBS job(s) with qsub" in proc.stdout, "the one whose submit command is on PATH"
    # Both on PATH, but qsub is Slurm's own torque wrapper: the cluster is a Slurm cluster.
    _fake(bin_dir, "sbatch", "echo Submitted batch job 1\n")
    _fake(bin_dir, "srun", "exit 0\n")
    (bin_dir / "qsub").write_text("#!/usr/bin/perl\n# Slurm's qsub wrapper: translates to sbatch\n")
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True, env={"PATH": str(bin_dir)})
    assert "Slurm job(s)" in proc.stdout and "#SBATCH" in proc.stdout


def test_dry_run_prints_the_script_and_never_calls_qsub(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": DERECHO})
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    _fake(bin_dir, "qsub", f"echo called >> {calls}\necho 1.srv\n")
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True, env=_env(bin_dir))
    assert "2 PBS job(s) as one array" in proc.stdout and "8 worker(s) each (4 GPU slot(s) x 2 task(s))" in proc.stdout
    assert "#PBS -l select=2:ncpus=64:ngpus=4" in proc.stdout
    assert not calls.exists() and not s.save_path.exists()


def test_dry_run_labels_gpu_workers_from_select_and_gres(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": {"batch": {"l": "select=1:ngpus=2"}}})
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True)
    assert "2 worker(s) each (GPU workers" in proc.stdout and "CPU workers" not in proc.stdout
    s = write_search(tmp_path / "t", extra={"slurm": {"batch": {"gres": "gpu:v100:1"}}})
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True)
    assert "(GPU workers" in proc.stdout and "CPU workers" not in proc.stdout


def test_status_and_cancel_through_fake_qstat_and_qdel(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": CASPER}, optuna={"n_trials": 2})
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    running = GOLDEN / QSTAT_F_RUNNING
    _fake(bin_dir, "qsub", f"echo {JOB_RUNNING}\n")
    _fake(bin_dir, "qstat", f'echo "qstat $*" >> {calls}\nif [ -e {tmp_path}/deleted ]; then\n'
                            f'  sed "s/job_state = R/job_state = F/" {running}\nelse\n  cat {running}\nfi\n')
    _fake(bin_dir, "qdel", f'echo "qdel $*" >> {calls}\ntouch {tmp_path}/deleted\n')
    s.cli("optimize", "hyper.yml", "model.yml", check=True, env=_env(bin_dir))
    status = s.cli("status", "hyper.yml", check=True, env=_env(bin_dir))
    assert "PBS jobs (1):" in status.stdout and "RUNNING" in status.stdout
    assert "walltime used 00:00:01 of 00:00:20" in status.stdout
    cancel = s.cli("cancel", "hyper.yml", check=True, env=_env(bin_dir))
    assert f"cancelled 1 PBS job(s): {JOB_RUNNING}" in cancel.stdout
    assert f"qdel {JOB_RUNNING}" in calls.read_text()
    assert f"qstat -x -f {JOB_RUNNING}" in calls.read_text()


def test_jobs_recorded_in_the_old_slurm_jobs_json_are_still_known(tmp_path: Path) -> None:
    # A study started before the record belonged to no scheduler: its jobs are in slurm_jobs.json
    # (Slurm's entries without "scheduler"). status and cancel still find them; new ones go to jobs.json.
    import json

    s = write_search(tmp_path / "s", extra={"pbs": CASPER}, optuna={"n_trials": 2})
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    running = GOLDEN / QSTAT_F_RUNNING
    _fake(bin_dir, "qsub", "echo 4158734.casper-pbs\n")
    deleted = tmp_path / "deleted"
    _fake(bin_dir, "qstat", f'echo "qstat $*" >> {calls}\nif [ -e {deleted} ]; then\n'
                            f'  sed "s/job_state = R/job_state = F/" {running}\nelse\n  cat {running}\nfi\n')
    _fake(bin_dir, "qdel", f'echo "qdel $*" >> {calls}\ntouch {deleted}\n')
    for name in ("sacct", "squeue", "scancel"):  # never the real Slurm's job 77
        _fake(bin_dir, name, f'echo "{name} $*" >> {calls}\n')
    s.save_path.mkdir(parents=True)
    study = s.hyper_config()["optuna"]["study_name"]
    old = [{"job_id": "77", "submitted": "2025-01-01T00:00:00", "folder": "x", "study": study},
           {"job_id": JOB_RUNNING, "submitted": "2025-01-01T00:00:01", "folder": "y", "study": study,
            "scheduler": "pbs"}]
    (s.save_path / "slurm_jobs.json").write_text(json.dumps(old))
    s.cli("optimize", "hyper.yml", "model.yml", check=True, env=_env(bin_dir))
    new = json.loads((s.save_path / "jobs.json").read_text())
    assert [j["job_id"] for j in new] == ["4158734.casper-pbs"], "new jobs go to jobs.json only"
    assert json.loads((s.save_path / "slurm_jobs.json").read_text()) == old, "the old file is left as it was"
    config, _ = load_config(s.hyper, s.model)
    from hyper_opt.launch.records import recorded_jobs

    assert [j["job_id"] for j in recorded_jobs(config, "slurm")] == ["77"]
    assert [j["job_id"] for j in recorded_jobs(config, "pbs")] == [JOB_RUNNING, "4158734.casper-pbs"]
    status = s.cli("status", "hyper.yml", check=True, env=_env(bin_dir))
    assert "PBS jobs (2):" in status.stdout and JOB_RUNNING in status.stdout
    s.cli("cancel", "hyper.yml", env=_env(bin_dir))
    assert f"qdel {JOB_RUNNING}" in calls.read_text() and "scancel 77" in calls.read_text()


def test_job_deadline_from_qstat_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyper_opt.launch.pbs_env import job_deadline

    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "qstat", f'[ "$1 $2" = "-f {JOB_RUNNING}" ] && cat {GOLDEN / QSTAT_F_RUNNING}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    start = time.mktime(time.strptime("Wed Dec  2 17:42:23 2026", "%a %b %d %H:%M:%S %Y"))
    assert job_deadline({"PBS_JOBID": JOB_RUNNING, "PATH": os.environ["PATH"]}) == start + 20
    assert job_deadline({}) is None


def test_the_job_passes_sigterm_to_its_workers() -> None:
    import signal
    import subprocess

    from hyper_opt.launch.job import forward_signals, wait_all

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    restore = forward_signals(procs)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_all(procs) == [-signal.SIGTERM, -signal.SIGTERM]
    finally:
        restore()
        for p in procs:
            p.kill()
