"""``hyper-opt status``: what a study looks like now, read from the storage."""

from __future__ import annotations

import datetime as dt
from typing import IO, Any

from hyper_opt.schema import HyperConfig
from hyper_opt.storage import describe
from hyper_opt.study import Opened, counts, n_finished, read_study


MIN_RATE_SPAN_S = 60.0


def running_budget(opened: Opened, n_trials: int) -> int:
    """The n_trials the study was last launched with (``--set optuna:n_trials`` included), which
    its workers run to; the file's when the study predates that record."""
    from hyper_opt.study_attrs import BUDGET_ATTR, launch_attrs

    recorded = launch_attrs(opened).get(BUDGET_ATTR)
    return recorded if isinstance(recorded, int) and recorded > 0 else n_trials


def status_lines(config: HyperConfig) -> list[str]:
    """What ``hyper-opt status`` prints. It reads only what it shows: the counts (one GROUP BY),
    the best trial (optuna's best-trial query; the objective values of the COMPLETE trials for a
    Pareto front), the time span (one aggregate) and the RUNNING trials with their attributes,
    so that it stays quick on a study of 10,000 trials."""
    import optuna

    from hyper_opt.report.reading import read_trials, time_span
    from hyper_opt.trials import best_trials

    spec = config.optuna
    opened = read_study(config)
    from hyper_opt.launch.cancel import fail_trials_of_ended_jobs

    retried = fail_trials_of_ended_jobs(opened, max_retry=spec.max_retry)  # RUNNING trials of jobs that are gone (no heartbeat needed)
    c = counts(opened)
    budget = running_budget(opened, spec.n_trials)
    lines = [f"study {spec.study_name!r} in {describe(spec.storage)}",
             f"finished {n_finished(c)}/{budget}  " + "  ".join(f"{k} {v}" for k, v in c.items())]
    if budget != spec.n_trials:
        lines.append(f"n_trials {budget} as last launched (the file says {spec.n_trials}; --set changed it)")
    if spec.multi_objective:
        directions = [d.name.lower() for d in opened.study.directions]
        complete = read_trials(opened.storage, opened.study_id, states=[optuna.trial.TrialState.COMPLETE],
                               parts=("values",))
        front = best_trials(complete, directions)
        lines.append(f"{len(front)} Pareto-optimal trial(s)" if front else "no completed trial yet")
    else:
        try:
            best = opened.study.best_trial
        except ValueError:
            lines.append("no completed trial yet")
        else:
            lines.append(f"best {best.value:.6g} (trial {best.number})")
            lines.append(f"best parameters: {best.params}")
    n_done, first_start, last_complete = time_span(opened.storage, opened.study_id)
    if n_done and n_finished(c) and first_start and last_complete:
        seconds = (last_complete - first_start).total_seconds()
        if seconds >= MIN_RATE_SPAN_S:  # a rate over a few seconds says nothing about the search
            lines.append(f"{n_done / seconds * 3600:.1f} trials/hour over {seconds / 60:.1f} min")
    lines += usage_lines(opened, spec)
    running = read_trials(opened.storage, opened.study_id, states=[optuna.trial.TrialState.RUNNING],
                          parts=("user_attrs",))
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


def usage_lines(opened: Opened, spec: Any) -> list[str]:
    """GPU-hours by state (and against the budget), requeued trials by why they stopped, and the
    budget or stop rule that ended the search: all read from the study (hyper_opt.accounting)."""
    from hyper_opt.accounting import usage
    from hyper_opt.report.reading import read_trials
    from hyper_opt.stopping import recorded_stop

    trials = read_trials(opened.storage, opened.study_id, parts=("user_attrs", "system_attrs"))
    if not trials:
        return []
    used = usage(trials)
    line = f"GPU-hours {used.line()}"
    if spec.budget is not None and spec.budget.gpu_hours:
        line += f"; budget {spec.budget.gpu_hours:g} GPU-h, {used.total / spec.budget.gpu_hours:.0%} used"
    lines = [line]
    if used.stopped:
        lines.append(f"requeued {used.trials['requeued']} trial(s): "
                     + ", ".join(f"{why} {n}" for why, n in sorted(used.stopped.items())))
    stopped = recorded_stop(opened.study.user_attrs)
    if stopped is not None:
        lines.append(f"search ended by optuna:{'budget' if stopped['rule'] in ('gpu_hours', 'wall_time') else 'stop'}"
                     f" ({stopped['rule']}): {stopped['why']}")
    return lines


def print_status(config: HyperConfig, stream: IO[str] | None = None) -> None:
    import sys

    print("\n".join(status_lines(config)), file=stream or sys.stdout)
