"""``hyper-opt status`` reads only what it shows, and shows what optuna's own reading gives."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import optuna
import pytest

from hyper_opt.config import load_config
from hyper_opt.status import status_lines
from hyper_opt.study import open_study

from .conftest import write_search
from .test_report import MODEL, PARAMETERS, _multi_study


def _expected_span(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete]
    hours = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in trials)).total_seconds() / 3600
    return f"{len(done) / hours:.1f} trials/hour over {hours * 60:.1f} min"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_status_of_a_single_objective_study(tmp_path: Path) -> None:
    s = write_search(tmp_path, model=MODEL, optuna={"parameters": PARAMETERS})
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=True)
    opened.lock.close()
    study = opened.study
    dist = optuna.distributions.FloatDistribution(-5, 5)
    for i, value in enumerate([3.0, 1.5, 2.0]):
        trial = optuna.trial.create_trial(params={"x": float(i)}, distributions={"x": dist}, value=value)
        trial.datetime_start = dt.datetime(2025, 1, 1, 8) + dt.timedelta(minutes=10 * i)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(minutes=5)
        study.add_trial(trial)
    asked = time.monotonic()
    running = study.ask({"x": dist})
    running.set_user_attr("hostname", "node7")
    running.set_user_attr("slurm_job_id", "")  # no job: nothing to ask the scheduler
    running.set_user_attr("cuda_visible_devices", "3")
    lines = status_lines(config)
    read = time.monotonic()
    assert lines[1].startswith(f"finished 3/{config.optuna.n_trials}  ") and "RUNNING 1" in lines[1]
    assert lines[2] == "best 1.5 (trial 1)"
    assert lines[3] == "best parameters: {'x': 1.0}"
    assert lines[4] == _expected_span(study) == "7.2 trials/hour over 25.0 min"
    # 3 trials of 5 min on one device, plus the running trial's time so far (under a load it may
    # round to more than 0.000 GPU-h): at most the time between the ask and the status read
    gpu = re.fullmatch(r"GPU-hours (\d\.\d{3}) GPU-h \(complete 0\.250, running (\d\.\d{3})\)", lines[5])
    assert gpu, lines[5]
    total, so_far = float(gpu[1]), float(gpu[2])
    assert 0 <= so_far <= (read - asked) / 3600 + 0.0005 and abs(total - 0.250 - so_far) <= 0.0011, lines[5]
    assert lines[6].startswith(f"  running trial {running.number} for ") and lines[6].endswith(
        "s on node7 job - gpu 3")


@pytest.mark.parametrize("on", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_status_of_a_multi_objective_study(tmp_path: Path, on: str, request: pytest.FixtureRequest) -> None:
    storage = request.getfixturevalue("pg_url") if on == "postgres" else None
    s, study = _multi_study(tmp_path / "multi", storage=storage)
    try:
        config, _ = load_config(s.hyper)
        lines = status_lines(config)
        assert lines[2] == f"{len(study.best_trials)} Pareto-optimal trial(s)"
        assert lines[3] == _expected_span(study)
        assert not any("running trial" in line for line in lines)
    finally:
        if storage:
            optuna.delete_study(study_name=study.study_name, storage=storage)
