"""``hyper-opt report``: trials.csv, best.yml, plots and summary.md, derived from the study.

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

import argparse
import contextlib
import datetime as dt
import logging
import math
import re
import shlex
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hyper_opt import plots as plotting
from hyper_opt.cli.common import add_common_arguments

if TYPE_CHECKING:
    import optuna

    from hyper_opt.schema import HyperConfig, StorageSpec

logger = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"
SUMMARY = "summary.md"
BEST = "best.yml"
BEST_PATTERN = "best_trial_{}.yml"  # multi-objective: one per Pareto-optimal trial
MAX_TABLE_ROWS = 20  # rows of the best-trials and failure tables in summary.md
MAX_TABLE_PARAMS = 8  # parameter columns in those tables
DASHBOARD_PORT = 8080
ROUGH_IMPORTANCES = 50  # completed trials below which importances get a "rough" note (5 in the top 10 %)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass
class Report:
    """What one report run wrote, and why anything is missing."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    summary: str = ""  # the text of summary.md
    console: str = ""  # the short text printed by the command


# --------------------------------------------------------------------------- command


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
    from hyper_opt.cli.common import setup_logging, load_from_args

    config, model = load_from_args(args)
    setup_logging("WARNING", debug=args.debug)
    if args.dashboard:
        print(dashboard_hint(config))
        return 0
    report = write_report(config, model, out=args.out, plots=not args.no_plots, max_curves=args.max_curves)
    print(report.console)
    logger.debug("report timings: %s", {k: round(v, 3) for k, v in report.timings.items()})
    return 0


# --------------------------------------------------------------------------- the dashboard


def dashboard_command(storage: StorageSpec, *, port: int = DASHBOARD_PORT, host: str = "127.0.0.1") -> str:
    """The ``optuna-dashboard`` command line that opens this storage (any password masked)."""
    from hyper_opt.secrets import mask_url

    if storage.kind == "journal":
        target = f"--storage-class JournalFileStorage {shlex.quote(str(storage.path))}"
    else:
        target = shlex.quote(mask_url(storage.url or ""))
    return f"optuna-dashboard {target} --host {host} --port {port}"


def dashboard_hint(config: HyperConfig) -> str:
    from hyper_opt.secrets import mask_url

    storage = config.optuna.storage
    lines = [dashboard_command(storage),
             f"  then open http://127.0.0.1:{DASHBOARD_PORT}/ (optuna-dashboard is the 'dashboard' extra: "
             "pip install 'hyper_opt[dashboard]'); it reads the study live from the same storage.",
             f"  from a laptop: ssh -L {DASHBOARD_PORT}:127.0.0.1:{DASHBOARD_PORT} LOGIN_NODE, and run the "
             "command on LOGIN_NODE."]
    if storage.url and mask_url(storage.url) != storage.url:
        lines.append("  the password is masked: put it back in place of ***, or remove ':***' and set "
                     "PGPASSWORD (PostgreSQL) in the environment instead.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the report


def write_report(config: HyperConfig, model: Mapping[str, Any] | None, *, out: Path | None = None,
                 plots: bool = True, max_curves: int = 200) -> Report:
    """Read every trial of the study once and write the report from them."""
    from hyper_opt.study import open_study

    started = time.perf_counter()
    opened = open_study(config, create=False)
    try:
        opened_s = time.perf_counter() - started
        trials = opened.storage.get_all_trials(opened.study_id, deepcopy=False)
        directions = [d.name.lower() for d in opened.study.directions]
    finally:
        opened.lock.close()
    loaded_s = time.perf_counter() - started - opened_s
    report = build_report(config, model, trials, directions=directions,
                          out=out if out is not None else config.save_path / "report",
                          plots=plots, max_curves=max_curves)
    report.timings = {"open study": opened_s, "load trials": loaded_s, **report.timings,
                      "total": time.perf_counter() - started}
    return report


def build_report(config: HyperConfig, model: Mapping[str, Any] | None,
                 trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str], out: Path,
                 plots: bool = True, max_curves: int = 200, now: dt.datetime | None = None) -> Report:
    """Write the report for ``trials`` (all of one study) under ``out``."""
    from hyper_opt.results import write_trials_csv

    spec = config.optuna
    names = list(spec.metrics)
    trials = sorted(trials, key=lambda t: t.number)
    report = Report(folder=out)

    @contextlib.contextmanager
    def timed(phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            report.timings[phase] = report.timings.get(phase, 0.0) + time.perf_counter() - t0

    with timed("trials.csv"):
        report.files.append(write_trials_csv(out / TRIALS_CSV, trials, param_names=[p.name for p in spec.parameters],
                                             metric_names=names, n_values=len(directions)))
    with timed("best"):
        best = best_trials(trials, directions)
        report.files += _write_best(config, model, best, out, multi=len(directions) > 1, notes=report.notes)
    with timed("importances"):
        importances, what = param_importances(trials, directions, notes=report.notes)
    if plots:
        _write_plots(report, trials, directions=directions, names=names, best=best, importances=importances,
                     what=what, max_curves=max_curves, timed=timed)
    else:
        report.notes.append("plots skipped: --no-plots")
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


def _finite_complete(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state.name == "COMPLETE" and t.values is not None
            and not any(math.isnan(v) for v in t.values)]


def best_trials(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]
                ) -> list[optuna.trial.FrozenTrial]:
    """Single objective: ``[the best COMPLETE trial]`` (lowest number on ties); multi-objective:
    the Pareto-optimal COMPLETE trials, by number. Empty when nothing completed."""
    complete = _finite_complete(trials)
    if not complete:
        return []
    if len(directions) == 1:
        sign = 1 if directions[0] == "minimize" else -1
        return [min(complete, key=lambda t: (sign * t.values[0], t.number))]
    import numpy as np

    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    values = np.array([t.values for t in complete], dtype=float) * signs
    # In lexicographic order every dominating point comes before the points it dominates, so
    # each point only has to be checked against the front found so far.
    order = np.lexsort(values.T[::-1])
    front_rows: list[int] = []
    front = np.empty((0, values.shape[1]))
    for i in order:
        v = values[i]
        if len(front) and bool(np.any(np.all(front <= v, axis=1) & np.any(front < v, axis=1))):
            continue
        front_rows.append(int(i))
        front = np.vstack([front, v])
    return sorted((complete[i] for i in front_rows), key=lambda t: t.number)


def best_config(config: HyperConfig, model: Mapping[str, Any], trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The model config with ``trial``'s parameters written at their key paths."""
    from hyper_opt.space import patch

    return patch(model, config.optuna.parameters, trial.params)


def best_config_text(config: HyperConfig, model: Mapping[str, Any], trial: optuna.trial.FrozenTrial) -> str:
    """``best.yml``: a comment header naming the trial, then the patched model config."""
    import yaml

    from hyper_opt.space import has_path

    spec = config.optuna
    values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(spec.metrics, trial.values or ()))
    header = [f"hyper-opt report: {config.model_path.name if config.model_path else 'the model config'} "
              f"with the parameters of trial {trial.number} patched in",
              f"study {spec.study_name!r}: {values} ({', '.join(spec.directions)})",
              f"parameters: {_format_params(trial.params)}"]
    known = {p.name for p in spec.parameters}
    unpatched = [p.name for p in spec.parameters if p.name in trial.params and not has_path(model, p.path)]
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
    written = []
    for trial in best:
        path = out / (BEST_PATTERN.format(trial.number) if multi else BEST)
        atomic_write_text(path, best_config_text(config, model, trial))
        written.append(path)
    return written


# --------------------------------------------------------------------------- importances


def param_importances(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str], *,
                      notes: list[str]) -> tuple[dict[str, float] | None, str]:
    """optuna's parameter importances over the COMPLETE trials, or None with a note saying why.

    optuna 5's default evaluator (PED-ANOVA) needs numpy only, not scikit-learn, and rates
    multi-objective studies by how much each parameter matters for reaching the Pareto front.
    The trials are copied into an in-memory study so the storage is not read a second time.
    """
    import optuna

    what = "for the objective" if len(directions) == 1 else "for reaching the Pareto front"
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None
                and all(math.isfinite(v) for v in t.values)]
    if len(complete) < 2:
        notes.append(f"parameter importances not computed: they need at least 2 completed trials, "
                     f"the study has {len(complete)}")
        return None, what
    if not any(t.params for t in complete):
        notes.append("parameter importances not computed: the trials have no parameters")
        return None, what
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            study = optuna.create_study(directions=cast("list[Any]", list(directions)))
            # Only what the evaluator reads: copying whole trials (curves, tracebacks) costs seconds.
            study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                        values=t.values) for t in complete])
            importances = dict(optuna.importance.get_param_importances(study))
        except Exception as err:  # an evaluator limitation must not cost the rest of the report
            notes.append(f"parameter importances not computed: {type(err).__name__}: {err}")
            return None, what
        finally:
            optuna.logging.set_verbosity(verbosity)
    messages = sorted({str(w.message) for w in caught
                       if not issubclass(w.category, (DeprecationWarning, optuna.exceptions.ExperimentalWarning))})
    if not importances or not any(v > 0 for v in importances.values()):
        why = "; ".join(messages) or "every importance is 0"
        notes.append(f"parameter importances could not be estimated from {len(complete)} completed trials: {why}")
        return None, what
    for message in messages:
        notes.append(f"parameter importances: {message}")
    if len(complete) < ROUGH_IMPORTANCES:
        notes.append(f"parameter importances from {len(complete)} completed trials are rough: PED-ANOVA compares "
                     f"the best 10 % with the rest and is stable from about {ROUGH_IMPORTANCES} completed trials")
    return importances, what


# --------------------------------------------------------------------------- plots


def _write_plots(report: Report, trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str],
                 names: Sequence[str], best: Sequence[optuna.trial.FrozenTrial],
                 importances: Mapping[str, float] | None, what: str, max_curves: int, timed: Any) -> None:
    missing = plotting.missing_matplotlib()
    if missing:
        logger.warning("%s", missing)
        report.notes.append(missing)
        return
    out = report.folder
    multi = len(directions) > 1
    pareto = {t.number for t in best} if multi else set()
    order = list(importances) if importances else []
    jobs: list[tuple[str, Any]] = [
        (plotting.HISTORY, lambda p: plotting.optimization_history(trials, p, directions=directions, names=names,
                                                             pareto=pareto)),
    ]
    if multi:
        jobs.append((plotting.PARETO, lambda p: plotting.pareto_front(trials, p, directions=directions, names=names,
                                                                pareto=pareto)))
    else:
        jobs.append((plotting.INTERMEDIATE, lambda p: plotting.intermediate_values(
            trials, p, direction=directions[0], name=names[0], max_curves=max_curves)))
    if importances:
        jobs.append((plotting.IMPORTANCES, lambda p: plotting.param_importances(importances, p, what=what)))
    jobs += [
        (plotting.PARALLEL, lambda p: plotting.parallel_coordinate(trials, p, directions=directions, names=names,
                                                             param_order=order, pareto=pareto)),
        (plotting.SLICE, lambda p: plotting.slice_plot(trials, p, directions=directions, names=names,
                                                       param_order=order)),
    ]
    for filename, draw in jobs:
        with timed(filename):
            try:
                report.files.append(draw(out / filename))
            except plotting.NothingToPlot as why:
                report.notes.append(f"{filename} not drawn: {why}")
            except Exception as err:  # one broken plot must not cost the CSV, best.yml and summary
                logger.warning("drawing %s failed", filename, exc_info=logger.isEnabledFor(logging.DEBUG))
                report.notes.append(f"{filename} not drawn: {type(err).__name__}: {err}")


def _remove_stale(out: Path, written: Sequence[Path]) -> None:
    """Delete report files an earlier run wrote that this run did not (a Pareto-optimal trial
    that no longer is, a plot that can no longer be drawn), so that nothing outdated remains."""
    keep = {p.name for p in written}
    owned = [out / name for name in (TRIALS_CSV, SUMMARY, BEST, *plotting.ALL_FILES)]
    owned += list(out.glob(BEST_PATTERN.format("*")))
    for path in owned:
        if path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# --------------------------------------------------------------------------- summary


@dataclass
class StateStats:
    count: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)


def _duration(trial: optuna.trial.FrozenTrial, now: dt.datetime) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or (now if trial.state.name == "RUNNING" else None)
    return None if end is None else max(0.0, (end - trial.datetime_start).total_seconds())


def state_stats(trials: Sequence[optuna.trial.FrozenTrial], *, now: dt.datetime | None = None
                ) -> dict[str, StateStats]:
    """Trials and time used per state; a RUNNING trial counts the time it has run so far."""
    import optuna

    now = now or dt.datetime.now()
    stats = {s.name: StateStats() for s in optuna.trial.TrialState}
    for trial in trials:
        st = stats[trial.state.name]
        st.count += 1
        seconds = _duration(trial, now)
        if seconds is not None:
            st.seconds += seconds
            st.durations.append(seconds)
    return stats


def pruning_saving(stats: Mapping[str, StateStats]) -> tuple[float, float] | None:
    """(seconds the pruned trials used, seconds they would have needed more to finish), the
    latter estimated with the median COMPLETE duration; None without pruned or completed trials."""
    pruned, complete = stats["PRUNED"], stats["COMPLETE"]
    if not pruned.durations or not complete.durations:
        return None
    median = statistics.median(complete.durations)
    return pruned.seconds, sum(max(0.0, median - d) for d in pruned.durations)


def format_seconds(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``1:02:03``; days as ``3d 04:05:06``."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else text


def error_line(traceback_text: str) -> str:
    """The exception line of a stored traceback ("ValueError: boom"), not its last line when the
    message spans several lines."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=-1)
    for line in lines[last_frame + 1:]:
        if not line.startswith((" ", "\t")):
            return line.strip()
    return lines[-1].strip()


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _format_params(params: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in params.items()) + "}"


def _cell(value: Any) -> str:
    return _format_value(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _time_table(stats: Mapping[str, StateStats]) -> tuple[list[str], list[list[Any]]]:
    total = sum(s.seconds for s in stats.values())
    rows = []
    for name, st in stats.items():
        if not st.count:
            continue
        share = f"{100 * st.seconds / total:.0f} %" if total else "-"
        label = f"{name} (so far)" if name == "RUNNING" else name
        rows.append([label, st.count, format_seconds(st.seconds), share])
    rows.append(["total", sum(s.count for s in stats.values()), format_seconds(total), "100 %" if total else "-"])
    return ["state", "trials", "time used", "share"], rows


def _pruning_line(stats: Mapping[str, StateStats]) -> str | None:
    saving = pruning_saving(stats)
    if saving is None:
        return None
    used, saved = saving
    total = sum(s.seconds for s in stats.values())
    median = statistics.median(stats["COMPLETE"].durations)
    share = (f" ({100 * saved / (total + saved):.0f} % of the compute the search would have taken)"
             if total + saved else "")
    return (f"Pruning: {stats['PRUNED'].count} pruned trials used {format_seconds(used)}; run to the end like "
            f"the median completed trial ({format_seconds(median)}) they would have taken about "
            f"{format_seconds(saved)} more{share}.")


def _params_header(trials: Sequence[optuna.trial.FrozenTrial], order: Sequence[str]) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(p for p in order if any(p in t.params for t in trials))
    for t in trials:
        seen.update(dict.fromkeys(t.params))
    return list(seen)[:MAX_TABLE_PARAMS]


def _best_section(config: HyperConfig, trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str],
                  best: Sequence[optuna.trial.FrozenTrial], report: Report) -> list[str]:
    spec = config.optuna
    names = list(spec.metrics)
    order = [p.name for p in spec.parameters]
    lines: list[str] = []
    if not best:
        return ["No trial has completed yet."]
    if len(directions) == 1:
        b = best[0]
        lines.append(f"Best trial **{b.number}**: {names[0]} = {b.values[0]:.6g} ({directions[0]}), "
                     f"parameters {_format_params(b.params)}"
                     + (f"; model config with them: `{BEST}`." if (report.folder / BEST) in report.files else "."))
        sign = 1 if directions[0] == "minimize" else -1
        top = sorted(_finite_complete(trials), key=lambda t: (sign * t.values[0], t.number))[:10]
        params = _params_header(top, order)
        lines += ["", f"Top {len(top)} completed trials:", ""]
        lines += _table(["rank", "trial", names[0], *params],
                        [[i + 1, t.number, t.values[0], *(t.params.get(p, "") for p in params)]
                         for i, t in enumerate(top)])
        return lines
    lines.append(f"**{len(best)}** Pareto-optimal trial(s)"
                 + (f"; each has its model config in `{BEST_PATTERN.format('<number>')}`."
                    if any(p.name.startswith("best_trial_") for p in report.files) else "."))
    shown = sorted(best, key=lambda t: t.values[0], reverse=directions[0] == "maximize")[:MAX_TABLE_ROWS]
    params = _params_header(shown, order)
    lines.append("")
    lines += _table(["trial", *(f"{n} ({d})" for n, d in zip(names, directions)), *params],
                    [[t.number, *t.values, *(t.params.get(p, "") for p in params)] for t in shown])
    if len(best) > len(shown):
        lines.append(f"\n({len(best) - len(shown)} more in {TRIALS_CSV}.)")
    return lines


def _failure_section(trials: Sequence[optuna.trial.FrozenTrial]) -> list[str]:
    failed = [t for t in trials if t.state.name == "FAIL"]
    retries = [t for t in trials if "failed_trial" in t.system_attrs]
    if not failed:
        return ["No trial failed."]
    groups: dict[str, tuple[str, list[int]]] = {}  # errors that differ only in numbers go together
    for t in failed:
        text = t.user_attrs.get("error") or ""
        line = error_line(text) if text else ("no error recorded: its worker stopped sending heartbeats "
                                              "(killed, out of memory or out of time?)")
        groups.setdefault(_NUMBER.sub("#", line), (line, []))[1].append(t.number)
    lines = [f"{len(failed)} failed trial(s), {len(groups)} distinct error(s)"
             + (f"; {len(retries)} trial(s) were retries of failed ones." if retries else ".")
             + " Tracebacks are in the `error` user attribute (last line in trials.csv); "
               "`hyper-opt rerun HYPER.yml MODEL.yml --trial N` reproduces one.", ""]
    ordered = sorted(groups.values(), key=lambda group: len(group[1]), reverse=True)
    rows = []
    for line, numbers in ordered[:MAX_TABLE_ROWS]:
        shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
        rows.append([len(numbers), shown, f"`{line}`" if line else ""])
    lines += _table(["trials", "numbers", "first error line (of the first trial)"], rows)
    if len(ordered) > MAX_TABLE_ROWS:
        lines.append(f"\n({len(ordered) - MAX_TABLE_ROWS} more distinct errors in {TRIALS_CSV}.)")
    return lines


def summary_markdown(config: HyperConfig, trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str],
                     best: Sequence[optuna.trial.FrozenTrial], stats: Mapping[str, StateStats],
                     importances: Mapping[str, float] | None, what: str, report: Report) -> str:
    from hyper_opt.storage import describe

    spec = config.optuna
    finished = stats["COMPLETE"].count + stats["PRUNED"].count
    lines = [f"# Study {spec.study_name!r}", "",
             f"- storage: {describe(spec.storage)}",
             f"- objective: {', '.join(f'{n} ({d})' for n, d in zip(spec.metrics, directions))}",
             f"- finished trials: {finished} of n_trials {spec.n_trials} ({len(trials)} trials in all)",
             f"- report written {dt.datetime.now().isoformat(timespec='seconds')}", ""]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        lines.insert(-1, f"- wall time from the first trial's start to the last trial's end: "
                         f"{format_seconds((max(ends) - min(starts)).total_seconds())}")
    lines += ["## Trials and time by state", ""]
    header, rows = _time_table(stats)
    lines += _table(header, rows)
    pruning = _pruning_line(stats)
    if pruning:
        lines += ["", pruning]
    lines += ["", "## Best", ""]
    lines += _best_section(config, trials, directions, best, report)
    lines += ["", "## Failures", ""]
    lines += _failure_section(trials)
    lines += ["", "## Parameter importances", ""]
    if importances:
        lines.append(f"{what.capitalize()}, by optuna's default evaluator (PED-ANOVA) over the completed trials:")
        lines.append("")
        lines += _table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()])
    else:
        lines.append("Not computed (see the notes).")
    lines += ["", "## Files", ""]
    lines += [f"- `{p.name}`" for p in report.files if p.name != SUMMARY]
    lines += ["", "## Live view", "",
              f"- `hyper-opt status {config.hyper_path.name} --watch 60`",
              f"- `{dashboard_command(spec.storage)}`"]
    if report.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def console_text(config: HyperConfig, trials: Sequence[optuna.trial.FrozenTrial], *, directions: Sequence[str],
                 best: Sequence[optuna.trial.FrozenTrial], stats: Mapping[str, StateStats], report: Report) -> str:
    spec = config.optuna
    header, rows = _time_table(stats)
    lines = [f"study {spec.study_name!r}: {len(trials)} trials"]
    lines += [f"  {str(r[0]):<18} {r[1]:>7}  {r[2]:>12}  {r[3]:>5}" for r in rows]
    pruning = _pruning_line(stats)
    if pruning:
        lines.append(pruning)
    if best and len(directions) == 1:
        lines.append(f"best trial {best[0].number}: {spec.metrics[0]} = {best[0].values[0]:.6g}  "
                     f"{_format_params(best[0].params)}")
    elif best:
        lines.append(f"{len(best)} Pareto-optimal trial(s): {', '.join(str(t.number) for t in best[:20])}"
                     + (" ..." if len(best) > 20 else ""))
    if stats["FAIL"].count:
        lines.append(f"{stats['FAIL'].count} failed trial(s): see {SUMMARY}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"report: {report.folder}/ ({', '.join(p.name for p in report.files[:12])}"
                 + (", ..." if len(report.files) > 12 else "") + ")")
    return "\n".join(lines)
