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

from .conftest import FAST_OBJECTIVE as FAST_OBJECTIVE_TEXT
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


# --------------------------------------------------------------------------- user code at the edges (issues 21, 22)

def _echo_search(tmp_path: Path, objective: str, **optuna_keys: object):  # type: ignore[no-untyped-def]
    """An echo-opt format search (no hyper_opt-only key), as echo-opt users write it."""
    from .conftest import Search

    folder = tmp_path / "e"
    hyper = _echo_file(folder, reload=0)
    (folder / "objective.py").write_text(objective)
    data = yaml.safe_load(hyper.read_text())
    data["optuna"].update(optuna_keys)
    hyper.write_text(yaml.safe_dump(data, sort_keys=False))
    return Search(folder=folder, hyper=hyper, model=folder / "model.yml")


def _study(s, name: str = "echo-study"):  # type: ignore[no-untyped-def]
    return optuna.load_study(study_name=name, storage=f"sqlite:///{s.folder / 'data' / 'echo.db'}")


@pytest.mark.parametrize("code", [0, 4])
def test_sys_exit_at_import_is_reported_naming_the_objective(tmp_path: Path, code: int) -> None:
    s = _search(tmp_path, f"import sys\nsys.exit({code})\n" + ECHO_STYLE)
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert str(s.folder / "objective.py") in proc.stderr and f"called sys.exit({code})" in proc.stderr
    assert "__main__" in proc.stderr and not s.save_path.exists(), "nothing may be created"


def test_a_module_level_argparse_is_named_as_the_objectives(tmp_path: Path) -> None:
    s = _search(tmp_path, "import argparse\nparser = argparse.ArgumentParser()\n"
                          "parser.add_argument('-c', dest='model_config', required=True)\n"
                          "args = parser.parse_args()\n" + ECHO_STYLE)
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "usage:" in proc.stderr, proc.stderr
    assert str(s.folder / "objective.py") in proc.stderr and "module-level argparse" in proc.stderr
    assert "not hyper-opt's" in proc.stderr and not s.save_path.exists()


def test_sys_exit_in_train_fails_that_trial_and_the_worker_goes_on(tmp_path: Path) -> None:
    objective = ECHO_STYLE.replace('        x = conf["model"]["x"]\n',
                                   '        x = conf["model"]["x"]\n'
                                   '        if trial.number == 1:\n'
                                   '            import sys\n'
                                   '            sys.exit(3)\n')
    assert "sys.exit(3)" in objective
    s = _search(tmp_path, objective, max_consecutive_failures=3)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    by_number = {t.number: t for t in study.trials}
    assert by_number[1].state == optuna.trial.TrialState.FAIL
    assert "sys.exit(3)" in by_number[1].user_attrs["error"] and "exit code 3" in by_number[1].user_attrs["error"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state.name) for t in study.trials]
    pids = {t.user_attrs["worker_pid"] for t in study.trials}
    assert len(pids) == 1, f"one worker ran every trial (it went on after sys.exit): {pids}"


PROBE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            found = []
            for name in ("echo", "aimlutils"):
                try:
                    __import__(name)
                    found.append(name)
                except ImportError:
                    pass
            return {"val_loss": float(len(found)), "found": ",".join(found) or "none"}
''')


def test_a_plain_objective_never_sees_the_predecessors_names(tmp_path: Path) -> None:
    s = _search(tmp_path, PROBE, n_trials=2)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    assert [t.user_attrs["metrics"]["found"] for t in study.trials] == ["none", "none"]
    # In process too: importing a plain objective installs nothing.
    import_file(s.folder / "objective.py", what="objective file")
    assert not compat.installed()
    with pytest.raises(ImportError):
        __import__("echo")


def test_lazy_and_helper_imports_of_the_names_are_answered(tmp_path: Path) -> None:
    """An import inside train (found by reading the file) and one in a helper module the objective
    imports (found when it fails) both get the stand-ins."""
    lazy = ECHO_STYLE.replace("from echo.src.trial_suggest import trial_suggest_loader\n", "").replace(
        '        x = conf["model"]["x"]\n',
        '        from echo.src.trial_suggest import trial_suggest_loader\n'
        '        x = conf["model"]["x"]\n')
    assert "            from echo.src.trial_suggest" not in lazy and "from echo.src.trial_suggest" in lazy
    module = import_file(_write_objective(tmp_path / "lazy", lazy), what="objective file")
    assert compat.installed() and module.BaseObjective is compat.echo.BaseObjective
    compat.uninstall()
    folder = tmp_path / "helper"
    folder.mkdir()
    (folder / "project_base.py").write_text("from echo.src.base_objective import BaseObjective\n")
    (folder / "objective.py").write_text("from project_base import BaseObjective\n\n"
                                         "class Objective(BaseObjective):\n    pass\n")
    module = import_file(folder / "objective.py", what="objective file")
    assert module.BaseObjective is compat.echo.BaseObjective
    assert "echo.src.base_objective" in compat.used()


def _write_objective(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "objective.py").write_text(text)
    return folder / "objective.py"


def test_a_local_echo_module_that_shadows_echo_opt_is_named(tmp_path: Path) -> None:
    s = _search(tmp_path, ECHO_STYLE)
    (s.folder / "echo.py").write_text("def say(x):\n    return x\n")
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "No module named 'echo.src'" in proc.stderr
    assert f"'echo' is {s.folder / 'echo.py'}" in proc.stderr and "shadows echo-opt's package" in proc.stderr
    assert "rename" in proc.stderr


def test_an_import_path_objective_gets_the_names_too(tmp_path: Path) -> None:
    """``package.module:Class``, the documented way around objective files with relative imports."""
    s = write_search(tmp_path / "s", objective=ECHO_STYLE,
                     optuna={"n_trials": 3, "objective": "research.hpo.objective:Objective"})
    package = s.folder / "research" / "hpo"
    package.mkdir(parents=True)
    (s.folder / "research" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "metrics.py").write_text("def loss(x):\n    return (x - 2) ** 2\n")
    (package / "objective.py").write_text(
        "from echo.src.base_objective import BaseObjective\nfrom .metrics import loss\n\n"
        "class Objective(BaseObjective):\n"
        "    def __init__(self, config, metric='val_loss'):\n"
        "        BaseObjective.__init__(self, config, metric)\n\n"
        "    def train(self, trial, conf):\n"
        "        return {'val_loss': loss(conf['model']['x'])}\n")
    (s.folder / "objective.py").unlink()
    assert s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True).returncode == 0
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"],
                              storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_unknown_top_level_keys_warn_in_echo_files_and_are_refused_in_hyper_opts(tmp_path: Path) -> None:
    s = _echo_search(tmp_path, ECHO_STYLE)
    s.rewrite_hyper(lambda h: h.update(notes="lr sweep after the 2023 data fix; see the lab notebook"))
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert "top-level key 'notes'" in proc.stderr and "ignored, as echo-opt did" in proc.stderr
    assert len(_study(s).trials) == 3
    s.rewrite_hyper(lambda h: h.update(slrum={"jobs": 2}))  # a misspelt section is still refused
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "slrum: unknown key (did you mean 'slurm'?" in proc.stderr
    hyper_opt_format = _search(tmp_path / "own", ECHO_STYLE)
    hyper_opt_format.rewrite_hyper(lambda h: h.update(notes="x"))
    proc = hyper_opt_format.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2 and "notes: unknown key" in proc.stderr


TRIAL_RESULTS_WRITER = ECHO_STYLE.replace(
    '        x = conf["model"]["x"]\n',
    '        import os\n'
    '        x = conf["model"]["x"]\n'
    '        log = os.path.join(conf["optuna"]["save_path"], "trial_results", f"training_log_{trial.number}.csv")\n'
    '        with open(log, "w") as fh:  # per-epoch log, as training code written for echo-opt does\n'
    '            fh.write("epoch,val_loss\\n0,1.0\\n")\n')


def test_echo_files_get_save_path_trial_results_as_echo_opt_made_it(tmp_path: Path) -> None:
    assert "trial_results" in TRIAL_RESULTS_WRITER
    s = _echo_search(tmp_path, TRIAL_RESULTS_WRITER)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert [t.state.name for t in _study(s).trials] == ["COMPLETE"] * 3
    assert sorted(p.name for p in (s.folder / "data" / "trial_results").iterdir()) == [
        f"training_log_{n}.csv" for n in range(3)]
    plain = _search(tmp_path / "plain", FAST_OBJECTIVE_TEXT, n_trials=1)
    plain.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert not (plain.save_path / "trial_results").exists(), "hyper_opt's own format has no use for it"
