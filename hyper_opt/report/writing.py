"""Writing a report: trials.csv, best.yml, plots and summary.md, derived from the study.

Everything is read from the study in its storage (the single source of truth) in one query, so
the report is the same for local and Slurm searches, during the search and after it, and a
5,000-trial study reports in seconds. The files go to ``<save_path>/report/`` and each is
replaced atomically:

* ``trials.csv``: every trial, one row each (:func:`hyper_opt.results.write_trials_csv`);
* ``best.yml``: the model config with the best trial's parameters patched in; for a
  multi-objective study one ``best_trial_<number>.yml`` per Pareto-optimal trial;
* PNG plots (:mod:`hyper_opt.plots`; skipped with an install hint without matplotlib);
* ``summary.md``: trials and time per state, what pruning saved, the best trials, failures by
  error, parameter importances and notes on anything that could not be made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt import plots as plotting
from hyper_opt.report.cost import COST_PLOT
from hyper_opt.report.files import BEST, BEST_PATTERN, MANIFEST, SUMMARY, TRIALS_CSV, Report
from hyper_opt.report.summary import _format_params, console_text, summary_markdown
from hyper_opt.report.drawing import importances_and_plots
from hyper_opt.trials import best_trials, state_stats

if TYPE_CHECKING:
    import optuna

    from hyper_opt.schema import HyperConfig

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- command


# --------------------------------------------------------------------------- the dashboard


# --------------------------------------------------------------------------- the report


def write_report(config: HyperConfig, model: Mapping[str, Any] | None, *, out: Path | None = None,
                 plots: bool = True, max_curves: int = 200, processes: int | None = None) -> Report:
    """Read every trial of the study once and write the report from them."""
    from hyper_opt.report.reading import read_trials
    from hyper_opt.study import read_study

    started = time.perf_counter()
    opened = read_study(config)
    try:
        opened_s = time.perf_counter() - started
        trials = read_trials(opened.storage, opened.study_id)  # bulk SELECTs on a database
        directions = [d.name.lower() for d in opened.study.directions]
        study_attrs = dict(opened.study.user_attrs)
    finally:
        opened.lock.close()
        engine = getattr(opened.storage, "engine", None)
        if engine is not None:  # done with the database: no pooled connection for the workers to inherit
            engine.dispose()
    loaded_s = time.perf_counter() - started - opened_s
    report = build_report(config, model, trials, directions=directions,
                          out=out if out is not None else config.save_path / "report",
                          plots=plots, max_curves=max_curves, processes=processes, study_attrs=study_attrs)
    report.timings = {"open study": opened_s, "load trials": loaded_s, **report.timings,
                      "total": time.perf_counter() - started}
    return report


def build_report(config: HyperConfig, model: Mapping[str, Any] | None,
                 trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str], out: Path,
                 plots: bool = True, max_curves: int = 200, now: dt.datetime | None = None,
                 processes: int | None = None, study_attrs: Mapping[str, Any] | None = None) -> Report:
    """Write the report for ``trials`` (all of one study) under ``out``. ``processes``: worker
    processes for the importances and plots (None: a few where ``fork`` is safe; 0: none)."""
    from hyper_opt.results import write_trials_csv

    spec = config.optuna
    names = list(spec.metrics)
    trials = sorted(trials, key=lambda t: t.number)
    report = Report(folder=out, study_attrs=dict(study_attrs or {}))
    out.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def timed(phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            report.timings[phase] = report.timings.get(phase, 0.0) + time.perf_counter() - t0

    def csv_and_best() -> None:  # while the worker processes draw
        with timed("trials.csv"):
            report.files.append(write_trials_csv(out / TRIALS_CSV, trials, param_names=[p.name for p in spec.parameters],
                                                 metric_names=names, n_values=len(directions)))
        with timed("best"):
            report.files.extend(_write_best(config, model, best, out, multi=len(directions) > 1, notes=report.notes))

    best = best_trials(trials, directions)
    importances, what = importances_and_plots(report, trials, directions=directions, names=names, best=best,
                                              plots=plots, max_curves=max_curves, processes=processes,
                                              meanwhile=csv_and_best)
    with timed("summary"):
        stats = state_stats(trials, now=now)
        report.summary = summary_markdown(config, trials, directions=directions, best=best, stats=stats,
                                          importances=importances, what=what, report=report)
        from hyper_opt.results import atomic_write_text

        atomic_write_text(out / SUMMARY, report.summary)
        report.files.append(out / SUMMARY)
        report.console = console_text(config, trials, directions=directions, best=best, stats=stats, report=report)
    _remove_stale(out, report.files)
    return report


# --------------------------------------------------------------------------- best trials


def best_config(config: HyperConfig, model: Mapping[str, Any], trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The model config with ``trial``'s parameters written at their key paths."""
    from hyper_opt.space import patch

    return patch(model, config.optuna.parameters, trial.params)


def best_config_text(config: HyperConfig, model: Mapping[str, Any], trial: optuna.trial.FrozenTrial) -> str:
    """``best.yml``: a comment header naming the trial, then the patched model config."""
    import yaml

    from hyper_opt.space import broken_paths, has_path

    spec = config.optuna
    values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(spec.metrics, trial.values or ()))
    header = [f"hyper-opt report: {config.model_path.name if config.model_path else 'the model config'} "
              f"with the parameters of trial {trial.number} patched in",
              f"study {spec.study_name!r}: {values} ({', '.join(spec.directions)})",
              f"parameters: {_format_params(trial.params)}"]
    known = {p.name for p in spec.parameters}
    broken = [p.key for p in broken_paths(model, spec.parameters)]
    if broken:
        header.append(f"WARNING: colon paths that do not resolve in the model config (a typo?), read by "
                      f"custom_updates only: {', '.join(broken)}")
    unpatched = [p.name for p in spec.parameters if p.name in trial.params and not has_path(model, p.path)
                 and p.key not in broken]
    if unpatched:
        header.append(f"not key paths of the model config, so not patched here (custom_updates uses them): "
                      f"{', '.join(unpatched)}")
    unknown = [name for name in trial.params if name not in known]
    if unknown:
        header.append(f"not parameters of the current hyperparameter file, so not patched: {', '.join(unknown)}")
    text = "".join(f"# {line}\n" for line in header)
    return text + yaml.safe_dump(best_config(config, model, trial), sort_keys=False, default_flow_style=False)


def _write_best(config: HyperConfig, model: Mapping[str, Any] | None, best: Sequence[optuna.trial.FrozenTrial],
                out: Path, *, multi: bool, notes: list[str]) -> list[Path]:
    from hyper_opt.results import atomic_write_text

    if not best:
        notes.append("best.yml not written: no trial has completed yet")
        return []
    if model is None:
        notes.append("best.yml not written: give the model config too (hyper-opt report HYPER.yml MODEL.yml)")
        return []
    from hyper_opt.space import broken_paths

    broken = [p.key for p in broken_paths(model, config.optuna.parameters)]
    if broken:
        notes.append(f"colon paths that do not resolve in the model config (a typo?), read by custom_updates "
                     f"only: {', '.join(broken)}")
    written = []
    for trial in best:
        path = out / (BEST_PATTERN.format(trial.number) if multi else BEST)
        atomic_write_text(path, best_config_text(config, model, trial))
        written.append(path)
    return written


# --------------------------------------------------------------------------- importances


# --------------------------------------------------------------------------- plots


def _remove_stale(out: Path, written: Sequence[Path]) -> None:
    """Delete the report files an earlier run wrote that this run did not (a Pareto-optimal trial
    that no longer is, a plot that can no longer be drawn), so that nothing outdated remains; and
    nothing else. A report never deletes a file it did not write: only what the earlier run's
    manifest (MANIFEST, in ``out``) lists, under a report file's name, and unchanged since (size
    and mtime), so a user's own ``best.yml`` in the folder given to ``--out`` stays."""
    import fnmatch
    import json

    from hyper_opt.results import atomic_write_text

    names = (TRIALS_CSV, SUMMARY, BEST, *plotting.ALL_FILES, COST_PLOT, BEST_PATTERN.format("*"))
    try:
        earlier = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("files", {})
        earlier = earlier if isinstance(earlier, dict) else {}
    except (OSError, ValueError, AttributeError):  # none (or unreadable): delete nothing
        earlier = {}
    keep = {p.name for p in written}
    for name, stamp in earlier.items():
        if name in keep or not any(fnmatch.fnmatchcase(name, n) for n in names):
            continue
        path = out / name
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            if [st.st_size, st.st_mtime_ns] == stamp:
                path.unlink()
    stamps = {}
    for p in written:
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            stamps[p.name] = [st.st_size, st.st_mtime_ns]
    atomic_write_text(out / MANIFEST, json.dumps({"written_by": "hyper-opt report", "files": stamps}, indent=1))


# --------------------------------------------------------------------------- summary

