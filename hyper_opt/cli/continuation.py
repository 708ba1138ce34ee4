"""``optimize`` and an existing study: the overrides it was started with, the budget it runs
with, and what ``--dry-run`` says the real run would do with it.

A study records (:mod:`hyper_opt.study_attrs`) the ``--set`` overrides that change what trials
train, when it is created, and the ``n_trials`` of every launch. A continuation with different
overrides would mix two configurations in one study (400-epoch trials beside 15-epoch ones), so
it is refused unless ``--new-overrides`` accepts them (then they are recorded as the study's).
"""

from __future__ import annotations

import logging
from typing import Any

from hyper_opt.exceptions import HyperOptError, StudyExistsError
from hyper_opt.schema import HyperConfig
from hyper_opt.study_attrs import BUDGET_ATTR, OVERRIDES_ATTR, launch_attrs, search_overrides

logger = logging.getLogger("hyper_opt")


def overrides_problem(config: HyperConfig, attrs: dict[str, Any], n_trials_held: int) -> str | None:
    """Why continuing this study with these overrides mixes configurations, or None."""
    recorded = attrs.get(OVERRIDES_ATTR)
    now = search_overrides(config.overrides)
    if recorded is None or not n_trials_held or sorted(recorded) == now:
        return None
    dropped = [o for o in recorded if o not in now]
    added = [o for o in now if o not in recorded]
    said = "; ".join(part for part in (
        f"it was started with {' '.join('--set ' + o for o in dropped)}" if dropped else "",
        f"this run adds {' '.join('--set ' + o for o in added)}" if added else "") if part)
    return (f"study {config.optuna.study_name!r} holds {n_trials_held} trials run with other overrides ({said}); "
            "continuing would mix two configurations in one study. Repeat the original --set options, or "
            "pass --new-overrides to continue with these (they are then recorded as the study's)")


def record_launch(config: HyperConfig, opened: Any, *, accept_overrides: bool) -> None:
    """Refuse (or, with ``accept_overrides``, warn about) a continuation whose overrides differ;
    record the overrides (on a new study, or accepted) and this launch's budget."""
    storage, study_id = opened.storage, opened.study_id
    attrs = launch_attrs(opened)
    import optuna

    waiting = (optuna.trial.TrialState.WAITING,)
    held = sum(t.state not in waiting for t in storage.get_all_trials(study_id, deepcopy=False))
    problem = overrides_problem(config, attrs, held)
    if problem and not accept_overrides:
        raise StudyExistsError(problem + ". Nothing was changed.")
    if problem:
        logger.warning("--new-overrides: %s", problem.split(";")[0])
    if problem or OVERRIDES_ATTR not in attrs and not held:
        storage.set_study_user_attr(study_id, OVERRIDES_ATTR, search_overrides(config.overrides))
    storage.set_study_user_attr(study_id, BUDGET_ATTR, config.optuna.n_trials)


def dry_run_study(config: HyperConfig, *, accept_overrides: bool) -> tuple[list[str], str | None]:
    """What the real run would do with the study: (lines to print, the refusal or None). Reads
    only; creates nothing."""
    from hyper_opt.study import claim_save_path, counts, n_finished, read_study

    spec = config.optuna
    if spec.storage.kind == "url":  # one try: a dry run on a machine without the database still plans
        from hyper_opt.storage import make_storage

        probe = None
        try:
            probe = make_storage(spec)
            probe.get_all_studies()
        except Exception as err:  # noqa: BLE001 - only said
            return [f"study      not checked: the database does not answer from here ({str(err).splitlines()[0]})"], None
        finally:  # its pooled connection would count against a database's CONNECTION LIMIT meanwhile
            engine = getattr(probe, "engine", None)
            if engine is not None:
                engine.dispose()
    try:
        claim_save_path(config, write=False)
        opened = read_study(config)
    except StudyExistsError as err:
        if "does not exist" not in str(err):
            return [], str(err)
        if spec.reload_explicit:
            return [], (f"optuna:reload is 1 but study {spec.study_name!r} does not exist yet; the real run "
                        "would refuse (set 'reload: 0' to start a new study)")
        return ["study      new: the real run creates it"], None
    except HyperOptError as err:
        return [], f"the study cannot be read: {err}"
    try:
        c = counts(opened)
        held, done = sum(c.values()), n_finished(c)
        line = f"study      exists: {held} trials ({done} finished of n_trials {spec.n_trials})"
        if held and not spec.reload:
            return [line], (f"study {spec.study_name!r} already holds {held} trials and optuna:reload is 0: the "
                            "real run would refuse it (pass --reload to continue, --replace to start over)")
        problem = overrides_problem(config, launch_attrs(opened), held - c["WAITING"])
        if problem and not accept_overrides:
            return [line], problem
        if done >= spec.n_trials:
            return [line, "would run  nothing: the study already holds n_trials finished trials"], None
        return [line, f"would run  {spec.n_trials - done - c['RUNNING']} more trial(s)"
                + (f" ({c['RUNNING']} running)" if c["RUNNING"] else "")], None
    finally:
        opened.lock.close()
