"""``hyper-opt rerun HYPER.yml MODEL.yml --trial N``: run the objective once, outside the study.

For debugging a failed trial or retraining a good one. The trial's parameters are read from the
study and fed through the same path a worker uses (suggest, patch the model config,
``custom_updates``, ``train``) with an ``optuna.trial.FixedTrial``, which records nothing: the
study gains no trial, ``report`` is a no-op and nothing is pruned. ``--set`` overrides apply as
usual, e.g. ``--set train:epochs=100`` to train the winner longer. The dict ``train`` returned is
printed as one line of JSON on stdout; how it compares with what the study recorded goes to
stderr.

The objective's ``save_path`` (where it writes models, and where ``save_checkpoint`` and
``load_checkpoint`` keep checkpoints) is a new folder, ``<save_path>/rerun/trial_<N>`` (``_2``,
``_3``, ... when that exists): a rerun never overwrites the study's own files and never resumes
from the recorded trial's checkpoint. ``--save-path DIR`` chooses the folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper_opt.cli.common import add_common_arguments
from hyper_opt.exceptions import ConfigError

if TYPE_CHECKING:
    import optuna

    from hyper_opt.schema import HyperConfig

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1


def _trial_arg(text: str) -> int | str:
    if text == "best":
        return text
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a trial number (>= 0) or 'best', got {text!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="required")
    parser.add_argument("--trial", required=True, type=_trial_arg, metavar="N|best",
                        help="the trial whose parameters to use ('best': the best completed trial of a "
                             "single-objective study)")
    parser.add_argument("--device", help="the device given to the objective (default: as a worker picks it, "
                                         "cuda:0 with exactly one visible GPU, else cpu)")
    parser.add_argument("--save-path", type=Path, metavar="DIR",
                        help="the objective's save_path for this run (default: a new save_path/rerun/trial_N); "
                             "a checkpoint already there is resumed by load_checkpoint")
    parser.add_argument("--pdb", action="store_true", help="open the debugger where train() raised")


@dataclass
class Rerun:
    """One run of the objective with a recorded trial's parameters."""

    trial: optuna.trial.FrozenTrial  # the trial as the study recorded it
    save_path: Path  # the objective's save_path in this run
    values: list[float] = field(default_factory=list)  # the objective value(s) of this run
    metrics: dict[str, Any] = field(default_factory=dict)  # everything train() returned (JSON-able)


def find_trial(config: HyperConfig, trials: Sequence[optuna.trial.FrozenTrial], which: int | str,
               directions: Sequence[str]) -> optuna.trial.FrozenTrial:
    """The trial ``--trial`` names, or a ConfigError saying which ones exist."""
    from hyper_opt.trials import best_trials

    if which == "best":
        best = best_trials(trials, directions)
        if not best:
            raise ConfigError(["--trial best: no trial has completed yet"], source="the command line")
        if len(best) > 1:
            numbers = ", ".join(str(t.number) for t in best[:30])
            raise ConfigError([f"--trial best: a multi-objective study has no single best trial; its "
                               f"Pareto-optimal trials are {numbers}{' ...' if len(best) > 30 else ''}"],
                              source="the command line")
        return best[0]
    by_number = {t.number: t for t in trials}
    if which not in by_number:
        span = f"trials 0 to {max(by_number)}" if by_number else "no trials"
        raise ConfigError([f"--trial {which}: study {config.optuna.study_name!r} has {span}"],
                          source="the command line")
    trial = by_number[int(which)]
    missing = [p.name for p in config.optuna.parameters if p.name not in trial.params]
    if missing:
        why = ("it has not started yet" if trial.state.name == "WAITING" else
               "it stopped before suggesting them, or the hyperparameter file changed since")
        raise ConfigError([f"--trial {which}: trial {trial.number} ({trial.state.name}) has no value for "
                           f"{', '.join(missing)}: {why}"], source="the command line")
    return trial


def fresh_folder(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name_2``, ``_3``, ... : the first that does not exist yet."""
    path, k = base / name, 1
    while path.exists():
        k += 1
        path = base / f"{name}_{k}"
    return path


def rerun(config: HyperConfig, model: Mapping[str, Any], *, trial: int | str, device: str | None = None,
          save_path: Path | None = None) -> Rerun:
    """Run the objective once with the parameters of ``trial`` (a number or ``"best"``).

    The study is only read; exceptions from ``train`` propagate to the caller.
    """
    import dataclasses

    import optuna

    from hyper_opt.loader import instantiate
    from hyper_opt.objective import trial_device
    from hyper_opt.study import read_study

    opened = read_study(config)
    try:
        trials = opened.storage.get_all_trials(opened.study_id, deepcopy=False)
        directions = [d.name.lower() for d in opened.study.directions]
    finally:
        opened.lock.close()  # training may take hours: hold nothing meanwhile
    recorded = find_trial(config, trials, trial, directions)
    if device is None:
        device = trial_device(config.optuna.gpu)
    if save_path is None:
        save_path = fresh_folder(config.save_path / "rerun", f"trial_{recorded.number}")
    save_path = save_path.expanduser().resolve()
    save_path.mkdir(parents=True, exist_ok=True)
    # Only the objective's save_path changes: the storage path was resolved when the config loaded.
    objective = instantiate(dataclasses.replace(config, save_path=save_path), model, study=opened.study,
                            device=device)
    fixed = optuna.trial.FixedTrial(dict(recorded.params), number=recorded.number)
    logger.info("rerunning trial %d (%s) on %s with %s; its files go to %s", recorded.number,
                recorded.state.name, device, recorded.params, save_path)
    result = objective(fixed)  # type: ignore[arg-type]  # FixedTrial is optuna's stand-in for a Trial
    values = [float(v) for v in (result if isinstance(result, Sequence) else [result])]
    return Rerun(trial=recorded, save_path=save_path, values=values,
                 metrics=dict(fixed.user_attrs.get("metrics") or {}))


def comparison(config: HyperConfig, result: Rerun) -> str:
    """How this run's value(s) compare with what the study recorded for the trial."""
    t = result.trial
    names = config.optuna.metrics
    now = ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, result.values))
    if t.state.name == "COMPLETE" and t.values:
        same = all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(t.values, result.values))
        before = ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, t.values))
        verdict = "the same" if same else "different (a non-deterministic objective, or changed code/data/--set?)"
        return f"trial {t.number} recorded {before}; this run {now}: {verdict}"
    if t.state.name == "PRUNED":
        step = max(t.intermediate_values) if t.intermediate_values else None
        return (f"trial {t.number} was pruned{f' after step {step}' if step is not None else ''}; "
                f"this run trained to the end: {now}")
    if t.state.name == "FAIL":
        from hyper_opt.report.summary import error_line

        error = error_line(t.user_attrs.get("error") or "") or "no error recorded"
        return f"trial {t.number} failed ({error}); this run completed: {now}"
    return f"trial {t.number} is {t.state.name}; this run: {now}"


def run(args: argparse.Namespace) -> int:
    from hyper_opt.cli.common import setup_logging, load_from_args
    from hyper_opt.exceptions import HyperOptError

    config, model = load_from_args(args)
    setup_logging(config.log_level, debug=args.debug)
    try:
        result = rerun(config, model or {}, trial=args.trial, device=args.device, save_path=args.save_path)
    except (HyperOptError, KeyboardInterrupt):
        raise
    except Exception as err:
        # train() raised: that is what a rerun of a failed trial is for, so show all of it.
        traceback.print_exc()
        print(f"hyper-opt rerun: train() raised {type(err).__name__}: {err}", file=sys.stderr)
        if args.pdb:
            import pdb

            pdb.post_mortem(err.__traceback__)
        return EXIT_FAILED
    print(f"{comparison(config, result)}\nthe objective's files: {result.save_path}", file=sys.stderr)
    print(json.dumps(result.metrics, default=str))
    return EXIT_OK
