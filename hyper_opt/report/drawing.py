"""The report's parameter importances and plots, drawn side by side in worker processes.

Each plot is a few hundred milliseconds of matplotlib on one core, and optuna's importance
module imports scikit-learn (2 s and more) for evaluators the report does not use. On Linux the
report forks a few worker processes once the trials are read: they inherit the trials (nothing
is pickled but the small results), compute PED-ANOVA without importing scikit-learn, and draw
the plots in parallel while this process writes trials.csv and best.yml. Without ``fork`` (macOS,
Windows), with threads running (forking them is unsafe) or with ``processes=0``, everything runs
here, one after the other, with the same results.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hyper_opt import plots as plotting
from hyper_opt.report.cost import COST_PLOT, best_vs_gpu_hours
from hyper_opt.trials import param_importances

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from hyper_opt.report.files import Report

logger = logging.getLogger(__name__)

MAX_PROCESSES = 3  # the longest chain (importances, then two plots) leaves more workers idle

IMPORTANCES = "importances"

# The jobs of the report being drawn. Set before the workers are forked, so that they inherit
# them (closures over the trials) instead of receiving them pickled.
_JOBS: dict[str, Callable[..., Any]] = {}


def default_processes() -> int:
    """Worker processes to use: 0 (draw here) where forking is unavailable or unsafe."""
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_PROCESSES, cpus))


def _run(name: str, args: tuple[Any, ...], *, in_worker: bool) -> tuple[str, Any, float]:
    """("ok", result) | ("nothing", why) | ("error", text), and the seconds it took."""
    if in_worker and name == IMPORTANCES and "sklearn" not in sys.modules and "optuna.importance" not in sys.modules:
        # optuna.importance imports scikit-learn for its fANOVA and MDI evaluators; PED-ANOVA
        # (the default, the only one used) needs numpy only. Marked missing in this short-lived
        # worker only; the calling process is untouched.
        sys.modules["sklearn"] = None  # type: ignore[assignment]
    started = time.perf_counter()
    try:
        outcome: tuple[str, Any] = ("ok", _JOBS[name](*args))
    except plotting.NothingToPlot as why:
        outcome = ("nothing", str(why))
    except Exception as err:  # one broken plot must not cost the CSV, best.yml and summary
        if not in_worker:
            logger.debug("drawing %s failed", name, exc_info=True)
        outcome = ("error", f"{type(err).__name__}: {err}")
    return outcome[0], outcome[1], time.perf_counter() - started


def _in_worker(name: str, args: tuple[Any, ...]) -> tuple[str, Any, float]:
    return _run(name, args, in_worker=True)


class _Runner:
    """Runs jobs in a fork pool, or here when there is none or it broke."""

    def __init__(self, processes: int) -> None:
        self.pool = None
        if processes > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))

    def submit(self, name: str, *args: Any) -> Any:
        if self.pool is not None:
            try:
                future = self.pool.submit(_in_worker, name, args)
                future.hyper_opt_job = (name, args)  # type: ignore[attr-defined]
                return future
            except RuntimeError:  # a broken pool refuses new work
                pass
        return (name, args)

    def result(self, handle: Any) -> tuple[str, Any, float]:
        if isinstance(handle, tuple):
            return _run(*handle, in_worker=False)
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()  # type: ignore[no-any-return]
        except BrokenProcessPool:  # a worker died (out of memory?): draw it here instead
            logger.warning("a report worker process died; drawing the rest in this process")
            self.pool = None
            name, args = handle.hyper_opt_job
            return _run(name, args, in_worker=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def importances_and_plots(report: Report, trials: Sequence[optuna.trial.FrozenTrial], *,
                          directions: Sequence[str], names: Sequence[str],
                          best: Sequence[optuna.trial.FrozenTrial], plots: bool, max_curves: int,
                          processes: int | None = None,
                          meanwhile: Callable[[], None] = lambda: None) -> tuple[Mapping[str, float] | None, str]:
    """Compute the parameter importances and draw the plots into ``report.folder``; the files and
    notes go into ``report`` in a fixed order, whatever finished first. ``meanwhile`` runs here
    while the workers draw. Returns (importances or None, what they are for)."""
    out = report.folder
    multi = len(directions) > 1
    pareto = {t.number for t in best} if multi else set()
    missing = plotting.missing_matplotlib() if plots else None

    def importances_job() -> tuple[Mapping[str, float] | None, str, list[str]]:
        notes: list[str] = []
        importances, what = param_importances(trials, directions, notes=notes)
        return importances, what, notes

    first, then = _plot_jobs(trials, out, directions=directions, names=names, pareto=pareto,
                             max_curves=max_curves)
    drawing = plots and not missing
    _JOBS.clear()
    _JOBS[IMPORTANCES] = importances_job
    if drawing:
        _JOBS.update(first)
        _JOBS.update(then)
        import matplotlib.figure  # noqa: F401 - once here, not once per worker
    started = time.perf_counter()
    workers = default_processes() if processes is None else processes
    if workers:
        gc.freeze()  # the workers' collector then never walks the trials they inherit
    runner = _Runner(workers)
    try:
        handles = {IMPORTANCES: runner.submit(IMPORTANCES)}
        if drawing:
            handles.update({name: runner.submit(name) for name in first})
        meanwhile()
        status, value, seconds = runner.result(handles[IMPORTANCES])
        report.timings["importances"] = seconds
        if status == "ok":
            importances, what, notes = value
            report.notes.extend(notes)
        else:  # param_importances notes its own failures; this is a crash of the worker itself
            importances, what = None, "for the objective" if not multi else "for reaching the Pareto front"
            report.notes.append(f"parameter importances not computed: {value}")
        if drawing:
            order = list(importances) if importances else []
            handles[plotting.SLICE] = runner.submit(plotting.SLICE, order)  # the longest first
            handles[plotting.PARALLEL] = runner.submit(plotting.PARALLEL, order)
            if importances:
                handles[plotting.IMPORTANCES] = runner.submit(plotting.IMPORTANCES, importances, what)
            for name in [*first, *then]:
                if name in handles:
                    _collect(report, name, runner.result(handles[name]))
    finally:
        runner.close()
        _JOBS.clear()
        if workers:
            gc.unfreeze()
    if missing:
        logger.warning("%s", missing)
        report.notes.append(missing)
    elif not plots:
        report.notes.append("plots skipped: --no-plots")
    report.timings["importances and plots (wall)"] = time.perf_counter() - started
    return importances, what


def _plot_jobs(trials: Sequence[optuna.trial.FrozenTrial], out: Path, *, directions: Sequence[str],
               names: Sequence[str], pareto: set[int], max_curves: int
               ) -> tuple[dict[str, Callable[..., Any]], dict[str, Callable[..., Any]]]:
    """The plots by file name: those drawn at once, and those that need the importances."""
    multi = len(directions) > 1
    first: dict[str, Callable[..., Any]] = {
        plotting.HISTORY: lambda: plotting.optimization_history(trials, out / plotting.HISTORY, directions=directions,
                                                                names=names, pareto=pareto)}
    if multi:
        first[plotting.PARETO] = lambda: plotting.pareto_front(trials, out / plotting.PARETO, directions=directions,
                                                               names=names, pareto=pareto)
    else:
        first[plotting.INTERMEDIATE] = lambda: plotting.intermediate_values(
            trials, out / plotting.INTERMEDIATE, direction=directions[0], name=names[0], max_curves=max_curves)
        first[COST_PLOT] = lambda: best_vs_gpu_hours(trials, out / COST_PLOT, direction=directions[0], name=names[0])
    then: dict[str, Callable[..., Any]] = {  # these need the importances (their values, or their order)
        plotting.IMPORTANCES: lambda importances, what: plotting.param_importances(
            importances, out / plotting.IMPORTANCES, what=what),
        plotting.PARALLEL: lambda order: plotting.parallel_coordinate(
            trials, out / plotting.PARALLEL, directions=directions, names=names, param_order=order, pareto=pareto),
        plotting.SLICE: lambda order: plotting.slice_plot(trials, out / plotting.SLICE, directions=directions,
                                                          names=names, param_order=order),
    }
    return first, then


def _collect(report: Report, filename: str, outcome: tuple[str, Any, float]) -> None:
    status, value, seconds = outcome
    report.timings[filename] = seconds
    if status == "ok":
        report.files.append(value)
    elif status == "nothing":
        report.notes.append(f"{filename} not drawn: {value}")
    else:
        logger.warning("drawing %s failed: %s", filename, value)
        report.notes.append(f"{filename} not drawn: {value}")
