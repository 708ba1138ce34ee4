"""The predecessors' names and file rules: echo.src.*, aimlutils.hyper_opt.*, paths, reload."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from hyper_opt import compat
from hyper_opt.config import load_config
from hyper_opt.exceptions import ConfigError, MetricMissingError
from hyper_opt.loader import import_file, instantiate

from .conftest import write_search

AIMLUTILS_STYLE = textwrap.dedent('''
    from aimlutils.hyper_opt.base_objective import *
    from aimlutils.hyper_opt.utils import trial_suggest_loader, KerasPruningCallback

    def custom_updates(trial, conf):
        hyperparameters = conf["optuna"]["parameters"]
        conf["model"]["doubled"] = 2 * trial_suggest_loader(trial, hyperparameters["model:x"])
        conf["calls"] = conf.get("calls", 0) + 1
        return conf

    class Objective(BaseObjective):
        def __init__(self, study, config, metric="val_loss", device="cpu"):
            BaseObjective.__init__(self, study, config, metric, device)

        def train(self, trial, conf):
            conf = custom_updates(trial, conf)
            assert conf["calls"] == 1, "the predecessors never called custom_updates for the user"
            assert conf["model"]["doubled"] == 2 * trial.params["x"]
            x = conf["model"]["x"]
            results = {"val_loss": (x - 2) ** 2, "loss": abs(x)}
            return self.save(trial, results)
''')

ECHO_STYLE = textwrap.dedent('''
    from echo.src.base_objective import BaseObjective
    from echo.src.trial_suggest import trial_suggest_loader
    from echo.src.pruners import KerasPruningCallback

    class Objective(BaseObjective):
        def __init__(self, config, metric="val_loss"):
            BaseObjective.__init__(self, config, metric)

        def train(self, trial, conf):
            x = conf["model"]["x"]
            for step in range(3):
                trial.report((x - 2) ** 2 + 1.0 / (step + 1), step)
            return {"val_loss": (x - 2) ** 2}
''')


@pytest.fixture(autouse=True)
def _fresh_compat() -> Iterator[None]:
    compat.uninstall()
    yield
    compat.uninstall()


def _search(tmp_path: Path, objective: str, **optuna_keys: object):  # type: ignore[no-untyped-def]
    return write_search(tmp_path / "s", objective=objective, optuna={"n_trials": 4, **optuna_keys})


def test_predecessor_modules_resolve_to_hyper_opt_stand_ins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = _search(tmp_path, AIMLUTILS_STYLE)
    caplog.set_level("INFO")
    module = import_file(s.folder / "objective.py", what="objective file")
    assert issubclass(module.Objective, compat.aimlutils.BaseObjective)
    assert module.optuna is optuna and module.os is __import__("os"), "the star import brings what aimlutils had"
    assert "aimlutils.hyper_opt.base_objective" in caplog.text and "docs/migrating.md" in caplog.text
    assert compat.used() == ["aimlutils.hyper_opt.base_objective", "aimlutils.hyper_opt.utils"]
    # Nothing was installed: outside the finder the names do not exist on disk.
    assert not any(Path(p, "echo").exists() or Path(p, "aimlutils").exists() for p in sys.path if p)


def test_a_real_installed_package_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "site" / "echo" / "src"
    real.mkdir(parents=True)
    (real.parent / "__init__.py").write_text("REAL = True\n")
    (real / "__init__.py").write_text("")
    (real / "base_objective.py").write_text("class BaseObjective:\n    REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    compat.install()
    from echo.src.base_objective import BaseObjective  # type: ignore[import-not-found]

    assert getattr(BaseObjective, "REAL", False) and compat.used() == []
    for name in [n for n in sys.modules if n == "echo" or n.startswith("echo.")]:
        del sys.modules[name]


def test_trial_suggest_loader_returns_the_suggested_value_without_deprecated_calls() -> None:
    from hyper_opt.compat.echo import trial_suggest_loader

    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated suggest_loguniform call would raise here
        assert trial_suggest_loader(trial, {"type": "loguniform", "settings": {"name": "lr", "low": 1e-5,
                                                                               "high": 1e-1}}) == trial.params["lr"]
        value = trial_suggest_loader(trial, {"type": "discrete_uniform",
                                             "settings": {"name": "q", "low": 0.0, "high": 1.0, "q": 0.25}})
        n = trial_suggest_loader(trial, {"type": "int", "settings": {"name": "n", "low": 1, "high": 3}})
    assert value in (0.0, 0.25, 0.5, 0.75, 1.0) and isinstance(n, int)
    assert trial.distributions["q"] == optuna.distributions.FloatDistribution(0.0, 1.0, step=0.25)
    with pytest.raises(ConfigError, match="'bogus' is not valid"):
        trial_suggest_loader(trial, {"type": "bogus", "settings": {"name": "z"}})


def test_aimlutils_objective_runs_a_local_search_unchanged(tmp_path: Path) -> None:
    s = _search(tmp_path, AIMLUTILS_STYLE)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4, proc.stderr
    assert all(t.user_attrs["metrics"]["loss"] == abs(t.params["x"]) for t in study.trials), "save() kept the dict"
    assert len(list((s.save_path / "trials").glob("trial_*.csv"))) == 4
    logs = "".join(p.read_text() for p in (s.save_path / "logs").glob("worker_*.log"))
    assert "stand-ins for aimlutils.hyper_opt.base_objective" in logs


def test_save_names_a_missing_metric(tmp_path: Path) -> None:
    s = _search(tmp_path, AIMLUTILS_STYLE)
    config, model = load_config(s.hyper, s.model)
    objective = instantiate(config, model or {}, study=None, device="cpu")
    trial = optuna.create_study().ask()
    with pytest.raises(MetricMissingError, match="val_loss"):
        objective.save(trial, {"loss": 1.0})
    assert objective.save(trial, {"val_loss": 0.5}) == {"val_loss": 0.5}
    assert objective.results["val_loss"] == [0.5]


def test_echo_objective_with_pruning_runs_and_reports(tmp_path: Path) -> None:
    s = _search(tmp_path, ECHO_STYLE, pruner={"type": "MedianPruner", "n_startup_trials": 1})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    assert sum(t.state.is_finished() for t in study.trials) == 4
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


def test_keras_callback_tolerates_a_missing_metric_once(caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    from hyper_opt.compat.echo import KerasPruningCallback

    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    callback = KerasPruningCallback(trial, "val_accuracy", 2)
    for epoch in range(4):
        callback.on_epoch_end(epoch, {"loss": 1.0})
    assert caplog.text.count("'val_accuracy' is not in the epoch logs") == 1
    for epoch in range(4):
        callback.on_epoch_end(epoch, {"val_accuracy": 0.1 * epoch})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.1, 3: pytest.approx(0.3)}


def _echo_file(folder: Path, *, reload: int | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "objective.py").write_text(ECHO_STYLE)
    (folder / "model.yml").write_text(yaml.safe_dump({"model": {"x": 0.0}}))
    opt = {"study_name": "echo-study", "storage": "echo.db", "storage_type": "sqlite",
           "objective": "objective.py", "metric": "val_loss", "direction": "minimize", "n_trials": 3,
           "sampler": {"type": "RandomSampler", "seed": 3},
           "parameters": {"model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}}}}
    if reload is not None:
        opt["reload"] = reload
    (folder / "hyper.yml").write_text(yaml.safe_dump({"log": True, "save_path": "./data", "optuna": opt}))
    return folder / "hyper.yml"


def test_echo_files_continue_their_study_by_default(tmp_path: Path) -> None:
    from .conftest import Search

    hyper = _echo_file(tmp_path / "e", reload=None)
    s = Search(folder=hyper.parent, hyper=hyper, model=hyper.parent / "model.yml")
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    s.rewrite_hyper(lambda h: h["optuna"].update(n_trials=5))
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert "continued, as echo-opt did" in proc.stderr
    study = optuna.load_study(study_name="echo-study", storage=f"sqlite:///{hyper.parent / 'data' / 'echo.db'}")
    assert sorted(t.number for t in study.trials) == list(range(5))


def test_reload_never_starts_a_study_it_cannot_find(tmp_path: Path) -> None:
    from .conftest import Search

    hyper = _echo_file(tmp_path / "project" / "configs", reload=1)
    s = Search(folder=hyper.parent, hyper=hyper, model=hyper.parent / "model.yml")
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no study 'echo-study'" in proc.stderr and str(hyper.parent / "data" / "echo.db") in proc.stderr
    assert "does not exist" in proc.stderr and "Nothing was created" in proc.stderr
    assert not (hyper.parent / "data" / "echo.db").exists()


def test_duplicate_names_and_gpu_model_names_are_accepted_aloud(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    s = _search(tmp_path, ECHO_STYLE, gpu="v100", parameters={
        "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
        "model:y": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}}})
    s.model.write_text(yaml.safe_dump({"model": {"x": 0.0, "y": 0.0}}))
    config, model = load_config(s.hyper, s.model)
    assert config.optuna.gpu is True and "'v100' is read as true" in caplog.text
    assert [p.key for p in config.optuna.parameters] == ["model:x", "model:y"]
    assert "both get the same value" in caplog.text
    study = optuna.create_study()
    trial = study.ask()
    objective = instantiate(config, model or {}, study=study, device="cpu")
    conf = objective.update_config(trial)
    assert conf["model"]["x"] == conf["model"]["y"] == trial.params["x"]
    # Different settings under one name cannot share a value: that is refused.
    s.rewrite_hyper(lambda h: h["optuna"]["parameters"]["model:y"]["settings"].update(high=9.0))
    with pytest.raises(ConfigError, match="optuna:parameters:model:y:settings:name"):
        load_config(s.hyper, s.model)


def test_config_and_model_problems_come_in_one_round(tmp_path: Path) -> None:
    objective = textwrap.dedent('''
        from hyper_opt import BaseObjective

        class Objective(BaseObjective):
            @staticmethod
            def validate_config(model):
                return [] if model.get("ok") else ["ok: must be true"]

            def train(self, trial, conf):
                return {"val_loss": 0.0}
    ''')
    from hyper_opt.loader import load_config as load_checked  # the objective's validate_config runs there

    s = write_search(tmp_path / "s", objective=objective, optuna={"n_trials": -3})
    with pytest.raises(ConfigError) as info:
        load_checked(s.hyper, s.model)
    message = str(info.value)
    assert "optuna:n_trials" in message and "ok: must be true" in message
    assert str(s.hyper) in message and str(s.model) in message


def test_report_takes_the_model_file_as_echo_report_did(tmp_path: Path) -> None:
    s = _search(tmp_path, ECHO_STYLE)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    proc = s.cli("report", "hyper.yml", "-m", "model.yml", "--no-plots", check=True)
    assert (s.save_path / "report" / "best.yml").exists(), proc.stderr


def test_aimlutils_echo_layout_resolves_too(tmp_path: Path) -> None:
    """aiml-utils between the two eras: ``from aimlutils.echo.src.base_objective import BaseObjective``."""
    (tmp_path / "obj.py").write_text("from aimlutils.echo.src.base_objective import BaseObjective\n"
                                     "from aimlutils.echo.src.trial_suggest import trial_suggest_loader\n")
    module = import_file(tmp_path / "obj.py", what="objective file")
    assert module.BaseObjective is compat.echo.BaseObjective
    assert "aimlutils.echo.src.base_objective" in compat.used()


def test_list_results_are_kept_as_json_text() -> None:
    from hyper_opt.objective import _jsonable

    assert _jsonable([0.5, 0.25]) == "[0.5, 0.25]" and _jsonable((1, 2)) == "[1, 2]"
    assert _jsonable([object()]) is None


def test_read_only_commands_neither_lock_nor_enqueue(tmp_path: Path) -> None:
    """status, report and rerun read the study: no budget lock file, no enqueued trial appears."""
    s = _search(tmp_path, ECHO_STYLE, enqueue=[{"x": 1.5}])
    name = s.hyper_config()["optuna"]["study_name"]
    s.save_path.mkdir(parents=True)
    db = s.save_path / "hyper_opt.db"
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{db}")  # made elsewhere, never enqueued
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, value=2.25,
                                              distributions={"x": optuna.distributions.FloatDistribution(-5, 5)}))
    s.cli("status", "hyper.yml", check=True)
    s.cli("report", "hyper.yml", "model.yml", "--no-plots", check=True)
    assert len(optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials) == 1, "nothing enqueued"
    assert not list(s.save_path.glob("*.lock")), "no budget lock taken"


def test_echo_opt_old_trials_per_job_is_tasks_per_worker(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", extra={"pbs": {"trials_per_job": 2, "gpus_per_node": 1,
                                                    "batch": {"l": ["select=1:ngpus=1", "walltime=01:00:00"]}}})
    config, _ = load_config(s.hyper, s.model)
    assert config.pbs is not None and config.pbs.tasks_per_worker == 2
    s.rewrite_hyper(lambda h: h["pbs"].update(tasks_per_worker=2))
    with pytest.raises(ConfigError, match="pbs:trials_per_job"):
        load_config(s.hyper, s.model)
