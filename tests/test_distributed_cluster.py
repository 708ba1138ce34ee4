"""Distributed trials (issue 20) on the real local Slurm cluster and OpenPBS, with PostgreSQL.

The Slurm node advertises fake GPUs (gres with /dev/null files): a job given ``gres=gpu:4`` sees
four ids in CUDA_VISIBLE_DEVICES and its trials of ``gpus_per_trial: 2`` split them. "Two nodes"
are two srun tasks (or two PBS chunks placed on the one node) with ``HYPER_OPT_TEST_NODES_ON_ONE``:
the launch path and the rendezvous are the real ones, only the hosts coincide.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from hyper_opt.distributed.launch import ONE_NODE_ENV

from .test_distributed import rank_records, ranked_search, study_of
from .test_faults import _wait_for, _wait_job_gone
from .test_openpbs import _job_env_lines
from .test_slurm import _job_ids, _wait_jobs_done

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TS = optuna.trial.TrialState
FINISHED = (TS.COMPLETE, TS.PRUNED)


def _overlap(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    return a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


def _check_ranks(records: dict[int, dict[str, Any]], trial: optuna.trial.FrozenTrial, world: int) -> None:
    assert sorted(records) == list(range(world)), (trial.number, sorted(records))
    assert {r["world"] for r in records.values()} == {world}
    assert {r["sum"] for r in records.values()} == {world * (world + 1) / 2}, "one gloo group across the ranks"
    assert len({str(r["params"]) for r in records.values()}) == 1 and records[0]["params"]["x"] == trial.params["x"]


@pytest.mark.slurm
def test_slurm_job_runs_two_trials_of_two_ranks_at_a_time(tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    s = ranked_search(tmp_path / "s", n_trials=4, steps=4, sleep=0.5, ddp=True, optuna_keys={"storage": pg_url},
                      extra={"slurm": {"jobs": 1, "gpus_per_node": 4, "gpus_per_trial": 2,
                                       "batch": {"gres": "gpu:4", "t": "00:10:00", "J": "hoptest-ddp", "mem": "2G"}}})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    states = _wait_jobs_done(ids, timeout=300)
    assert set(states.values()) == {"COMPLETED"}, states
    study = study_of(s, pg_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3] and all(t.state == TS.COMPLETE for t in study.trials)
    records = rank_records(s)
    gpus = {}
    for t in study.trials:
        _check_ranks(records[t.number], t, 2)
        gpus[t.number] = {records[t.number][0]["gpu"], records[t.number][1]["gpu"]}
        assert len(gpus[t.number]) == 2, f"trial {t.number}: both ranks picked one GPU"
        assert t.user_attrs["slurm_job_id"] == ids[0]
        assert t.user_attrs["gpus"] == 2, "a trial's GPU-hours count both of its GPUs"
    pairs = [(a, b) for a in study.trials for b in study.trials if a.number < b.number and _overlap(a, b)]
    assert pairs, "two trials ran at a time in the one job"
    for a, b in pairs:
        assert not gpus[a.number] & gpus[b.number], f"trials {a.number} and {b.number} shared a GPU"
    assert set().union(*gpus.values()) <= set("0123") or len(set().union(*gpus.values())) == 4


@pytest.mark.slurm
def test_scancel_mid_trial_requeues_it_and_the_retry_runs_both_ranks(tmp_path: Path, pg_url: str,
                                                                     slurm_cluster: str) -> None:
    # First attempts hold after step 1 until `go`, so the trial picked is still training when the
    # scancel lands, however long the poll and scancel take on a loaded machine.
    go = tmp_path / "go"
    s = ranked_search(tmp_path / "s", n_trials=3, steps=8, sleep=0.5, optuna_keys={"storage": pg_url, "max_retry": 2},
                      extra={"slurm": {"jobs": 2, "gpus_per_node": 2, "gpus_per_trial": 2,
                                       "batch": {"gres": "gpu:2", "t": "00:10:00", "J": "hoptest-ddp", "mem": "1G"}}},
                      hold_step=1, go=str(go))
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    out = s.folder / "out"

    def training() -> Any:  # a trial whose two ranks have started, in either job
        for t in study_of(s, pg_url).trials:
            if t.state == TS.RUNNING and (out / f"t{t.number}_r1.started").exists() and t.intermediate_values:
                return t
        return None

    victim = _wait_for(training, 180, "a trial training on both ranks")
    subprocess.run(["scancel", victim.user_attrs["slurm_job_id"]], check=True)
    _wait_job_gone(victim.user_attrs["slurm_job_id"], 120)
    go.touch()
    _wait_jobs_done(ids, timeout=300)
    study = study_of(s, pg_url)
    failed = next(t for t in study.trials if t.number == victim.number)
    assert failed.state == TS.FAIL
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == victim.number)
    assert retry.state == TS.COMPLETE and retry.params == victim.params
    records = rank_records(s)[retry.number]
    assert sorted(records) == [0, 1] and all(r["retry"] for r in records.values())
    assert records[0]["start"] == records[1]["start"] >= 1, "both ranks resumed from rank 0's checkpoint"
    assert sum(t.state in FINISHED for t in study.trials) == 3
    assert not [t for t in study.trials if t.state == TS.RUNNING]


@pytest.mark.slurm
def test_warning_signal_stops_every_rank_at_one_step_and_the_requeued_job_resumes(
        tmp_path: Path, pg_url: str, slurm_cluster: str) -> None:
    s = ranked_search(tmp_path / "s", n_trials=1, steps=10, sleep=1.0, optuna_keys={"storage": pg_url},
                      extra={"slurm": {"jobs": 1, "gpus_per_node": 2, "gpus_per_trial": 2,
                                       "batch": {"gres": "gpu:2", "t": "00:10:00", "J": "hoptest-ddp", "mem": "1G"}}})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    _wait_for(lambda: (t := study_of(s, pg_url).trials) and len(t[0].intermediate_values) >= 2, 120,
              "two steps of trial 0")
    subprocess.run(["scancel", "--batch", "--signal=USR2", ids[0]], check=True)  # as before a time limit
    states = _wait_jobs_done(ids, timeout=240)
    assert states[ids[0]] == "COMPLETED", states
    study = study_of(s, pg_url)
    first, resumed = study.trials[0], study.trials[-1]
    assert first.state == TS.FAIL and "Interrupted" in first.user_attrs["error"]
    assert resumed.state == TS.COMPLETE and resumed.user_attrs.get("retry_of") == 0
    records = rank_records(s)
    stopped = records[0]
    assert stopped[0]["steps"] == stopped[1]["steps"], "every rank stopped at the same step"
    again = records[resumed.number]
    assert sorted(again) == [0, 1] and again[0]["start"] == again[1]["start"] == len(stopped[0]["steps"])
    log = "".join(p.read_text() for p in (s.save_path / "slurm").glob("*_log.out"))
    assert "requeueing to continue the study" in log


@pytest.mark.slurm
def test_a_trial_across_two_nodes_starts_through_srun_with_a_real_rendezvous(
        tmp_path: Path, pg_url: str, slurm_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ONE_NODE_ENV, "1")  # the two "nodes" are two srun tasks on the one node
    s = ranked_search(tmp_path / "s", n_trials=2, steps=2, sleep=0.2, ddp=True, optuna_keys={"storage": pg_url},
                      extra={"slurm": {"jobs": 1, "gpus_per_node": 1, "nodes_per_trial": 2,
                                       "batch": {"gres": "gpu:1", "t": "00:10:00", "J": "hoptest-ddp", "mem": "2G",
                                                 "cpus-per-task": 2}}})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    states = _wait_jobs_done(ids, timeout=300)
    assert set(states.values()) == {"COMPLETED"}, states
    study = study_of(s, pg_url)
    assert [t.state for t in study.trials] == [TS.COMPLETE, TS.COMPLETE]
    records = rank_records(s)
    for t in study.trials:
        _check_ranks(records[t.number], t, 2)
        assert {r["group"] for r in records[t.number].values()} == {"0", "1"}, "one rank per node, two nodes"
        assert records[t.number][0]["master"] == records[t.number][1]["master"]
    steps = subprocess.run(["sacct", "-n", "-P", "-j", ids[0], "-o", "JobName,NTasks"], capture_output=True,
                           text=True, check=True).stdout
    assert "trial_0|2" in steps, f"the ranks ran as a 2-task srun step:\n{steps}"


@pytest.mark.pbs
def test_openpbs_job_runs_two_rank_trials_and_a_trial_across_two_chunks(
        tmp_path: Path, pg_url: str, pbs_cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ONE_NODE_ENV, "1")  # place=pack: the trial's two chunks on the one node
    env = {"HYPER_OPT_PBS_BIN": str(pbs_cluster)}
    searches = {
        "gpus": ranked_search(tmp_path / "gpus", n_trials=2, steps=3, sleep=0.3, ddp=True,
                              optuna_keys={"storage": pg_url},
                              extra={"pbs": {"jobs": 1, "gpus_per_node": 4, "gpus_per_trial": 2,
                                             "bash": _job_env_lines(), "batch": {"l": ["walltime=00:10:00"]}}}),
        "nodes": ranked_search(tmp_path / "nodes", n_trials=1, steps=2, sleep=0.2, ddp=True,
                               optuna_keys={"storage": pg_url},
                               extra={"pbs": {"jobs": 1, "nodes_per_trial": 2,
                                              "bash": [*_job_env_lines(), f"export {ONE_NODE_ENV}=1"],
                                              "batch": {"l": ["walltime=00:10:00"]}}}),
    }
    for s in searches.values():
        s.cli("optimize", "hyper.yml", "model.yml", check=True, env=env)
    for name, s in searches.items():
        _wait_for(lambda s=s: (t := study_of(s, pg_url).trials) and all(x.state in FINISHED for x in t)
                  and len(t) == s.hyper_config()["optuna"]["n_trials"], 300, f"the {name} search")
    study = study_of(searches["gpus"], pg_url)
    records = rank_records(searches["gpus"])
    for t in study.trials:
        _check_ranks(records[t.number], t, 2)
        assert records[t.number][0]["gpu"] != records[t.number][1]["gpu"], "each rank its own GPU"
        assert t.user_attrs.get("pbs_job_id")
    study = study_of(searches["nodes"], pg_url)
    records = rank_records(searches["nodes"])
    _check_ranks(records[0], study.trials[0], 2)
    assert {r["group"] for r in records[0].values()} == {"0", "1"}, "one agent per chunk, started by pbsdsh"
    deadline = time.time() + 60  # the jobs end once the study is done
    while time.time() < deadline and any(
            subprocess.run([str(pbs_cluster / "qstat"), "-x", "-f"], capture_output=True, text=True).stdout.count(
                f"job_state = {st}") for st in ("R", "Q")):
        time.sleep(1)
    assert os.path.exists(searches["nodes"].save_path / "ranks" / "trial_0" / "rank_1.log")
