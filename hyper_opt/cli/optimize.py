"""``hyper-opt optimize``: create or continue the study, then run its workers here or submit jobs."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from hyper_opt import secrets
from hyper_opt.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_common_arguments, load_from_args, setup_logging

logger = logging.getLogger("hyper_opt")

SCHEDULERS = ("slurm", "pbs")
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--local", action="store_true", help="run on this machine even if a slurm or pbs section exists")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="which section submits when the file has both slurm and pbs (default: the one "
                        "whose submit command, sbatch or qsub, is on PATH)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (local:workers)")
    p.add_argument("--reload", action="store_true", help="continue an existing study (optuna:reload: 1)")
    p.add_argument("--replace", action="store_true",
                   help="delete an existing study of the same name first (refused while trials run)")
    p.add_argument("--strict", action="store_true",
                   help="refuse parameters whose key is not a path of the model config")
    p.add_argument("--new-overrides", action="store_true",
                   help="continue a study with other --set options than it was started with (recorded as its own)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, look at the study and print the plan (exit 2 where the real run would refuse); "
                        "create and submit nothing")


def _requeue_dead_trials(opened: Any, spec: Any, *, heartbeat_check: bool) -> None:
    """A resumed study first fails and re-queues the trials of dead workers: stale heartbeats,
    and (also without a heartbeat: the journal storage) RUNNING trials of jobs that ended."""
    from hyper_opt.launch.cancel import fail_trials_of_ended_jobs

    if heartbeat_check:
        from hyper_opt.study import fail_stale_trials

        fail_stale_trials(opened.study)
    retried = fail_trials_of_ended_jobs(opened, max_retry=spec.max_retry)
    if retried:
        logger.warning("trial(s) %s were RUNNING in Slurm/PBS jobs that have ended: marked FAIL and re-queued",
                       retried)


def run(args: argparse.Namespace) -> int:
    from hyper_opt.loader import check_objective_config

    secrets.scrub_command_line(args.overrides)  # a --set password leaves this process's argv (re-exec)
    args.overrides = secrets.take_from_env(args.overrides)
    if args.reload:
        args.overrides.append("optuna:reload=1")
    if args.workers is not None:
        args.overrides.append(f"local:workers={args.workers}")
    config, model = load_from_args(args, strict=args.strict)
    check_objective_config(config, model)
    setup_logging(config.log_level, debug=args.debug, log_file=None if args.dry_run else config.log_file)
    _start_notices(config, model, dry_run=args.dry_run)
    scheduler = choose_scheduler(config, local=args.local, wanted=args.scheduler, dry_run=args.dry_run)
    if args.dry_run:
        return _print_plan(config, scheduler, accept_overrides=args.new_overrides)
    if scheduler == "pbs":
        from hyper_opt.launch.pbs import directives

        directives(config)  # refuse malformed qsub options before the study exists
    elif scheduler == "slurm":
        from hyper_opt.launch.slurm import sbatch_parameters

        sbatch_parameters(config)  # refuse malformed sbatch options before the study exists
    started = None
    if scheduler is None:  # start the workers now; they wait for the checks below (launch.local)
        from hyper_opt.launch.local import abandon, start_workers

        started = start_workers(config, config.local_workers, debug=args.debug, wait_for_go=True)
    try:
        code = _start_search(args, config, scheduler, started)
    finally:
        if started and any(p.stdin is not None and not p.stdin.closed for p, _ in started):
            abandon(started)  # not released: the search did not start here
    return code


def _start_search(args: argparse.Namespace, config: Any, scheduler: str | None, started: Any) -> int:
    """``optimize`` from opening the study: continue or refuse it, then submit or run here."""
    from hyper_opt.study import counts, n_finished, open_study

    spec = config.optuna
    use_scheduler = scheduler is not None
    opened = open_study(config, create=True, check_reload=True, replace=args.replace)
    from hyper_opt.cli.continuation import record_launch
    from hyper_opt.study_attrs import clear_stop

    record_launch(config, opened, accept_overrides=args.new_overrides)  # refuses mixed configurations
    _requeue_dead_trials(opened, spec, heartbeat_check=use_scheduler or bool(spec.heartbeat_interval))
    previous_stop = clear_stop(opened)
    if previous_stop:
        logger.info("the previous run had stopped the search (%s); trying again", previous_stop.split(". ")[0])
    from hyper_opt.stopping import clear_recorded_stop

    ended = clear_recorded_stop(opened.study)  # a raised budget or a changed rule gets its chance
    if ended:
        logger.info("the previous run ended by optuna:%s (%s); the budget and rules are checked again",
                    "budget" if ended["rule"] in ("gpu_hours", "wall_time") else "stop", ended["why"])
    c = counts(opened)
    if n_finished(c) >= spec.n_trials:
        print(f"study {spec.study_name!r} already holds {n_finished(c)} finished trials (n_trials "
              f"{spec.n_trials}); raise optuna:n_trials to run more.")
        return EXIT_OK
    from hyper_opt.connections import report as connections_report

    connections_report(config, scheduler, remaining=spec.n_trials - n_finished(c) - c["RUNNING"])
    if use_scheduler:
        if scheduler == "pbs":
            from hyper_opt.launch.pbs import submit
        else:
            from hyper_opt.launch.slurm import submit

        submit(config, opened, remaining=spec.n_trials - n_finished(c) - c["RUNNING"])
        opened.lock.close()
        return EXIT_OK
    return _run_here(config, opened, c, debug=args.debug, prestarted=started)


def _start_notices(config, model, *, dry_run: bool) -> None:  # type: ignore[no-untyped-def]
    """What optimize says once the files are read: predecessor names used, parameters that patch
    nothing, and where relative paths went."""
    from hyper_opt import compat
    from hyper_opt.config import missing_model_paths
    from hyper_opt.loader import warn_broken_paths

    if compat.used():  # the objective was imported (and checked) before logging was set up
        logger.info("%s: %s", config.optuna.objective.describe(), compat.migration_hint(compat.used()))
    broken = warn_broken_paths(config, model)
    missing = [key for key in missing_model_paths(config, model or {}) if key not in broken]
    if missing:
        logger.info("parameters that are not key paths of %s (suggested for custom_updates only): %s",
                    config.model_path.name if config.model_path else "the model config", ", ".join(missing))
    if not dry_run:
        rule, *where = path_lines(config)
        moved = config.format != "hyper_opt" and config.base_dir != config.hyper_path.parent
        logger.log(logging.WARNING if moved else logging.INFO, "%s", rule)
        for line in where:
            logger.info("%s", line)


def _run_here(config, opened, c, *, debug: bool, prestarted: Any = None) -> int:  # type: ignore[no-untyped-def]
    """Run the workers on this machine, then write trials.csv and say how it went."""
    from hyper_opt.launch.local import run_local
    from hyper_opt.results import write_trials_csv
    from hyper_opt.storage import describe, with_db_retry
    from hyper_opt.study import best_summary, counts, n_finished
    from hyper_opt.stopping import recorded_stop
    from hyper_opt.study_attrs import stop_reason

    spec = config.optuna

    print(f"study {spec.study_name!r} in {describe(spec.storage)}: {n_finished(c)}/{spec.n_trials} "
          f"finished; starting {config.local_workers} worker(s)", file=sys.stderr)
    started = time.monotonic()
    run_local(config, opened, workers=config.local_workers, debug=debug, started=prestarted)
    trials = with_db_retry(lambda: opened.storage.get_all_trials(opened.study_id),
                           seconds=spec.db_retry_seconds, what="reading the trials")
    merged = write_trials_csv(config.save_path / "trials.csv", trials,
                              param_names=[p.name for p in spec.parameters],
                              metric_names=list(spec.metrics), n_values=len(spec.directions))
    c = counts(opened)
    summary = ", ".join(f"{k} {v}" for k, v in c.items() if v)
    print(f"{n_finished(c)}/{spec.n_trials} finished in {time.monotonic() - started:.0f} s ({summary}); "
          f"{best_summary(opened.study)}", file=sys.stderr)
    if not spec.multi_objective:
        try:
            print(f"best parameters: {opened.study.best_trial.params}", file=sys.stderr)
        except ValueError:
            pass
    print(f"results: {merged} and {config.trials_dir}/", file=sys.stderr)
    stopped = stop_reason(opened)
    ended = recorded_stop(opened.study.user_attrs)
    if stopped:
        print(f"search stopped: {stopped}", file=sys.stderr)
    elif ended:
        print(f"search ended by its {'budget' if ended['rule'] in ('gpu_hours', 'wall_time') else 'stop rule'} "
              f"({ended['rule']}): {ended['why']}", file=sys.stderr)
        return EXIT_OK
    elif n_finished(c) < spec.n_trials:
        print(f"{spec.n_trials - n_finished(c)} trial(s) to go: continue with 'hyper-opt optimize "
              f"{config.hyper_path} {config.model_path or ''} --reload'".replace("  --", " --"), file=sys.stderr)
    return EXIT_OK if n_finished(c) >= spec.n_trials else EXIT_FAILED


def path_lines(config) -> list[str]:  # type: ignore[no-untyped-def]
    """Which rule resolves the file's relative paths, why, and where each path resolved: said at
    start and by ``--dry-run``, so that a format change never moves a path unseen."""
    from hyper_opt.config import format_reason

    folder = config.hyper_path.parent
    reason = format_reason(config.raw)
    if config.format == "hyper_opt":
        rule = f"relative paths are read from the YAML's folder {folder} (hyper_opt format: {reason})"
    else:
        rule = (f"relative paths are read from the working directory {config.base_dir} ({config.format} "
                f"format: {reason}; write 'format: hyper_opt' to read them from the YAML's folder {folder})")
    lines = [rule, f"save_path -> {config.save_path}"]
    if config.optuna.objective.file is not None:
        lines.append(f"objective -> {config.optuna.objective.file}")
    if config.optuna.storage.path is not None:
        lines.append(f"storage -> {config.optuna.storage.path}")
    if config.log_file is not None:
        lines.append(f"log -> {config.log_file}")
    return lines


def _print_plan(config, scheduler: str | None, *, accept_overrides: bool) -> int:  # type: ignore[no-untyped-def]
    """``--dry-run``: what would run, and the job scripts that would be submitted; exit status 2
    where the real run would refuse the study."""
    from hyper_opt.storage import describe

    spec = config.optuna
    print(f"study      {spec.study_name} in {describe(spec.storage)}")
    print(f"objective  {spec.objective.describe()}  metric {list(spec.metrics)} {list(spec.directions)}")
    print(f"budget     {spec.n_trials} finished trials; {len(spec.parameters)} parameters")
    for line in path_lines(config):
        print(f"paths      {line}")
    if scheduler == "pbs":
        from hyper_opt.launch.pbs import dry_run as pbs_dry_run

        pbs_dry_run(config)
    elif scheduler == "slurm":
        from hyper_opt.launch.slurm import dry_run

        dry_run(config)
    else:
        print(f"launch     {config.local_workers} local worker process(es)")
        g = config.local_gpus_per_trial
        if g > 1:
            print(f"trials     {config.local_workers} at a time, {g} ranks each (RANK, LOCAL_RANK, WORLD_SIZE, "
                  f"MASTER_ADDR/MASTER_PORT set as torchrun does), 1 GPU per rank; each worker takes {g} of the "
                  "visible GPUs")
    from hyper_opt.connections import check, planned_workers

    workers, how = planned_workers(config, scheduler, remaining=spec.n_trials)
    verdict = check(config, workers, how)
    if verdict is not None:
        print(f"database   {'WARNING: ' if verdict.level == 'warn' else ''}{verdict.text}")
    from hyper_opt.cli.continuation import dry_run_study

    lines, refusal = dry_run_study(config, accept_overrides=accept_overrides)
    for line in lines:
        print(line)
    if refusal:
        print(f"hyper-opt optimize --dry-run: the real run would refuse: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def submit_command(scheduler: str) -> str | None:
    """The path of the scheduler's submit command: sbatch on PATH; qsub in ``$HYPER_OPT_PBS_BIN``
    when set, else on PATH (:func:`hyper_opt.launch.pbs_env.command`)."""
    import shutil

    from hyper_opt.launch.pbs_env import command

    return command("qsub") if scheduler == "pbs" else shutil.which(SUBMIT_COMMANDS[scheduler])


def choose_scheduler(config, *, local: bool, wanted: str | None, dry_run: bool) -> str | None:  # type: ignore[no-untyped-def]
    """Which scheduler submits the jobs: None to run here (``--local``, or no slurm/pbs section).

    Never the login node by accident: a file with a slurm (pbs) section is refused when sbatch
    (qsub) is not on PATH, unless ``--local`` asks for this machine. A file with both sections
    takes ``--scheduler``; without it, the one whose submit command is on PATH (Slurm when
    ``qsub`` is Slurm's own torque wrapper), and when both or neither are, it asks. ``--dry-run``
    needs no submit command.
    """

    from hyper_opt.exceptions import SubmissionError

    present = [name for name in SCHEDULERS if getattr(config, name) is not None]
    if local or not present:
        if wanted:
            raise SubmissionError(f"--scheduler {wanted} and --local contradict each other" if local else
                                  f"--scheduler {wanted}: the file has no {wanted} section")
        return None
    if wanted:
        if wanted not in present:
            raise SubmissionError(f"--scheduler {wanted}: {config.hyper_path} has no {wanted} section "
                                  f"(it has: {', '.join(present)})")
        chosen = wanted
    elif len(present) == 1:
        chosen = present[0]
    else:
        on_path = [name for name in present if submit_command(name)]
        if len(on_path) == 2:
            from hyper_opt.launch.pbs import _is_slurm_wrapper

            if _is_slurm_wrapper(submit_command("pbs") or ""):  # Slurm's own qsub: the cluster is Slurm
                on_path = ["slurm"]
        if len(on_path) != 1:
            found = "both sbatch and qsub are" if on_path else "neither sbatch nor qsub is"
            raise SubmissionError(f"{config.hyper_path} has both a slurm and a pbs section and {found} on "
                                  "PATH: pass --scheduler slurm or --scheduler pbs (or --local to run here)")
        chosen = on_path[0]
        logger.info("both slurm and pbs sections: using %s (%s is on PATH)", chosen, SUBMIT_COMMANDS[chosen])
    command = SUBMIT_COMMANDS[chosen]
    if not dry_run and submit_command(chosen) is None:
        raise SubmissionError(f"the {chosen} section asks for {chosen} jobs, but {command} is not on PATH: "
                              f"run this on a {chosen.upper() if chosen == 'pbs' else 'Slurm'} login node, "
                              "or pass --local to run the search on this machine")
    return chosen
