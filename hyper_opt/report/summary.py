"""Rendering a report: summary.md (Markdown tables) and the short text the command prints."""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hyper_opt.report.cost import cost_section
from hyper_opt.report.dashboard import dashboard_command
from hyper_opt.report.files import BEST, BEST_PATTERN, SUMMARY, TRIALS_CSV, Report
from hyper_opt.trials import StateStats, finite_complete, pruning_saving

if TYPE_CHECKING:
    import optuna

    from hyper_opt.schema import HyperConfig

MAX_TABLE_ROWS = 20  # rows of the best-trials and failure tables in summary.md


MAX_TABLE_PARAMS = 8  # parameter columns in those tables


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


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
        top = sorted(finite_complete(trials), key=lambda t: (sign * t.values[0], t.number))[:10]
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
    lines += ["", "## GPU-hours", ""]
    lines += cost_section(trials, directions=directions, spec=spec, study_attrs=report.study_attrs)
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

