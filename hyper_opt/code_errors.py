"""Stopping the whole search on an error that every trial would meet (issue 22).

A metric ``train`` never returns, a result that is not a dict, an ImportError or NameError
inside ``train``: these depend only on the objective's code and files. When one fails a trial
before any trial of the study has finished, the worker records it in the study
(:mod:`hyper_opt.study_attrs`) and stops; every other worker sees it when it next claims a trial
and stops too. Once a trial has finished, the same error depends on the parameters and only
fails its trial, as every other error does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hyper_opt.storage import with_db_retry
from hyper_opt.study import counts, n_finished
from hyper_opt.study_attrs import is_code_error, record_stop, stop_reason

if TYPE_CHECKING:
    from hyper_opt.schema import HyperConfig
    from hyper_opt.study import Opened

logger = logging.getLogger("hyper_opt.worker")


def stop_on_code_error(opened: Opened, config: HyperConfig, frozen: Any, err: BaseException | None,
                       worker_index: int) -> bool:
    """After a FAIL: record the stop and return True when ``err`` is a code error and no trial of
    the study has finished yet."""
    if not is_code_error(err):
        return False
    seconds = config.optuna.db_retry_seconds
    if with_db_retry(lambda: n_finished(counts(opened)), seconds=seconds, what="counting finished trials"):
        return False
    message = (f"trial {frozen.number} failed with {type(err).__name__}: {err}. It depends only on the "
               "objective's code or files, so every trial would fail the same way; the search stopped. "
               "Fix it and run optimize again with --reload")
    with_db_retry(lambda: record_stop(opened, message), seconds=seconds, what="recording the search stop")
    logger.error("worker %d: %s", worker_index, message)
    return True


def code_error_stop(opened: Opened, config: HyperConfig, worker_index: int) -> str | None:
    """The stop another worker recorded (checked before each claim), or None."""
    reason = with_db_retry(lambda: stop_reason(opened), seconds=config.optuna.db_retry_seconds,
                           what="reading the study's attributes")
    if reason:
        logger.error("worker %d: stopping: %s", worker_index, reason)
    return reason
