"""PNG plots of a study, drawn with matplotlib from the trials themselves.

Every function takes the trials (``FrozenTrial``, as loaded once by the report), writes one PNG
atomically and raises :class:`NothingToPlot` when the study holds nothing to draw yet. The plots
stay readable on large studies: points and curves beyond a cap are sampled evenly (the best
trials are always kept), many lines get a low alpha, and a median curve summarises every
learning curve, drawn or not.

matplotlib is an optional extra (``pip install 'hyper_opt[plots]'``). It is imported inside the
functions, and figures are rendered by :class:`matplotlib.figure.Figure` with the Agg canvas
only: no display is needed and the caller's pyplot backend is never changed.

optuna's own ``optuna.visualization.matplotlib`` was measured against these on one 5,000-trial
study, the two taking turns (``python -m benchmarks --quick --only report``): its intermediate
values plot takes minutes (it draws every curve), and its history, importance, parallel
coordinate and slice plots each took longer than the ones here (0.52 vs 0.38 s, 0.28 vs 0.20 s,
1.10 vs 0.56 s, 0.91 vs 0.65 s, best of two at load 1; the same order at load 4), its parallel
coordinates being a solid block of lines at that size. So all of them are drawn here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'hyper_opt[plots]'"

# File names: the ones optuna.visualization uses, so that they are recognised at a glance.
HISTORY = "optimization_history.png"
INTERMEDIATE = "intermediate_values.png"
IMPORTANCES = "param_importances.png"
PARALLEL = "parallel_coordinate.png"
SLICE = "slice.png"
PARETO = "pareto_front.png"
ALL_FILES = (HISTORY, INTERMEDIATE, IMPORTANCES, PARALLEL, SLICE, PARETO)

# Caps that keep a plot readable (and quick) however large the study.
MAX_POINTS = 2000  # scatter points per panel
MAX_CURVES = 200  # learning curves drawn
MAX_LINES = 1000  # parallel-coordinate lines
MAX_PARAMS = 12  # parameters shown in the parallel coordinates and slice plots
MAX_BARS = 25  # parameter importances shown

COMPLETE_COLOR = "tab:blue"
PRUNED_COLOR = "tab:orange"
RUNNING_COLOR = "tab:green"
BEST_COLOR = "tab:red"


class NothingToPlot(Exception):
    """The study holds no data for this plot yet; the message says what is missing."""


def missing_matplotlib() -> str | None:
    """None when matplotlib imports, else a one-line note with the install hint."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return f"plots skipped: matplotlib is not installed ({err}); {INSTALL_HINT} to get them"
    return None


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A figure outside pyplot. ``constrained=False`` for regular grids laid out by hand:
    the constrained layout measures every tick label and doubles the drawing time there."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)


def _save(fig: Figure, path: Path) -> Path:
    """Render with the Agg canvas and replace ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from hyper_opt.results import atomic_open

    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return path


def sample_evenly(trials: Sequence[optuna.trial.FrozenTrial], cap: int, *,
                  keep: Iterable[optuna.trial.FrozenTrial] = ()) -> list[optuna.trial.FrozenTrial]:
    """At most ``cap`` trials (plus those in ``keep``), spread evenly over ``trials``, in order."""
    if len(trials) <= cap:
        return list(trials)
    keep_numbers = {t.number for t in keep}
    step = len(trials) / cap
    chosen = {int(i * step) for i in range(cap)}
    return [t for i, t in enumerate(trials) if i in chosen or t.number in keep_numbers]


def _use_log(values: Iterable[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 1e3


def _label(name: str, direction: str) -> str:
    return f"{name} ({direction})"


def _state(trial: optuna.trial.FrozenTrial) -> str:
    return trial.state.name


def _complete(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    from hyper_opt.trials import finite_complete

    return finite_complete(trials)


def _ranked(trials: Sequence[optuna.trial.FrozenTrial], direction: str, objective: int = 0
            ) -> list[optuna.trial.FrozenTrial]:
    """Best first."""
    return sorted(trials, key=lambda t: t.values[objective], reverse=direction == "maximize")


def _param_names(trials: Iterable[optuna.trial.FrozenTrial], order: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for trial in trials:
        seen.update(dict.fromkeys(trial.params))
    first = [p for p in order if p in seen]
    return first + sorted(p for p in seen if p not in first)


def _distribution(trials: Iterable[optuna.trial.FrozenTrial], name: str) -> Any:
    for trial in trials:
        if name in trial.distributions:
            return trial.distributions[name]
    return None


def _is_log(dist: Any) -> bool:
    return bool(getattr(dist, "log", False))


def _is_categorical(dist: Any) -> bool:
    return hasattr(dist, "choices")


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")
_MATH_POWER = re.compile(r"^\$\\mathdefault\{(?:([0-9.]+)\\times)?10\^\{(-?[0-9]+)\}\}\$$")


def _plain_power(text: str) -> str:
    """``$\\mathdefault{2\\times10^{-5}}$`` as ``2×10⁻⁵``: the same label without mathtext, whose
    parser takes about 50 ms per distinct label (a third of a slice plot's time). Anything
    else is returned as it is."""
    match = _MATH_POWER.match(text)
    if not match:
        return text
    mantissa, power = match.groups()
    return (f"{mantissa}\u00d7" if mantissa else "") + "10" + power.translate(_SUPERSCRIPT)


def _log_scale(ax: Any, which: str) -> None:
    """A log axis whose tick labels are plain text (see :func:`_plain_power`)."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return _plain_power(super().__call__(x, pos))

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def _categorical_axis(ax: Any, labels: Sequence[str]) -> None:
    """Every choice gets its tick and label, also the choices no completed trial used (the axis
    spans them all: before, a panel whose trials all used one choice showed only that one)."""
    long = sum(len(label) for label in labels) > 24
    ax.set_xticks(range(len(labels)), [label if len(label) <= 18 else label[:17] + "\u2026" for label in labels],
                  fontsize=7, rotation=30 if long or len(labels) > 3 else 0, ha="right" if long or len(labels) > 3
                  else "center")
    ax.set_xlim(-0.5, len(labels) - 0.5)


LOG_TICK_PRIORITY = (1, 5, 2, 3, 7, 4, 6, 8, 9)  # decade bases first, then round mantissas


def log_ticks(lo: float, hi: float, max_ticks: int = 4) -> list[float]:
    """At most ``max_ticks`` labelled ticks between ``lo`` and ``hi`` (> 0), never closer than a
    ``max_ticks``-th of the span on the log axis, so that labels such as ``9×10⁻⁴`` and ``10⁻³``
    never overlap; decade bases and round mantissas are preferred."""
    llo, lhi = math.log10(lo), math.log10(hi)
    span = max(lhi - llo, 1e-12)
    candidates = [m * 10.0 ** e for m in LOG_TICK_PRIORITY
                  for e in range(math.floor(llo), math.ceil(lhi) + 1) if lo <= m * 10.0 ** e <= hi]
    picked: list[float] = []
    for value in candidates:
        if len(picked) < max_ticks and all(abs(math.log10(value) - math.log10(p)) >= span / (max_ticks + 0.5)
                                           for p in picked):
            picked.append(value)
    return sorted(picked)


def _sparse_log_axis(ax: Any, lo: float, hi: float) -> None:
    """A log x axis over the data (5 % margins) with :func:`log_ticks` labelled, the other
    ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter

    llo, lhi = math.log10(lo), math.log10(hi)
    pad = max((lhi - llo) * 0.05, 0.01)
    lo, hi = 10 ** (llo - pad), 10 ** (lhi + pad)
    _log_scale(ax, "x")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=11)


# --------------------------------------------------------------------------- plots


def optimization_history(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *,
                         directions: Sequence[str], names: Sequence[str],
                         pareto: Collection[int] = (), max_points: int = MAX_POINTS) -> Path:
    """Objective value per trial number, with the best value so far (single objective) or the
    Pareto-optimal trials (multi-objective) in red; pruned trials at their last reported value."""
    complete = sorted(_complete(trials), key=lambda t: t.number)
    if not complete:
        raise NothingToPlot("no completed trial yet")
    pruned = sorted((t for t in trials if _state(t) == "PRUNED" and t.values is not None
                     and all(math.isfinite(v) for v in t.values)), key=lambda t: t.number)
    n_obj = len(directions)
    fig = _figure(9, 3.2 * n_obj + 0.6)
    axes = fig.subplots(n_obj, 1, squeeze=False)[:, 0]
    shown_total = 0
    for k, ax in enumerate(axes):
        improving: list[optuna.trial.FrozenTrial] = []
        best_x: list[float] = []
        best_y: list[float] = []
        if n_obj == 1:
            best = None
            sign = 1 if directions[0] == "minimize" else -1
            for t in complete:
                if best is None or sign * t.values[0] < sign * best:
                    best = t.values[0]
                    improving.append(t)
                best_x.append(t.number)
                best_y.append(best)
        front = [t for t in complete if t.number in pareto]
        shown = sample_evenly(complete, max_points, keep=improving + front)
        shown_total = max(shown_total, len(shown))
        values = [t.values[k] for t in shown]
        alpha = 0.8 if len(shown) < 300 else 0.35
        ax.scatter([t.number for t in shown], values, s=10, alpha=alpha, color=COMPLETE_COLOR,
                   linewidths=0, label=f"COMPLETE ({len(complete)})")
        if pruned:
            pshown = sample_evenly(pruned, max_points // 2)
            ax.scatter([t.number for t in pshown], [t.values[k] for t in pshown], s=10, marker="x",
                       alpha=min(alpha, 0.5), color=PRUNED_COLOR, linewidths=0.8,
                       label=f"PRUNED ({len(pruned)}, last reported value)")
        if best_x:
            ax.step(best_x + [complete[-1].number], best_y + [best_y[-1]], where="post", color=BEST_COLOR,
                    linewidth=1.5, label="best so far")
        if front:
            ax.scatter([t.number for t in front], [t.values[k] for t in front], s=18, color=BEST_COLOR,
                       label=f"Pareto-optimal ({len(front)})", zorder=3)
        if _use_log(values + best_y):
            _log_scale(ax, "y")
        ax.set_ylabel(_label(names[k], directions[k]))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("trial number")
    note = f", {shown_total} of {len(complete)} completed trials drawn" if shown_total < len(complete) else ""
    _title(fig, f"Optimization history{note}")
    return _save(fig, path)


def intermediate_values(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *, direction: str,
                        name: str, max_curves: int = MAX_CURVES) -> Path:
    """Learning curves (reported values per step): completed in blue, pruned in orange ending in
    an x, the median of all completed curves in black. At most ``max_curves`` are drawn."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        raise NothingToPlot("no trial reported intermediate values (BaseObjective.report)")
    curves.sort(key=lambda t: t.number)
    complete = _complete(curves)
    best = _ranked(complete, direction)[: max(1, min(10, max_curves // 10))] if complete else []
    shown = sample_evenly(curves, max_curves, keep=best)
    alpha = float(np.clip(30.0 / len(shown), 0.12, 0.8))
    fig = _figure(9, 5)
    ax = fig.subplots()
    all_y: list[float] = []
    handles: list[Any] = []
    for state, color in (("COMPLETE", COMPLETE_COLOR), ("RUNNING", RUNNING_COLOR), ("FAIL", "tab:gray"),
                         ("PRUNED", PRUNED_COLOR)):
        group = [t for t in shown if _state(t) == state]
        if not group:
            continue
        segments = []
        ends = []
        for t in group:
            steps = sorted(t.intermediate_values)
            points = [(s, t.intermediate_values[s]) for s in steps if math.isfinite(t.intermediate_values[s])]
            if not points:
                continue
            segments.append(points)
            all_y.extend(y for _, y in points)
            ends.append(points[-1])
        total = sum(1 for t in curves if _state(t) == state)
        label = f"{state} ({len(segments)} of {total} drawn)" if len(segments) < total else f"{state} ({total})"
        ax.add_collection(LineCollection(segments, colors=color, alpha=alpha, linewidths=1.0))
        handles.append(Line2D([], [], color=color, label=label))
        if state == "PRUNED" and ends:
            ax.scatter([x for x, _ in ends], [y for _, y in ends], marker="x", s=14, color=color,
                       alpha=min(1.0, alpha * 2), linewidths=0.8)
    by_step: dict[int, list[float]] = {}
    for t in complete:
        for step, value in t.intermediate_values.items():
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    if by_step:
        steps = sorted(by_step)
        median = [float(np.median(by_step[s])) for s in steps]
        handles += ax.plot(steps, median, color="black", linewidth=2, label=f"median of {len(complete)} COMPLETE")
        all_y.extend(median)
    ax.autoscale_view()
    if _use_log(all_y):
        _log_scale(ax, "y")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(f"reported value ({name}, {direction})")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8)
    _title(fig, f"Learning curves of {len(curves)} trials")
    return _save(fig, path)


def param_importances(importances: Mapping[str, float], path: Path, *, what: str) -> Path:
    """Horizontal bars, most important on top (at most MAX_BARS)."""
    items = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)[:MAX_BARS]
    if not items or not any(v > 0 for _, v in items):
        raise NothingToPlot("no parameter importance could be computed")
    fig = _figure(8, 1.2 + 0.35 * len(items))
    ax = fig.subplots()
    names = [k for k, _ in reversed(items)]
    values = [v for _, v in reversed(items)]
    bars = ax.barh(names, values, color=COMPLETE_COLOR)
    for bar, value in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.3f}", va="center", fontsize=8)
    ax.set_xlabel("importance (normalised to sum 1)")
    ax.set_xlim(0, max(values) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    _title(fig, f"Parameter importances ({what})")
    return _save(fig, path)


def _normalise(values: Sequence[Any], dist: Any) -> tuple[list[float], list[tuple[float, str]]]:
    """Values mapped to [0, 1] (NaN where missing) and (position, label) ticks for the axis."""
    if dist is None:
        return [math.nan] * len(values), []
    if _is_categorical(dist):
        n = len(dist.choices)
        pos = [math.nan if v is None else (dist.to_internal_repr(v) / (n - 1) if n > 1 else 0.5) for v in values]
        labels = dist.choices if n <= 8 else [dist.choices[0], dist.choices[-1]]
        ticks = [(dist.to_internal_repr(c) / (n - 1) if n > 1 else 0.5, str(c)) for c in labels]
        return pos, ticks
    low, high = float(dist.low), float(dist.high)
    log = _is_log(dist)
    lo, hi = (math.log10(low), math.log10(high)) if log else (low, high)
    span = hi - lo

    def scale(v: float) -> float:
        return 0.5 if span == 0 else ((math.log10(v) if log else v) - lo) / span

    pos = [math.nan if v is None else scale(float(v)) for v in values]
    return pos, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]


def _objective_axis(values: Sequence[float]) -> tuple[list[float], list[tuple[float, str]]]:
    lo, hi = min(values), max(values)
    if _use_log(values):
        llo, lhi = math.log10(lo), math.log10(hi)
        return ([(math.log10(v) - llo) / (lhi - llo) for v in values],
                [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
    span = hi - lo
    return ([0.5 if span == 0 else (v - lo) / span for v in values], [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])


def parallel_coordinate(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *, directions: Sequence[str],
                        names: Sequence[str], param_order: Sequence[str] = (), pareto: Collection[int] = (),
                        max_lines: int = MAX_LINES, max_params: int = MAX_PARAMS) -> Path:
    """One line per completed trial across its parameters and objective(s): single objective
    coloured by value (best drawn on top), multi-objective with the Pareto-optimal trials in red."""
    import matplotlib
    import numpy as np
    from matplotlib.collections import LineCollection

    complete = _complete(trials)
    if not complete:
        raise NothingToPlot("no completed trial yet")
    params = _param_names(complete, param_order)[:max_params]
    if not params:
        raise NothingToPlot("the trials have no parameters")
    ranked = _ranked(complete, directions[0])
    keep = ranked[: max(1, max_lines // 10)] + [t for t in complete if t.number in pareto]
    shown = sample_evenly(sorted(complete, key=lambda t: t.number), max_lines, keep=keep)
    columns: list[list[float]] = []
    ticks: list[list[tuple[float, str]]] = []
    for p in params:
        pos, tk = _normalise([t.params.get(p) for t in shown], _distribution(complete, p))
        columns.append(pos)
        ticks.append(tk)
    labels = list(params)
    for k, (name, direction) in enumerate(zip(names, directions)):
        pos, tk = _objective_axis([t.values[k] for t in shown])
        columns.append(pos)
        ticks.append(tk)
        labels.append(_label(name, direction))
    data = np.array(columns, dtype=float).T  # one row per trial
    xs = np.arange(len(labels), dtype=float)
    fig = _figure(max(8.0, 1.1 * len(labels) + 2), 5.5)
    ax = fig.subplots()
    alpha = float(np.clip(40.0 / len(shown), 0.1, 0.8))
    if len(directions) == 1:
        order = sorted(range(len(shown)), key=lambda i: shown[i].values[0], reverse=directions[0] == "minimize")
        values = np.array([shown[i].values[0] for i in order])
        # The best trials dark and on top, the rest pale behind them.
        cmap = matplotlib.colormaps["viridis_r" if directions[0] == "maximize" else "viridis"]
        norm = (matplotlib.colors.LogNorm(values.min(), values.max()) if _use_log(values.tolist())
                else matplotlib.colors.Normalize(values.min(), values.max()))
        n_top = max(1, len(order) // 10)
        parts = []
        for part, part_alpha in ((slice(0, len(order) - n_top), alpha), (slice(len(order) - n_top, None), 0.8)):
            lines = LineCollection([np.column_stack([xs, data[i]]) for i in order[part]], cmap=cmap, norm=norm,
                                   alpha=part_alpha, linewidths=1.0)
            lines.set_array(values[part])
            parts.append(ax.add_collection(lines))
        fig.colorbar(parts[-1], ax=ax, label=_label(names[0], directions[0]), pad=0.01)
    else:
        rest = [i for i in range(len(shown)) if shown[i].number not in pareto]
        front = [i for i in range(len(shown)) if shown[i].number in pareto]
        ax.add_collection(LineCollection([np.column_stack([xs, data[i]]) for i in rest], colors=COMPLETE_COLOR,
                                         alpha=alpha, linewidths=1.0, label=f"COMPLETE ({len(complete)})"))
        ax.add_collection(LineCollection([np.column_stack([xs, data[i]]) for i in front], colors=BEST_COLOR,
                                         alpha=0.9, linewidths=1.5, label=f"Pareto-optimal ({len(front)})"))
        ax.legend(loc="upper right", fontsize=8)
    for x, tk in zip(xs, ticks):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, text in tk:
            ax.text(x + 0.03, y, text, fontsize=7, va="center", ha="left",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xlim(-0.2, len(labels) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    drawn = f"{len(shown)} of {len(complete)}" if len(shown) < len(complete) else f"{len(complete)}"
    _title(fig, f"Parallel coordinates: {drawn} completed trials")
    return _save(fig, path)


def slice_plot(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *, directions: Sequence[str],
               names: Sequence[str], param_order: Sequence[str] = (), max_points: int = MAX_POINTS,
               max_params: int = MAX_PARAMS) -> Path:
    """Objective value against each parameter (one row of panels per objective, at most three),
    coloured by trial number so that where the sampler converged shows."""
    import matplotlib
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    complete = sorted(_complete(trials), key=lambda t: t.number)
    if not complete:
        raise NothingToPlot("no completed trial yet")
    n_obj = min(len(directions), 3)
    params = _param_names(complete, param_order)[: max_params if n_obj == 1 else max(1, max_params // n_obj)]
    if not params:
        raise NothingToPlot("the trials have no parameters")
    keep = _ranked(complete, directions[0])[:10]
    shown = sample_evenly(complete, max_points, keep=keep)
    ncols = min(4, len(params))
    rows_per_obj = math.ceil(len(params) / ncols)
    nrows = rows_per_obj * n_obj
    width, height = 3.0 * ncols + 1.2, 2.8 * nrows + 0.7
    fig = _figure(width, height, constrained=False)
    # Margins in inches, so that labels fit whatever the grid size.
    fig.subplots_adjust(left=0.75 / width, right=1 - 1.25 / width, bottom=0.6 / height, top=1 - 0.5 / height,
                        wspace=0.3, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    norm = matplotlib.colors.Normalize(complete[0].number, max(complete[-1].number, complete[0].number + 1))
    rng = np.random.default_rng(0)
    alpha = 0.8 if len(shown) < 300 else 0.4
    scatter = None
    for k in range(n_obj):
        for j in range(rows_per_obj * ncols):
            ax = axes[k * rows_per_obj + j // ncols][j % ncols]
            if j >= len(params):
                ax.set_visible(False)
                continue
            p = params[j]
            dist = _distribution(complete, p)
            have = [t for t in shown if p in t.params]
            ys = [t.values[k] for t in have]
            if dist is not None and _is_categorical(dist):
                xs = np.array([dist.to_internal_repr(t.params[p]) for t in have], dtype=float)
                xs += rng.uniform(-0.15, 0.15, size=len(xs))
                _categorical_axis(ax, [str(c) for c in dist.choices])
            else:
                xs = np.array([float(t.params[p]) for t in have])
                if _is_log(dist) and len(xs):
                    _sparse_log_axis(ax, float(xs.min()), float(xs.max()))
            scatter = ax.scatter(xs, np.array(ys, dtype=float), c=np.array([t.number for t in have], dtype=float),
                                 cmap=cmap, norm=norm, s=9,
                                 alpha=alpha, linewidths=0)
            if _use_log(ys):
                _log_scale(ax, "y")
            ax.set_xlabel(p, fontsize=8)
            if j % ncols == 0:
                ax.set_ylabel(_label(names[k], directions[k]), fontsize=8)
            ax.tick_params(which="both", labelsize=7)
            ax.grid(alpha=0.3)
    if scatter is not None:
        bar = fig.add_axes((1 - 1.0 / width, 0.6 / height, 0.15 / width, 1 - 1.1 / height))
        fig.colorbar(scatter, cax=bar, label="trial number").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = f"{len(shown)} of {len(complete)}" if len(shown) < len(complete) else f"{len(complete)}"
    _title(fig, f"Slice plot: {drawn} completed trials")
    return _save(fig, path)


def pareto_front(trials: Sequence[optuna.trial.FrozenTrial], path: Path, *, directions: Sequence[str],
                 names: Sequence[str], pareto: Collection[int], max_points: int = MAX_POINTS * 2) -> Path:
    """Every completed trial in objective space, the Pareto-optimal ones in red; one panel per pair
    of the first four objectives."""
    from itertools import combinations

    complete = sorted(_complete(trials), key=lambda t: t.number)
    if len(directions) < 2:
        raise NothingToPlot("a Pareto front needs two or more objectives")
    if not complete:
        raise NothingToPlot("no completed trial yet")
    pairs = list(combinations(range(min(len(directions), 4)), 2))
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = _figure(4.5 * ncols + 0.5, 4.2 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    front = sorted((t for t in complete if t.number in pareto), key=lambda t: t.values[0])
    rest = sample_evenly([t for t in complete if t.number not in pareto], max_points)
    for idx, ax in enumerate(axes.flat):
        if idx >= len(pairs):
            ax.set_visible(False)
            continue
        a, b = pairs[idx]
        ax.scatter([t.values[a] for t in rest], [t.values[b] for t in rest], s=10,
                   alpha=0.7 if len(rest) < 300 else 0.3, color=COMPLETE_COLOR, linewidths=0,
                   label=f"COMPLETE ({len(complete) - len(front)})")
        ax.scatter([t.values[a] for t in front], [t.values[b] for t in front], s=22, color=BEST_COLOR,
                   edgecolors="black", linewidths=0.4, label=f"Pareto-optimal ({len(front)})", zorder=3)
        if len(directions) == 2 and front:
            ax.plot([t.values[a] for t in front], [t.values[b] for t in front], color=BEST_COLOR,
                    linewidth=0.8, alpha=0.6)
        ax.set_xlabel(_label(names[a], directions[a]))
        ax.set_ylabel(_label(names[b], directions[b]))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    _title(fig, f"Pareto front: {len(front)} of {len(complete)} completed trials")
    return _save(fig, path)
