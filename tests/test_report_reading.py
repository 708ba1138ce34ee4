"""The report's bulk trial reader gives exactly what optuna's own reader gives.

One study per storage (SQLite and the local PostgreSQL) with every trial state, every kind of
distribution, user and system attributes, non-finite values and intermediate values, single and
multi-objective, read in a time zone other than UTC (optuna stores naive UTC and shows local
time). Every field of every ``FrozenTrial`` is compared, so that a field the bulk reader drops or
mangles fails here.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hyper_opt.report import reading
from hyper_opt.report.reading import read_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def not_utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TZ", "America/Denver")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _fill(study: optuna.Study) -> None:
    multi = len(study.directions) > 1
    dists = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "drop": FloatDistribution(0.0, 0.5, step=0.1),
             "units": IntDistribution(16, 1024, log=True), "layers": IntDistribution(1, 6, step=1),
             "act": CategoricalDistribution(["relu", "tanh", None, 3, 2.5, True])}

    def values(i: int) -> list[float]:
        return [0.5 + i / 10, 10.0 - i][: 2 if multi else 1]

    for i in range(6):  # COMPLETE with curves, attributes, every categorical choice
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("drop", 0.0, 0.5, step=0.1)
        trial.suggest_int("units", 16, 1024, log=True)
        if i % 2:
            trial.suggest_int("layers", 1, 6)  # a conditional parameter
        act = ["relu", "tanh", None, 3, 2.5, True][i]
        trial.suggest_categorical("act", ["relu", "tanh", None, 3, 2.5, True])
        trial.set_user_attr("hostname", f"node{i}")
        trial.set_user_attr("metrics", {"val_loss": 0.1 * i, "nested": [1, {"a": None}], "act": act})
        trial.storage.set_trial_system_attr(trial._trial_id, "hyper_opt:note", [i, "x"])
        if not multi:
            for step in range(4):
                trial.report(1.0 / (step + 1) + i, step)
        study.tell(trial, values(i))
    # non-finite values and intermediate values, as optuna stores them
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[math.inf, -math.inf][: 2 if multi else 1],
        params={"lr": 1e-3, "act": None}, distributions={"lr": dists["lr"], "act": dists["act"]},
        intermediate_values={} if multi else {0: math.nan, 1: math.inf, 2: -math.inf, 3: 0.25},
        user_attrs={"unicode": "é ✓", "empty": {}}))
    if not multi:  # PRUNED with its last value (optuna only prunes single-objective studies)
        trial = study.ask({"lr": dists["lr"]})
        trial.report(0.9, 0)
        trial.report(0.8, 3)
        study.tell(trial, state=TrialState.PRUNED)
    trial = study.ask({"units": dists["units"]})  # FAIL with a traceback
    trial.set_user_attr("error", "Traceback (most recent call last):\n  ...\nValueError: boom\n")
    study.tell(trial, state=TrialState.FAIL)
    retried = study.ask({"units": dists["units"]})  # RUNNING, a retry of the failed one
    retried.storage.set_trial_system_attr(retried._trial_id, "failed_trial", trial.number)
    if not multi:
        retried.report(3.0, 0)
    study.enqueue_trial({"lr": 0.01, "act": "tanh"})  # WAITING
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=values(9), params={},
                                              distributions={}))  # no parameters at all


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if type(x) is not type(y):
        return False
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(v, y[k]) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return bool(x == y)


def _assert_same_trials(mine: list[optuna.trial.FrozenTrial], theirs: list[optuna.trial.FrozenTrial]) -> None:
    assert [t.number for t in mine] == [t.number for t in theirs]
    for a, b in zip(mine, theirs):
        fields_a, fields_b = vars(a), vars(b)  # every attribute of FrozenTrial, whatever optuna adds
        assert fields_a.keys() == fields_b.keys()
        for name, value in fields_b.items():
            assert _same(fields_a[name], value), (a.number, name, fields_a[name], value)
        assert list(a.params) == list(b.params)  # optuna orders them as suggested; trials.csv follows


def _check_storage(url: str, directions: list[str], caplog: pytest.LogCaptureFixture) -> None:
    storage = optuna.storages.RDBStorage(url)
    name = f"reading-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    try:
        _fill(study)
        theirs = storage.get_all_trials(study._study_id, deepcopy=False)
        assert {t.state for t in theirs} >= {TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                             TrialState.WAITING}
        with caplog.at_level(logging.WARNING, logger="hyper_opt.report.reading"):
            mine = read_trials(storage, study._study_id)
        assert not caplog.text  # read in bulk: no fallback onto optuna's reader hid a difference
        _assert_same_trials(mine, theirs)
        # a subset of states, and only some parts
        running = read_trials(storage, study._study_id, states=[TrialState.RUNNING], parts=("user_attrs",))
        want = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
        assert [t.number for t in running] == [t.number for t in want]
        assert [t.user_attrs for t in running] == [t.user_attrs for t in want]
        assert all(not t.params and t.values is None and not t.intermediate_values for t in running)
        assert read_trials(storage, study._study_id, states=[]) == []
    finally:
        optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


@pytest.mark.parametrize("directions", [["minimize"], ["minimize", "maximize"]], ids=["single", "multi"])
def test_bulk_reader_matches_optuna_on_sqlite(tmp_path: Path, directions: list[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    _check_storage(f"sqlite:///{tmp_path / 'study.db'}", directions, caplog)


@pytest.mark.parametrize("directions", [["maximize"], ["minimize", "minimize"]], ids=["single", "multi"])
def test_bulk_reader_matches_optuna_on_postgresql(pg_url: str, directions: list[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    _check_storage(pg_url, directions, caplog)


def test_a_mangled_reading_is_caught_and_optuna_reads_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The runtime check on the last finished trial: datetimes read as UTC (as if optuna stopped
    storing UTC) differ from optuna's, and the report falls back to optuna's reader."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage)
    _fill(study)
    monkeypatch.setattr(reading, "_local", lambda value: value)
    with caplog.at_level(logging.WARNING, logger="hyper_opt.report.reading"):
        trials = read_trials(storage, study._study_id)
    assert "reads differently from optuna's get_trial" in caplog.text
    _assert_same_trials(trials, storage.get_all_trials(study._study_id, deepcopy=False))


def test_other_storages_and_other_schemas_use_optuna(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = optuna.create_study()
    _fill(memory)
    _assert_same_trials(read_trials(memory._storage, memory._study_id),
                        memory._storage.get_all_trials(memory._study_id, deepcopy=False))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage)
    _fill(study)
    import sqlalchemy

    with storage.engine.begin() as conn:  # a schema that does not answer the bulk SELECTs
        conn.execute(sqlalchemy.text("ALTER TABLE trial_user_attributes RENAME COLUMN value_json TO value_text"))
    with pytest.raises(Exception):  # noqa: B017 - optuna cannot read it either
        storage.get_all_trials(study._study_id)
    with pytest.raises(Exception):  # noqa: B017 - so the fallback is what raises, not the bulk read
        read_trials(storage, study._study_id)
    with pytest.raises(ValueError, match="parts must be among"):
        read_trials(storage, study._study_id, parts=("values", "curves"))
