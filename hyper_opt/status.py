"""``hyper-opt status``: what a study looks like now, read from the storage."""

from __future__ import annotations

import datetime as dt
from typing import IO

from hyper_opt.schema import HyperConfig
from hyper_opt.storage import describe
from hyper_opt.study import best_summary, counts, n_finished, read_study


def status_lines(config: HyperConfig) -> list[str]:
    import optuna

    spec = config.optuna
    opened = read_study(config)
    from hyper_opt.launch.cancel import fail_trials_of_ended_jobs

    retried = fail_trials_of_ended_jobs(opened, max_retry=spec.max_retry)  # RUNNING trials of jobs that are gone (no heartbeat needed)
    c = counts(opened)
    lines = [f"study {spec.study_name!r} in {describe(spec.storage)}",
             f"finished {n_finished(c)}/{spec.n_trials}  " + "  ".join(f"{k} {v}" for k, v in c.items()),
             best_summary(opened.study) or "no completed trial yet"]
    trials = opened.storage.get_all_trials(opened.study_id, deepcopy=False)
    if not spec.multi_objective:
        try:
            lines.append(f"best parameters: {opened.study.best_trial.params}")
        except ValueError:
            pass
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    if done and starts:
        hours = (max(t.datetime_complete for t in done) - min(starts)).total_seconds() / 3600  # type: ignore[type-var]
        if hours > 0:
            lines.append(f"{len(done) / hours:.1f} trials/hour over {hours * 60:.1f} min")
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    now = dt.datetime.now()
    for t in running[:20]:
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0
        lines.append(f"  running trial {t.number} for {age:.0f} s on {t.user_attrs.get('hostname', '?')} "
                     f"job {t.user_attrs.get('slurm_job_id') or t.user_attrs.get('pbs_job_id') or '-'} gpu {t.user_attrs.get('cuda_visible_devices') or '-'}")
    if config.slurm is not None:
        from hyper_opt.launch.slurm import job_state_lines

        lines += job_state_lines(config)
    if config.pbs is not None:
        from hyper_opt.launch.pbs import job_state_lines as pbs_job_state_lines

        lines += pbs_job_state_lines(config)
    if retried:
        lines.append(f"trial(s) {retried} were RUNNING in jobs that had ended: marked FAIL and re-queued")
    opened.lock.close()
    return lines


def print_status(config: HyperConfig, stream: IO[str] | None = None) -> None:
    import sys

    print("\n".join(status_lines(config)), file=stream or sys.stdout)
