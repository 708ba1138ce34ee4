"""What the two predecessors' objective APIs share: the base-class extras and the suggest helper."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from hyper_opt import space
from hyper_opt.schema import PARAM_SETTINGS, ParameterSpec
from hyper_opt.exceptions import ConfigError, MetricMissingError
from hyper_opt.objective import BaseObjective

logger = logging.getLogger("hyper_opt.compat")

supported_trials = list(PARAM_SETTINGS)


def trial_suggest_loader(trial: Any, config: Mapping[str, Any]) -> Any:
    """The value of the parameter described by ``config`` (``{type, settings}``).

    hyper_opt suggests every parameter of the hyperparameter file before ``train`` runs, so this
    returns the value already suggested for that name; a parameter that is not in the file is
    suggested here, with optuna's current API (``suggest_float(log=..., step=...)``) in place of
    the deprecated ``suggest_uniform``/``suggest_loguniform``/``suggest_discrete_uniform``.
    """
    if not isinstance(config, Mapping) or "type" not in config or not isinstance(config.get("settings"), Mapping):
        raise ConfigError([f"trial_suggest_loader: expected a mapping with 'type' and 'settings', got {config!r}"])
    ptype = config["type"]
    if ptype not in PARAM_SETTINGS:
        raise ConfigError([f"trial_suggest_loader: type {ptype!r} is not valid; allowed: {', '.join(PARAM_SETTINGS)}"])
    settings = dict(config["settings"])
    name = settings.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError([f"trial_suggest_loader: settings need a 'name', got {config['settings']!r}"])
    params = getattr(trial, "params", {})
    value = params[name] if name in params else space.suggest(
        trial, ParameterSpec(key=name, type=ptype, name=name, settings=settings))
    if ptype == "int":
        return int(value)
    if ptype in ("float", "uniform", "loguniform"):
        return float(value)
    return value


class LegacyObjective(BaseObjective):
    """hyper_opt's BaseObjective with the predecessors' extras (``save``, ``results``).

    The predecessors never called a module-level ``custom_updates`` themselves (their users call
    it inside ``train``), so objectives built on these classes do not get it called for them.
    """

    auto_custom_updates = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: defaultdict[str, list[Any]] = defaultdict(list)
        self.worker_index: int | None = None

    def save(self, trial: Any, results_dict: Any) -> Any:
        """Check that ``results_dict`` holds the metric(s) and keep the row in ``self.results``.

        Returns ``results_dict``, so that ``return self.save(trial, results)`` at the end of
        ``train`` works. hyper_opt writes each trial's row itself (``trials/trial_N.csv`` and
        ``trials.csv``, with the parameters, every returned metric and the state), so no extra
        CSV file is written here.
        """
        self.values(results_dict)  # MetricMissingError names the missing metric
        self.results["trial"].append(trial.number)
        for param, value in getattr(trial, "params", {}).items():
            self.results[param].append(value)
        for metric, value in results_dict.items():
            self.results[metric].append(value)
        logger.debug("trial %s: results %s", trial.number, dict(results_dict))
        return results_dict

    def values(self, results: Any) -> float | list[float]:
        if not isinstance(results, Mapping):
            raise MetricMissingError(
                f"train() must return a dict holding {list(self._metrics)} (with the predecessors' "
                f"classes too: 'return self.save(trial, results)' returns it), got "
                f"{type(results).__name__}: {results!r:.200}")
        return super().values(results)
