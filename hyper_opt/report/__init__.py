"""``hyper-opt report``: trials.csv, best.yml, plots and summary.md under ``<save_path>/report/``,
derived from the study.

:mod:`~hyper_opt.report.writing` writes the files, :mod:`~hyper_opt.report.summary` renders
summary.md and the console text, :mod:`~hyper_opt.report.dashboard` prints the optuna-dashboard
command; the trial analysis (best / Pareto / state statistics) is :mod:`hyper_opt.trials`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hyper_opt import plots as plotting
from hyper_opt.cli.common import add_common_arguments, load_from_args, setup_logging
from hyper_opt.report.dashboard import DASHBOARD_PORT, dashboard_command, dashboard_hint
from hyper_opt.report.files import BEST, BEST_PATTERN, SUMMARY, TRIALS_CSV, Report
from hyper_opt.report.summary import MAX_TABLE_PARAMS, MAX_TABLE_ROWS, console_text, error_line, format_seconds, summary_markdown
from hyper_opt.report.writing import best_config, best_config_text, build_report, write_report
from hyper_opt.trials import ROUGH_IMPORTANCES, StateStats, best_trials, param_importances, pruning_saving, state_stats

__all__ = ["BEST", "BEST_PATTERN", "DASHBOARD_PORT", "MAX_TABLE_PARAMS", "MAX_TABLE_ROWS", "ROUGH_IMPORTANCES",
           "SUMMARY", "TRIALS_CSV", "Report", "StateStats", "add_arguments", "best_config", "best_config_text",
           "best_trials", "build_report", "console_text", "dashboard_command", "dashboard_hint", "error_line",
           "format_seconds", "param_importances", "pruning_saving", "run", "state_stats", "summary_markdown",
           "write_report"]

logger = logging.getLogger("hyper_opt.report")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="optional")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the report here (default: save_path/report)")
    parser.add_argument("--no-plots", action="store_true", help="write trials.csv, best.yml and summary.md only")
    parser.add_argument("--max-curves", type=_positive_int, default=plotting.MAX_CURVES, metavar="N",
                        help=f"draw at most N learning curves (default {plotting.MAX_CURVES}); the median "
                             "curve always uses every completed trial")
    parser.add_argument("--dashboard", action="store_true",
                        help="print the optuna-dashboard command for this study's storage and exit")


def run(args: argparse.Namespace) -> int:
    config, model = load_from_args(args)
    setup_logging("WARNING", debug=args.debug)
    if args.dashboard:
        print(dashboard_hint(config))
        return 0
    report = write_report(config, model, out=args.out, plots=not args.no_plots, max_curves=args.max_curves)
    print(report.console)
    logger.debug("report timings: %s", {k: round(v, 3) for k, v in report.timings.items()})
    return 0

