"""Budgets in GPU-hours and wall time, stop rules, the GPU-hour accounting, and requeued trials
keeping their curves (issue 23), on this machine. The Slurm search with fake GPUs is in
tests/test_budgets_cluster.py."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from hyper_opt.accounting import best_against_hours, redone_hours, trial_hours, usage
from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError
from hyper_opt.results import read_csv
from hyper_opt.stopping import BudgetSpec, StopSpec, budget_verdict, stop_rule

from .conftest import write_search
from .test_distributed import study_of

TS = optuna.trial.TrialState
T0 = dt.datetime(2026, 1, 1, 8)


def _trial(number: int, state: TS, minutes: float, *, start_min: float = 0.0, gpus: int = 0, value: float | None = None,
           **attrs: object) -> optuna.trial.FrozenTrial:
    start = T0 + dt.timedelta(minutes=start_min)
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=value, datetime_start=start,
        datetime_complete=None if state == TS.RUNNING else start + dt.timedelta(minutes=minutes),
        params={}, distributions={}, user_attrs={"gpus": gpus, **attrs}, system_attrs={}, intermediate_values={},
        trial_id=number, values=None)


# ------------------------------------------------------------------------------------------ config


def _problems(tmp_path: Path, optuna_keys: dict) -> str:
    s = write_search(tmp_path / "s", optuna=optuna_keys)
    with pytest.raises(ConfigError) as err:
        load_config(s.hyper, s.model)
    return str(err.value)


def test_bad_budgets_and_rules_are_refused_with_their_key_paths(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"budget": {"gpu_hours": -2, "wall_time": "two days", "cpu_hours": 1},
                                "stop": {"patience": 0, "min_delta": "x", "improvement": {"bar": 3}}})
    for expected in ("optuna:budget:gpu_hours", "GPU-hours above 0, got -2", "optuna:budget:wall_time",
                     "got 'two days'", "optuna:budget:cpu_hours: unknown key", "optuna:stop:patience",
                     "optuna:stop:min_delta", "optuna:stop:improvement:bar"):
        assert expected in text, (expected, text)
    assert "optuna:stop" in _problems(tmp_path, {"stop": {"min_delta": 0.1}})  # no rule named
    text = _problems(tmp_path, {"stop": {"patience": 3}, "metric": ["a", "b"], "direction": ["minimize", "maximize"]})
    assert "optuna:stop" in text and "several objectives" in text


def test_a_valid_budget_and_rule_reach_the_config(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"budget": {"gpu_hours": 12, "wall_time": "1-12:00:00"},
                                             "stop": {"patience": 10, "min_delta": 0.01, "improvement": {"window": 4}}})
    config, _ = load_config(s.hyper, s.model)
    assert config.optuna.budget == BudgetSpec(gpu_hours=12.0, wall_time_s=36 * 3600)
    assert config.optuna.stop == StopSpec(patience=10, min_delta=0.01, window=4, bar=0.1, min_trials=5)


# ------------------------------------------------------------------------------------------ rules


def test_gpu_hours_count_wall_time_times_gpus_and_the_running_trials_expected_cost() -> None:
    trials = [_trial(0, TS.COMPLETE, 60, gpus=2, value=1.0), _trial(1, TS.PRUNED, 30, gpus=2),
              _trial(2, TS.COMPLETE, 60, gpus=0, value=2.0)]  # a CPU trial counts one device
    assert [trial_hours(t) for t in trials] == [2.0, 1.0, 1.0]
    now = T0 + dt.timedelta(minutes=10)
    running = _trial(3, TS.RUNNING, 0, gpus=2)
    assert budget_verdict(BudgetSpec(gpu_hours=5.1), trials, now=now) is None
    # The running trial will cost about the median length (60 min) x 2 GPUs: 4 + 2 > 5.1.
    verdict = budget_verdict(BudgetSpec(gpu_hours=5.1), [*trials, running], now=now)
    assert verdict is not None and verdict[0] == "gpu_hours" and "4.000 GPU-hours used" in verdict[1]
    # The wall time counts from the first trial's start, plus one more trial's expected length.
    late = T0 + dt.timedelta(minutes=100)
    assert budget_verdict(BudgetSpec(wall_time_s=3 * 3600), trials, now=late) is None
    verdict = budget_verdict(BudgetSpec(wall_time_s=2 * 3600), trials, now=late)
    assert verdict is not None and verdict[0] == "wall_time" and "01:40:00 of its wall_time 02:00:00" in verdict[1]


def test_accounting_by_state_with_requeued_work_redone_after_the_last_checkpoint() -> None:
    checkpoint = (T0 + dt.timedelta(minutes=40)).timestamp()
    trials = [_trial(0, TS.COMPLETE, 60, gpus=1, value=3.0),
              _trial(1, TS.FAIL, 60, gpus=1, stopped="preempted", checkpoint_at=checkpoint),
              _trial(2, TS.FAIL, 30, gpus=1),  # failed, never retried
              _trial(3, TS.COMPLETE, 20, start_min=60, gpus=1, value=1.0, retry_of=1)]
    assert redone_hours(trials[1]) == pytest.approx(20 / 60), "the 20 minutes after its checkpoint"
    used = usage(trials)
    assert used.trials == {"complete": 2, "pruned": 0, "failed": 1, "requeued": 1, "running": 0}
    assert used.hours["requeued"] == 1.0 and used.hours["failed"] == 0.5
    assert used.total == pytest.approx(1 + 1 + 0.5 + 20 / 60)
    assert used.stopped == {"preempted": 1}
    curve = best_against_hours(trials, "minimize")
    assert [round(h, 3) for h, _, _ in curve] == [0.5, 1.5, 2.5, 2.833] and curve[-1][1] == 1.0


def test_patience_fires_on_a_plateau_not_while_the_best_improves() -> None:
    def run(values: list[float], spec: StopSpec, direction: str = "minimize") -> tuple[str, str] | None:
        return stop_rule(spec, [_trial(i, TS.COMPLETE, 1, start_min=i, value=v) for i, v in enumerate(values)],
                         direction)

    spec = StopSpec(patience=3, min_delta=0.05)
    assert run([5, 4, 3, 2, 1], spec) is None
    assert run([5, 1, 0.99, 0.98, 0.97], spec)[0] == "patience"  # improved by 0.03 <= 0.05 in 3 trials
    assert run([5, 1, 0.99, 0.98], spec) is None  # not 3 trials since the last real gain yet
    assert run([1, 2, 3, 4, 5], StopSpec(patience=2), "maximize") is None
    assert run([5, 5, 5, 5], StopSpec(patience=2), "maximize")[0] == "patience"
    pruned = [_trial(0, TS.COMPLETE, 1, value=1.0), *(_trial(i, TS.PRUNED, 1, start_min=i) for i in range(1, 5))]
    assert stop_rule(StopSpec(patience=4), pruned, "minimize")[0] == "patience", "pruned trials count, not improving"
    assert stop_rule(StopSpec(patience=5), pruned, "minimize") is None
    imp = StopSpec(window=3, bar=0.1, min_trials=4)
    assert run([10, 0, 5, 8, 9, 7], imp)[0] == "improvement"  # no gain over the last 3, IQR > 0
    assert run([10, 9, 8, 7, 6, 5], imp) is None


# ------------------------------------------------------------------------------------------ searches


SLEEPY = textwrap.dedent('''
    import time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            for step in range(3):
                time.sleep(float(conf["sleep"]))
                self.report(trial, conf["model"]["x"] ** 2 + step, step)
            return {"val_loss": conf["model"].get("flat", conf["model"]["x"] ** 2)}
''')


@pytest.mark.slow
def test_a_gpu_hour_budget_ends_the_search_within_a_trial_and_status_accounts_for_it(tmp_path: Path) -> None:
    budget_h = 12.0 / 3600  # 12 device-seconds: about 10 trials of 1.2 s
    s = write_search(tmp_path / "s", objective=SLEEPY, model={"model": {"x": 0.0}, "sleep": 0.4},
                     extra={"local": {"workers": 2}}, optuna={"n_trials": 100, "budget": {"gpu_hours": budget_h}})
    out = s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True, env={"CUDA_VISIBLE_DEVICES": ""})
    assert "search ended by its budget (gpu_hours)" in out.stderr
    study = study_of(s)
    done = [t for t in study.trials if t.state.is_finished()]
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    spent = sum(trial_hours(t) for t in done)
    longest = max(trial_hours(t) for t in done)
    assert budget_h - longest <= spent <= budget_h + 2 * longest, (spent, budget_h, longest)  # 2 workers
    assert len(done) < 100
    rows = read_csv(s.save_path / "trials.csv")
    assert sum(float(r["gpu_hours"]) for r in rows) == pytest.approx(spent, rel=1e-3)
    assert {r["gpus"] for r in rows} == {"1"}
    status = s.cli("status", "hyper.yml", check=True).stdout
    assert f"GPU-hours {spent:.3f} GPU-h (complete {spent:.3f})" in status
    assert "search ended by optuna:budget (gpu_hours)" in status
    # A larger budget and --reload: the recorded end is cleared and the search goes on.
    again = s.cli("optimize", "hyper.yml", "model.yml", "--local", "--reload", "--set",
                  f"optuna:budget:gpu_hours={2 * budget_h}", check=True)
    assert len([t for t in study_of(s).trials if t.state.is_finished()]) > len(done), again.stderr


@pytest.mark.slow
def test_a_stop_rule_ends_a_search_whose_best_has_plateaued(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", objective=SLEEPY, model={"model": {"x": 0.0, "flat": 1.0}, "sleep": 0.0},
                     optuna={"n_trials": 40, "stop": {"patience": 4}})
    out = s.cli("optimize", "hyper.yml", "model.yml", "--local", check=True)
    study = study_of(s)
    assert len(study.trials) == 5, "the first trial, then 4 without improvement"
    assert "search ended by its stop rule (patience)" in out.stderr
    status = s.cli("status", "hyper.yml", check=True).stdout
    assert "search ended by optuna:stop (patience): the best value improved by +0 " in status


CURVE = textwrap.dedent('''
    import os, time
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            state = self.load_checkpoint(trial) or {"step": 0}
            for step in range(state["step"], 12):
                while step == 3 and "retry_of" not in trial.user_attrs and not os.path.exists(conf["go"]):
                    time.sleep(0.05)  # the first run waits here for the test's signal (before step 4 prunes it)
                time.sleep(float(conf["sleep"]))
                self.save_checkpoint(trial, {"step": step + 1})
                self.report(trial, 1.0 if step == 0 else 0.5 if step == 1 else 0.6, step)  # no gain after step 1
            return {"val_loss": 0.5}
''')


@pytest.mark.slow
def test_a_preempted_and_requeued_trial_keeps_its_curve_and_the_pruner_sees_all_of_it(tmp_path: Path) -> None:
    go = tmp_path / "go"
    s = write_search(tmp_path / "s", objective=CURVE, model={"model": {"x": 0.0}, "sleep": 0.2, "go": str(go)},
                     optuna={"n_trials": 1, "max_retry": 1,
                             "pruner": {"type": "PatientPruner", "wrapped_pruner": None, "patience": 2}})
    cmd = [sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml"]
    first = subprocess.Popen(cmd, cwd=s.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    warned = threading.Event()

    def read_log() -> None:
        for line in first.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "SIGUSR1 (job ending)" in line:
                warned.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            trials = study_of(s).trials
        except Exception:  # noqa: BLE001 - no database or no study yet
            trials = []
        if trials and 2 in trials[0].intermediate_values:
            break
        time.sleep(0.1)
    first.send_signal(signal.SIGUSR1)  # what the job gets before a time limit or preemption
    # The worker has taken the signal (it says so) before the trial may go on: a fixed sleep here
    # let a worker that a loaded machine had not yet scheduled reach step 4, where it is pruned.
    assert warned.wait(60), "".join(lines)
    go.write_text("")  # the trial goes on to its next report, where it stops: step 3
    first.wait(timeout=60)
    reader.join(timeout=60)
    log = "".join(lines)
    original = study_of(s).trials[0]
    assert original.state == TS.FAIL and original.user_attrs["stopped"] == "preempted", log
    k = max(original.intermediate_values)  # the step it stopped at (it saved its checkpoint first)
    assert k == 3, original.intermediate_values
    subprocess.run(cmd, cwd=s.folder, check=True, capture_output=True, timeout=120, env=os.environ)
    study = study_of(s)
    copy = study.trials[-1]
    assert copy.user_attrs["retry_of"] == 0 and copy.state == TS.PRUNED
    # It resumed at k + 1 and kept steps 0..k: PatientPruner(patience=2) sees the last 3 steps no better
    # than step 1's 0.5 and prunes at step 4 (or at once, k + 1, when that is later). Judged on its
    # own steps alone (0.6 each) it would never have been pruned.
    assert max(copy.intermediate_values) == max(k + 1, 4), (k, copy.intermediate_values)
    assert sorted(copy.intermediate_values) == list(range(max(k + 1, 4) + 1)), "the whole curve, each step once"
    assert copy.intermediate_values[0] == 1.0
    status = s.cli("status", "hyper.yml", check=True).stdout
    assert "requeued 1 trial(s): preempted 1" in status
