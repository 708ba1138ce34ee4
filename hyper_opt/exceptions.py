"""The exceptions hyper_opt raises for problems a user can fix.

The CLI catches :class:`HyperOptError`, prints its message and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class HyperOptError(Exception):
    """Base class of every error hyper_opt reports to the user."""


class ConfigError(HyperOptError):
    """One or more problems in the YAML files or command-line overrides.

    Every problem names the file, the key path, the value found and what is
    allowed, so that one run shows everything that needs fixing.
    """

    def __init__(self, problems: Sequence[str], *, source: str | None = None,
                 more: Sequence[ConfigError] = ()) -> None:
        self.problems = list(problems)
        self.source = source
        self.more = list(more)  # problems of other files, found in the same round
        lines: list[str] = []
        for err in (self, *self.more):
            head = (f"{len(err.problems)} problem(s) in {err.source}:" if err.source
                    else "configuration problem(s):")
            lines += [head, *(f"  - {p}" for p in err.problems)]
        super().__init__("\n".join(lines))


class StudyExistsError(HyperOptError):
    """``reload: 0`` was asked for, but the study already holds trials."""


class StorageError(HyperOptError):
    """The study's storage cannot be reached or used."""


class StorageRefusedError(StorageError):
    """The storage refused for a reason that waiting cannot fix: authentication, a missing
    database, permissions, a full or read-only disk. Raised at once, never retried."""


class SubmissionError(HyperOptError):
    """Jobs could not be submitted to the scheduler."""


class ObjectiveError(HyperOptError):
    """The objective file or class cannot be loaded or called."""


class MetricMissingError(HyperOptError):
    """``train`` returned results without the metric being optimised."""


class MetricValueError(HyperOptError):
    """``train`` returned a metric that is not a finite number (NaN, inf, a string): the trial fails."""


class Interrupted(BaseException):
    """Raised inside ``train`` when the worker is asked to stop (SIGINT/SIGTERM, the job ending).

    A BaseException, like KeyboardInterrupt, so that a user's ``except Exception:`` in ``train``
    does not swallow the stop request."""
