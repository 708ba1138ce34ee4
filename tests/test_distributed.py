"""Distributed trials (issue 20): ``gpus_per_trial`` / ``nodes_per_trial``, on this machine.

The searches here run with ``--local`` on the embedded storage; the Slurm and OpenPBS ones are in
tests/test_distributed_cluster.py. Every rank of a trial writes what it saw (its rank, the GPU
its LOCAL_RANK picks, the parameters, the steps it trained) to ``out/t<trial>_r<rank>.json``, so
the tests compare the ranks of one trial with each other.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError
from hyper_opt.launch.job import plan_workers
from hyper_opt.objective import pick_device

from .conftest import Search, write_search

TS = optuna.trial.TrialState

# One objective for every distributed test; conf says what it does. With ``ddp`` it opens a gloo
# group and all-reduces rank + 1 (so a 2-rank trial sums to 3): the real rendezvous.
RANKED = textwrap.dedent('''
    import json, os, signal, time
    from pathlib import Path
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
            first = "retry_of" not in trial.user_attrs
            total = None
            if conf.get("ddp"):
                import torch
                import torch.distributed as dist
                dist.init_process_group("gloo")
                t = torch.tensor([float(rank + 1)])
                dist.all_reduce(t)
                total = t.item()
            extra = trial.suggest_int("extra", 1, 1000)  # suggested inside train, on every rank
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            if rank == conf.get("late_rank"):
                time.sleep(1.0)  # rank 0 has saved a newer checkpoint by now
            state = self.load_checkpoint(trial) or {"step": 0}
            record = {"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")),
                      "group": os.environ.get("GROUP_RANK"), "gpu": visible.split(",")[local] if visible else "",
                      "params": dict(trial.params), "extra": extra, "sum": total, "start": state["step"],
                      "steps": [], "retry": not first, "device": self.device, "pid": os.getpid(),
                      "master": [os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")]}
            out = Path(conf["out"])
            out.mkdir(exist_ok=True)
            (out / f"t{trial.number}_r{rank}.started").write_text(str(os.getpid()))
            if rank == conf.get("die_after_rank_0"):  # dies once rank 0 has its result
                while not (out / f"t{trial.number}_r0.json").exists():
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                for step in range(state["step"], int(conf["steps"])):
                    time.sleep(float(conf["sleep"]))
                    if first and step == conf.get("kill_step") and rank == conf.get("kill_rank"):
                        (out / f"t{trial.number}_r{rank}.killed").write_text("")
                        os.kill(os.getpid(), signal.SIGKILL)
                    if first and step == conf.get("kill_step") and rank == 0 and conf.get("kill_rank"):
                        # rank 0 has no result before the kill (a rank started late would otherwise
                        # die after it, when rank 0's result stands): it waits to be stopped
                        deadline = time.time() + 60
                        while not (out / f"t{trial.number}_r{conf['kill_rank']}.killed").exists() and time.time() < deadline:
                            time.sleep(0.05)
                        time.sleep(60)
                    if step == conf.get("raise_step") and rank == conf.get("raise_rank"):
                        raise ValueError(f"rank {rank} broke at step {step}")
                    record["steps"].append(step)
                    self.save_checkpoint(trial, {"step": step + 1})
                    self.report(trial, float(conf["model"]["x"]) ** 2 + step, step)
                    while first and step == conf.get("hold_step") and not os.path.exists(conf["go"]):
                        time.sleep(0.05)  # the test's fault lands in a trial that is still training
            finally:
                (out / f"t{trial.number}_r{rank}.json").write_text(json.dumps(record))
            return {"val_loss": float(conf["model"]["x"]) ** 2, "world": record["world"]}
''')


def ranked_search(folder: Path, *, extra: dict[str, Any], n_trials: int, steps: int = 3, sleep: float = 0.05,
                  optuna_keys: dict[str, Any] | None = None, **model: Any) -> Search:
    return write_search(folder, objective=RANKED, extra=extra,
                        model={"model": {"x": 0.0}, "out": str(folder / "out"), "steps": steps, "sleep": sleep,
                               **model},
                        optuna={"n_trials": n_trials, "parameters": {
                            "model:x": {"type": "float", "settings": {"name": "x", "low": -1.0, "high": 1.0}}},
                            **(optuna_keys or {})})


def rank_records(s: Search) -> dict[int, dict[int, dict[str, Any]]]:
    """trial number -> rank -> what that rank recorded."""
    found: dict[int, dict[int, dict[str, Any]]] = {}
    for path in (s.folder / "out").glob("t*_r*.json"):
        trial, rank = path.stem[1:].split("_r")
        found.setdefault(int(trial), {})[int(rank)] = json.loads(path.read_text())
    return found


def study_of(s: Search, storage: str | None = None) -> Any:
    """The study's trials and user attributes, read with an engine that is disposed at once: a
    test polling a database leaves no pooled connection behind for a later fork to inherit."""
    from types import SimpleNamespace

    name = s.hyper_config()["optuna"]["study_name"]
    rdb = optuna.storages.RDBStorage(storage or f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        return SimpleNamespace(trials=study.get_trials(deepcopy=False), user_attrs=dict(study.user_attrs))
    finally:
        rdb.engine.dispose()


# ------------------------------------------------------------------------------------------ config


def _problems(tmp_path: Path, extra: dict[str, Any]) -> str:
    s = write_search(tmp_path / "s", extra=extra)
    with pytest.raises(ConfigError) as err:
        load_config(s.hyper, s.model)
    return str(err.value)


def test_a_trial_larger_than_a_jobs_gpus_is_refused_with_its_key_path(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"slurm": {"gpus_per_node": 2, "gpus_per_trial": 4}})
    assert "slurm:gpus_per_trial" in text and "more than the 2 GPU(s)" in text and str(tmp_path) in text


def test_gpus_per_trial_must_divide_gpus_per_node(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"pbs": {"gpus_per_node": 4, "gpus_per_trial": 3}})
    assert "pbs:gpus_per_trial" in text and "does not divide" in text and "a divisor of 4" in text


def test_nodes_per_trial_needs_as_many_nodes_in_the_job(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"slurm": {"nodes_per_trial": 2, "batch": {"nodes": 1}}})
    assert "slurm:batch:nodes" in text and "nodes_per_trial is 2" in text
    text = _problems(tmp_path, {"pbs": {"nodes_per_trial": 2, "batch": {"l": ["select=1:ncpus=4:ngpus=4"]}}})
    assert "pbs:batch:l" in text and "asks for 1 node(s)" in text


def test_a_local_search_refuses_nodes_per_trial_and_zero_gpus(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"local": {"nodes_per_trial": 2, "gpus_per_trial": 0}})
    assert "local:nodes_per_trial" in text and "this machine only" in text
    assert "local:gpus_per_trial" in text


def test_a_valid_trial_size_reaches_the_config(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {"gpus_per_node": 4, "gpus_per_trial": 2},
                                            "local": {"workers": 2, "gpus_per_trial": 2}})
    config, _ = load_config(s.hyper, s.model)
    assert config.slurm is not None and config.slurm.gpus_per_trial == 2 and config.slurm.workers_per_job == 2
    assert config.local_gpus_per_trial == 2


def test_dry_run_shows_trials_at_a_time_and_ranks(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"slurm": {"gpus_per_node": 4, "gpus_per_trial": 2,
                                                      "batch": {"t": "00:10:00"}}})
    out = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True).stdout
    assert "2 worker(s) each" in out
    line = next(x for x in out.splitlines() if x.startswith("trials "))
    assert "2 at a time per job, 2 ranks each" in line and "1 GPU per rank" in line, out
    pbs = write_search(tmp_path / "p", extra={"pbs": {"gpus_per_node": 4, "gpus_per_trial": 2, "nodes_per_trial": 2}})
    out = pbs.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True).stdout
    assert "#PBS -l select=2:ncpus=1:ngpus=4" in out and "#PBS -l place=scatter" in out, out
    assert "--gpus-per-trial 2 --nodes-per-trial 2" in out, "the job script passes the size to its workers"
    assert "4 ranks each (2 per node on 2 nodes" in out
    local = write_search(tmp_path / "l", extra={"local": {"workers": 3, "gpus_per_trial": 2}})
    out = local.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True).stdout
    assert "trials     3 at a time, 2 ranks each" in out, out


def test_a_jobs_gpus_are_grouped_per_trial() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert plan_workers(env, gpus_per_node=4, tasks_per_worker=1, gpus_per_trial=2) == ["0,1", "2,3"]
    assert plan_workers(env, gpus_per_node=4, tasks_per_worker=2, gpus_per_trial=4) == ["0,1,2,3"] * 2
    assert plan_workers(env, gpus_per_node=4, tasks_per_worker=1) == ["0", "1", "2", "3"]
    assert plan_workers({}, gpus_per_node=4, tasks_per_worker=1, gpus_per_trial=2) == ["", ""]  # CPU ranks


def test_a_rank_picks_its_gpu_by_local_rank_as_under_torchrun() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "2,3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert pick_device(env) == "cpu"  # no GPU in torch here; the CPU fallback
    assert pick_device({"CUDA_VISIBLE_DEVICES": "2,3"}) == "cpu"  # two GPUs and no rank: not one device


# ------------------------------------------------------------------------------------------ local


@pytest.mark.slow
@pytest.mark.cpu
def test_two_rank_trials_share_parameters_see_their_own_gpus_and_rendezvous(tmp_path: Path) -> None:
    s = ranked_search(tmp_path / "s", extra={"local": {"workers": 2, "gpus_per_trial": 2}}, n_trials=4, ddp=True)
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True, env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    study = study_of(s)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TS.COMPLETE for t in study.trials)
    records = rank_records(s)
    groups = set()
    for t in study.trials:
        ranks = records[t.number]
        assert sorted(ranks) == [0, 1], t.number
        r0, r1 = ranks[0], ranks[1]
        assert r0["world"] == r1["world"] == 2 and r0["sum"] == r1["sum"] == 3.0, "the gloo group spans both ranks"
        assert r0["params"] == r1["params"] and r0["extra"] == r1["extra"] == t.params["extra"]
        assert r0["params"]["x"] == t.params["x"]
        assert r0["gpu"] != r1["gpu"], f"trial {t.number}: both ranks picked GPU {r0['gpu']}"
        assert r0["master"] == r1["master"] and r0["master"][0] == "127.0.0.1"
        groups.add(frozenset((r0["gpu"], r1["gpu"])))
        assert t.user_attrs["metrics"]["world"] == 2
        assert (s.save_path / "ranks" / f"trial_{t.number}" / "rank_1.log").exists()
    assert groups == {frozenset("45"), frozenset("67")}, "each worker has a GPU group of its own"
    assert not list(s.save_path.glob("ranks/*/.spec.pkl")), "the private spec files are removed"


@pytest.mark.slow
def test_a_pruned_trial_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    s = ranked_search(tmp_path / "s", extra={"local": {"workers": 1, "gpus_per_trial": 2}}, n_trials=2, steps=6,
                      late_rank=1, optuna_keys={"pruner": {"type": "ThresholdPruner", "upper": 1.5}})
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True)
    study = study_of(s)
    records = rank_records(s)
    details = [(t.number, t.state, t.user_attrs.get("error"), records.get(t.number)) for t in study.trials]
    assert [t.state for t in study.trials] == [TS.PRUNED, TS.PRUNED], details  # x^2 + step passes 1.5 by step 2
    for t in study.trials:
        steps = records[t.number][0]["steps"]
        assert steps == records[t.number][1]["steps"] and len(steps) < 6, details
        assert sorted(t.intermediate_values) == steps, "rank 0's reports, each recorded once"
        assert records[t.number][1]["start"] == 0, "a late rank resumes from the checkpoint the trial began with"


@pytest.mark.slow
def test_a_killed_rank_fails_the_trial_and_its_retry_completes(tmp_path: Path) -> None:
    s = ranked_search(tmp_path / "s", extra={"local": {"workers": 1, "gpus_per_trial": 2}}, n_trials=2, steps=3,
                      kill_rank=1, kill_step=1, optuna_keys={"max_retry": 1})
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True, timeout=300)
    study = study_of(s)
    failed = [t for t in study.trials if t.state == TS.FAIL]
    assert len(failed) == 2, [(t.number, t.state) for t in study.trials]  # each trial's first try loses rank 1
    for t in failed:
        assert "rank 1" in t.user_attrs["error"] and "SIGKILL" in t.user_attrs["error"]
        retry = next(r for r in study.trials if r.user_attrs.get("retry_of") == t.number)
        assert retry.state == TS.COMPLETE and retry.params == t.params
        records = rank_records(s)[retry.number]
        assert sorted(records) == [0, 1] and records[1]["retry"] and records[1]["start"] >= 1, \
            "the retry ran both ranks and resumed from rank 0's checkpoint"
    assert sum(t.state == TS.COMPLETE for t in study.trials) == 2
    assert not [t for t in study.trials if t.state == TS.RUNNING]


def test_a_rank_that_dies_after_rank_0s_result_leaves_it_standing_without_the_grace_wait(tmp_path: Path) -> None:
    """Rank 0's result is the trial's; a rank that dies after it is logged, and the worker goes on as
    soon as every rank has ended instead of waiting out the 60-s grace for its result."""
    s = ranked_search(tmp_path / "s", extra={"local": {"workers": 1, "gpus_per_trial": 2}}, n_trials=1, steps=2,
                      die_after_rank_0=1)
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True, timeout=300)
    assert [t.state for t in study_of(s).trials] == [TS.COMPLETE]
    log = (s.save_path / "logs" / "worker_0.log").read_text()
    assert "rank(s) [1] ended without a result after rank 0's result, which stands" in log, log
    assert "did not end" not in log


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_trial_with_its_traceback_and_stops_the_others(tmp_path: Path) -> None:
    s = ranked_search(tmp_path / "s", extra={"local": {"workers": 1, "gpus_per_trial": 2}}, n_trials=1, steps=400,
                      sleep=0.05, raise_rank=1, raise_step=2, optuna_keys={"max_consecutive_failures": 1})
    s.cli("optimize", "hyper.yml", "model.yml", "--local", timeout=120)
    study = study_of(s)
    assert [t.state for t in study.trials] == [TS.FAIL]
    error = study.trials[0].user_attrs["error"]
    assert "rank 1 of 2 raised ValueError" in error and "rank 1 broke at step 2" in error
    pid = int((s.folder / "out" / "t0_r0.started").read_text())
    with pytest.raises(ProcessLookupError):  # rank 0 was stopped, not left to train on (400 x 50 ms)
        os.kill(pid, 0)
    assert not [t for t in study.trials if t.state == TS.RUNNING]


def test_pbsdsh_places_a_trials_nodes_on_distinct_hosts_of_the_node_file(tmp_path: Path) -> None:
    from hyper_opt.distributed.launch import ONE_NODE_ENV, pbs_node_indices

    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn1\nn1\nn2\nn2\nn2\nn2\n")  # select=2:...:mpiprocs=4: a line per MPI process
    assert pbs_node_indices({"PBS_NODEFILE": str(nodefile)}, 2) == [0, 4]
    with pytest.raises(RuntimeError, match="the job has 2 node.*nodes_per_trial is 3"):
        pbs_node_indices({"PBS_NODEFILE": str(nodefile)}, 3)
    assert pbs_node_indices({"PBS_NODEFILE": str(nodefile), ONE_NODE_ENV: "1"}, 2) == [0, 1]


def test_a_rank_sees_the_workers_gpus_or_an_unset_variable_left_unset() -> None:
    from hyper_opt.distributed.launch import RankSpec, rank_env

    spec = RankSpec(control=("127.0.0.1", 1), token="t", hyper_path="h", model_path=None, overrides=[], conf={},
                    trial={"number": 0}, gpus_per_trial=2, nodes_per_trial=2, master_addr="n1", master_port=29500,
                    visible="2,3", log_dir="/tmp")
    env = rank_env(spec, 1, 1, base={"PATH": "/bin"})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == \
        ("3", "1", "4", "2", "1")
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["MASTER_ADDR"] == "n1" and env["MASTER_PORT"] == "29500"
    spec.visible = None
    assert "CUDA_VISIBLE_DEVICES" not in rank_env(spec, 0, 0, base={"PATH": "/bin"})


SAME_STEP = textwrap.dedent('''
    import time
    import torch.distributed as dist
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            dist.init_process_group("gloo")
            x = float(conf["model"]["x"])
            try:
                for _ in range(3 if x == 0.0 else 600):  # x = 3: long enough to be pruned once x = 0 is done
                    self.report(trial, x * x, 0)  # the same step again and again (an epoch inside a batch loop)
                    dist.barrier()  # the training step's collective: a rank that stopped alone breaks it
                    time.sleep(0.05)
            finally:
                dist.destroy_process_group()
            return {"val_loss": x * x}
''')


@pytest.mark.slow
@pytest.mark.cpu
def test_a_step_reported_again_gets_rank_0s_new_decision_on_every_rank(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", objective=SAME_STEP, extra={"local": {"workers": 2, "gpus_per_trial": 2}},
                     optuna={"n_trials": 2, "enqueue": [{"x": 3.0}, {"x": 0.0}],
                             "pruner": {"type": "MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}})
    s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True, timeout=300)
    states = {t.params["x"]: t for t in study_of(s).trials}
    # x = 0 completes at once; x = 3 is then pruned at one of its repeated step-0 reports, on both
    # ranks at the same call (a decision matched by step alone let rank 1 go on into the barrier).
    assert states[0.0].state == TS.COMPLETE
    assert states[3.0].state == TS.PRUNED, states[3.0].user_attrs.get("error")
