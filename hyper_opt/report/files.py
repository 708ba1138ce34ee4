"""The report's file names, and :class:`Report`: what one report run wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

TRIALS_CSV = "trials.csv"


SUMMARY = "summary.md"


BEST = "best.yml"


BEST_PATTERN = "best_trial_{}.yml"  # multi-objective: one per Pareto-optimal trial


MANIFEST = ".hyper_opt_report.json"  # what the last report wrote here: the only files a report deletes


@dataclass
class Report:
    """What one report run wrote, and why anything is missing."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    summary: str = ""  # the text of summary.md
    console: str = ""  # the short text printed by the command
    study_attrs: dict[str, Any] = field(default_factory=dict)  # the study's user attributes (why it ended)

