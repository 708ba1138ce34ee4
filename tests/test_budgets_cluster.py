"""A GPU-hour budget on the real local Slurm cluster (fake GPUs, real jobs) with PostgreSQL (issue 23)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest

from hyper_opt.accounting import trial_hours

from .conftest import write_search
from .test_budgets import SLEEPY
from .test_distributed import study_of
from .test_slurm import _job_ids, _wait_jobs_done

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

TS = optuna.trial.TrialState


def test_a_slurm_search_stops_at_its_gpu_hour_budget_and_the_hours_add_up(tmp_path: Path, pg_url: str,
                                                                            slurm_cluster: str) -> None:
    budget_h = 24.0 / 3600  # 24 GPU-seconds: about 20 trials of 1.2 s on 2 GPUs
    s = write_search(tmp_path / "s", objective=SLEEPY, model={"model": {"x": 0.0}, "sleep": 0.4},
                     extra={"slurm": {"jobs": 1, "gpus_per_node": 2,
                                      "batch": {"gres": "gpu:2", "t": "00:10:00", "J": "hoptest-budget", "mem": "1G"}}},
                     optuna={"storage": pg_url, "n_trials": 500, "budget": {"gpu_hours": budget_h}})
    ids = _job_ids(s.cli("optimize", "hyper.yml", "model.yml", check=True).stdout)
    states = _wait_jobs_done(ids, timeout=300)
    assert set(states.values()) == {"COMPLETED"}, states
    study = study_of(s, pg_url)
    done = [t for t in study.trials if t.state.is_finished()]
    assert not [t for t in study.trials if t.state == TS.RUNNING] and len(done) < 500
    assert {t.user_attrs["gpus"] for t in done} == {1}, "one fake GPU per worker, recorded with each trial"
    spent = sum(trial_hours(t) for t in done)
    longest = max(trial_hours(t) for t in done)
    assert budget_h - longest <= spent <= budget_h + 2 * longest, (spent, budget_h)  # 2 workers, a trial each
    # What the job held: its elapsed time x its 2 GPUs (sacct); the trials used most of it, and never more.
    elapsed = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ids[0], "-o", "ElapsedRaw"], capture_output=True,
                             text=True, check=True).stdout.split()[0]
    held = int(elapsed) * 2 / 3600
    assert spent <= held and (held - spent) * 3600 / 2 < 40, (spent, held)  # start-up and stop: under 40 s per GPU
    status = s.cli("status", "hyper.yml", check=True).stdout
    assert f"GPU-hours {spent:.3f} GPU-h (complete {spent:.3f})" in status
    assert "search ended by optuna:budget (gpu_hours)" in status and "COMPLETED" in status
    summary_text = s.cli("report", "hyper.yml", check=True)
    summary = (s.save_path / "report" / "summary.md").read_text()
    assert "## GPU-hours" in summary and f"| complete | {len(done)} | {spent:.4f} | 100% |" in summary, summary_text
