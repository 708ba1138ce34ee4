"""What a study remembers about how it is run, beside its trials.

* The search stop: an error that depends only on the objective's code and files (a metric
  ``train`` never returns, a result that is not a dict, an ImportError or NameError inside
  ``train``) fails every trial alike. The first worker to meet one before any trial of the study
  has finished records it (a study system attribute); every worker checks it when it claims a
  trial and stops, so the search ends after one trial instead of ``max_consecutive_failures``
  trainings per worker. ``optimize`` clears it when it starts again.
* The launch: the ``--set`` overrides a study was started with and the budget it runs with
  (user attributes), so that a continuation can be compared with them and ``status`` shows the
  budget the workers use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hyper_opt.exceptions import MetricMissingError

if TYPE_CHECKING:
    from hyper_opt.study import Opened

STOP_ATTR = "hyper_opt:search_stopped"
OVERRIDES_ATTR = "hyper_opt:overrides"
BUDGET_ATTR = "hyper_opt:n_trials"
CODE_ERRORS: tuple[type[BaseException], ...] = (MetricMissingError, ImportError, NameError)
# overrides that change how the search runs, not what a trial trains: a continuation may differ
RUN_ONLY_KEYS = ("optuna:n_trials", "optuna:reload")
RUN_ONLY_SECTIONS = ("local", "slurm", "pbs", "log")
RUN_ONLY_PREFIXES = ("optuna:budget", "optuna:stop")  # when to stop, not what a trial trains


def is_code_error(err: BaseException | None) -> bool:
    return isinstance(err, CODE_ERRORS)


def stop_reason(opened: Opened) -> str | None:
    """The recorded search stop, or None. Read before each claim: on an RDB storage one key with
    one short query (optuna's ``get_study_system_attrs`` loads the study's row and all its system
    attributes through the ORM: about 10 ms of a worker's CPU per trial in benchmarks/fleet.py)."""
    engine = getattr(opened.storage, "engine", None)
    if engine is None:
        return opened.storage.get_study_system_attrs(opened.study_id).get(STOP_ATTR) or None
    import json

    import sqlalchemy

    with engine.connect() as conn:
        text = conn.execute(sqlalchemy.text(
            "SELECT value_json FROM study_system_attributes WHERE study_id = :s AND key = :k"),
            {"s": opened.study_id, "k": STOP_ATTR}).scalar()
    return (json.loads(text) if text else None) or None


def record_stop(opened: Opened, message: str) -> None:
    opened.storage.set_study_system_attr(opened.study_id, STOP_ATTR, message)


def clear_stop(opened: Opened) -> str | None:
    """Forget a recorded stop (a new ``optimize`` run, the code presumably fixed); return it."""
    reason = stop_reason(opened)
    if reason:
        opened.storage.set_study_system_attr(opened.study_id, STOP_ATTR, "")
    return reason


def search_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that change what trials train (not n_trials, reload, workers, jobs, logs)."""
    def run_only(text: str) -> bool:
        path = text.split("=", 1)[0].strip().removeprefix("hyper:")
        return (path in RUN_ONLY_KEYS or path.split(":")[0] in RUN_ONLY_SECTIONS
                or any(path.startswith(f"{key}:") for key in RUN_ONLY_PREFIXES))

    return sorted(o for o in overrides if not run_only(o))


def launch_attrs(opened: Opened) -> dict[str, Any]:
    return opened.storage.get_study_user_attrs(opened.study_id)
