"""Colon paths and parameter suggestion."""

from __future__ import annotations

import optuna
import pytest

from hyper_opt.config import ParameterSpec
from hyper_opt.space import get_path, has_path, patch, set_path, suggest

MODEL = {"optimizer": {"learning_rate": 0.1}, "layers": [{"units": 8}, {"units": 16}], "depth": 3, "flag": True}


def test_get_and_has_path_through_mappings_and_lists() -> None:
    assert get_path(MODEL, ("optimizer", "learning_rate")) == 0.1
    assert get_path(MODEL, ("layers", "1", "units")) == 16
    assert get_path(MODEL, ("layers", "-1", "units")) == 16
    assert has_path(MODEL, ("depth",))
    assert not has_path(MODEL, ("optimizer", "lr"))
    assert not has_path(MODEL, ("layers", "2", "units"))
    assert not has_path(MODEL, ("layers", "x"))
    assert not has_path(MODEL, ("depth", "deeper"))


def test_yaml_integer_keys_are_reached_by_text_paths() -> None:
    conf = {"blocks": {0: {"width": 4}}}
    assert get_path(conf, ("blocks", "0", "width")) == 4
    set_path(conf, ("blocks", "0", "width"), 9)
    assert conf == {"blocks": {0: {"width": 9}}}


def test_patch_changes_a_deep_copy_only_where_paths_exist() -> None:
    specs = [
        ParameterSpec("optimizer:learning_rate", "float", "lr", {"low": 0.0, "high": 1.0}),
        ParameterSpec("layers:0:units", "int", "units0", {"low": 1, "high": 64}),
        ParameterSpec("num_dense", "int", "num_dense", {"low": 0, "high": 10}),
    ]
    out = patch(MODEL, specs, {"lr": 0.5, "units0": 32, "num_dense": 4})
    assert out["optimizer"]["learning_rate"] == 0.5
    assert out["layers"][0]["units"] == 32
    assert "num_dense" not in out
    assert MODEL["optimizer"]["learning_rate"] == 0.1 and MODEL["layers"][0]["units"] == 8


@pytest.mark.parametrize(
    ("ptype", "settings", "expected"),
    [
        ("float", {"low": 0.0, "high": 1.0}, optuna.distributions.FloatDistribution(0.0, 1.0)),
        ("float", {"low": 1e-3, "high": 1.0, "log": True}, optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)),
        ("float", {"low": 0.0, "high": 1.0, "step": 0.25}, optuna.distributions.FloatDistribution(0.0, 1.0, step=0.25)),
        ("uniform", {"low": 0.0, "high": 2.0}, optuna.distributions.FloatDistribution(0.0, 2.0)),
        ("loguniform", {"low": 1e-7, "high": 1e-2}, optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True)),
        ("discrete_uniform", {"low": 0.0, "high": 1.0, "q": 0.5},
         optuna.distributions.FloatDistribution(0.0, 1.0, step=0.5)),
        ("int", {"low": 1, "high": 9, "step": 2}, optuna.distributions.IntDistribution(1, 9, step=2)),
        ("int", {"low": 1, "high": 64, "log": True}, optuna.distributions.IntDistribution(1, 64, log=True)),
        ("categorical", {"choices": ["adam", "sgd"]}, optuna.distributions.CategoricalDistribution(["adam", "sgd"])),
    ],
)
def test_each_parameter_type_maps_onto_a_current_distribution(ptype: str, settings: dict, expected: object) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    spec = ParameterSpec(key="k", type=ptype, name="p", settings=settings)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated suggest_* call
        value = suggest(trial, spec)
    assert trial.distributions["p"] == expected
    assert expected._contains(expected.to_internal_repr(value))  # type: ignore[attr-defined]
