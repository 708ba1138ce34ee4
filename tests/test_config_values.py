"""Values the config holds that used to pass unchecked or be reported wrongly: enqueued trials
against the search space, and one invalid heartbeat_interval reported once, as itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError

from .conftest import write_search

PARAMETERS = {
    "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
    "model:units": {"type": "int", "settings": {"name": "units", "low": 8, "high": 64, "step": 8}},
    "model:act": {"type": "categorical", "settings": {"name": "act", "choices": ["relu", "tanh", 1]}},
    "model:lr": {"type": "loguniform", "settings": {"name": "lr", "low": 1e-5, "high": 1e-1}},
}
MODEL = {"model": {"x": 0.0, "units": 8, "act": "relu", "lr": 0.01}}


def _problems(tmp_path: Path, **optuna: object) -> str:
    s = write_search(tmp_path / "s", model=MODEL, optuna={"parameters": PARAMETERS, **optuna})
    with pytest.raises(ConfigError) as caught:
        load_config(s.hyper, s.model)
    return str(caught.value)


@pytest.mark.parametrize("name, value, why", [
    ("x", 99.0, "99.0 is outside the range [-5.0, 5.0]"),
    ("x", "abc", "must be a number, got 'abc'"),
    ("x", None, "must be a number, got None"),
    ("units", 12, "12 is not low + a multiple of the step"),
    ("units", 8.0, "must be an integer, got 8.0"),
    ("units", 128, "128 is outside the range [8, 64]"),
    ("act", "gelu", "'gelu' is not one of the choices"),
    ("act", True, "True is not one of the choices"),
    ("lr", 0.5, "0.5 is outside the range [1e-05, 0.1]"),
])
def test_an_enqueued_value_outside_the_search_space_is_refused_up_front(tmp_path: Path, name: str,
                                                                         value: object, why: str) -> None:
    message = _problems(tmp_path, enqueue=[{"x": 1.0}, {name: value}])
    assert f"optuna:enqueue:1:{name}: {why}" in message, message
    assert "hyper.yml" in message and "enqueue:0" not in message


def test_enqueued_values_inside_the_search_space_load(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", model=MODEL, optuna={"parameters": PARAMETERS, "enqueue": [
        {"x": -5, "units": 64, "act": 1, "lr": 1e-5}, {"x": 4.5, "units": 16, "act": "tanh"}]})
    config, _ = load_config(s.hyper, s.model)
    assert len(config.optuna.enqueue) == 2


def test_an_enqueue_out_of_range_creates_nothing(tmp_path: Path) -> None:
    """Through the CLI: one message, exit 2, no study (optuna would have run x=99 as it is)."""
    s = write_search(tmp_path / "s", optuna={"enqueue": [{"x": 99}]})
    proc = s.cli("optimize", "hyper.yml", "model.yml", timeout=120)
    assert proc.returncode == 2 and "optuna:enqueue:0:x: 99 is outside the range [-5.0, 5.0]" in proc.stderr
    assert not (s.save_path / "hyper_opt.db").exists() and "Traceback" not in proc.stderr


def test_a_negative_heartbeat_interval_is_the_only_problem_reported(tmp_path: Path) -> None:
    message = _problems(tmp_path, heartbeat_interval=-5, grace_period=6)
    assert "optuna:heartbeat_interval: must be an integer >= 1, got -5" in message
    assert "grace_period" not in message, message
    # A grace period shorter than a valid interval is still a problem of its own.
    message = _problems(tmp_path / "b", heartbeat_interval=10, grace_period=6)
    assert "optuna:grace_period: must be longer than heartbeat_interval (10), got 6" in message
