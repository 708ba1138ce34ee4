"""Objective classes users already have, and what one trial records."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from hyper_opt.config import load_config
from hyper_opt.exceptions import MetricMissingError, ObjectiveError
from hyper_opt.loader import instantiate
from hyper_opt.objective import BaseObjective, pick_device

from .conftest import write_search

SEED_STYLE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    def custom_updates(trial, conf):
        conf["derived"] = conf["model"]["x"] * 10
        conf["extra"] = trial.params["num_dense"]
        return conf

    class Objective(BaseObjective):
        def __init__(self, study, config, metric="val_loss", device="cpu"):
            BaseObjective.__init__(self, study, config, metric, device)

        def train(self, trial, conf):
            assert self.study is not None
            return {"val_loss": conf["derived"] + conf["extra"], "seen_optuna": "optuna" in conf}
''')

ECHO_STYLE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def __init__(self, config, metric="val_accuracy"):
            BaseObjective.__init__(self, config, metric)

        def train(self, trial, conf):
            return {"val_accuracy": conf["model"]["x"], "device": self.device}
''')


def _objective(tmp_path: Path, code: str, **optuna_keys: object) -> tuple[BaseObjective, optuna.Study]:
    s = write_search(tmp_path / "s", objective=code, optuna={
        "parameters": {"model:x": {"type": "float", "settings": {"name": "x", "low": 0.0, "high": 1.0}},
                       "num_dense": {"type": "int", "settings": {"low": 1, "high": 3}}},
        **optuna_keys})
    config, model = load_config(s.hyper, s.model)
    study = optuna.create_study(direction=config.optuna.directions[0])
    return instantiate(config, model or {}, study=study, device="cpu"), study


def test_seed_template_objective_with_study_and_custom_updates(tmp_path: Path) -> None:
    objective, study = _objective(tmp_path, SEED_STYLE)
    trial = study.ask()
    value = objective(trial)
    assert value == pytest.approx(trial.params["x"] * 10 + trial.params["num_dense"])
    assert objective.study is study
    assert trial.user_attrs["metrics"]["seen_optuna"] == 1.0  # the optuna section is in conf, as before


def test_echo_style_objective_without_study_or_device(tmp_path: Path) -> None:
    objective, study = _objective(tmp_path, ECHO_STYLE, metric="val_accuracy", direction="maximize")
    trial = study.ask()
    assert objective(trial) == trial.params["x"]
    assert objective.device == "cpu" and objective.study is study


def test_import_path_objective(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg_objs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(ECHO_STYLE.replace("class Objective", "class MyObjective"))
    monkeypatch.syspath_prepend(str(tmp_path))
    objective, study = _objective(tmp_path, ECHO_STYLE, objective="pkg_objs.mine:MyObjective",
                                  metric="val_accuracy", direction="maximize")
    assert type(objective).__name__ == "MyObjective"
    sys.modules.pop("pkg_objs.mine", None)


def test_missing_metric_names_the_key_and_what_was_returned(tmp_path: Path) -> None:
    objective, study = _objective(tmp_path, ECHO_STYLE, metric="val_loss")
    with pytest.raises(MetricMissingError, match=r"no 'val_loss'.*returned: val_accuracy, device"):
        objective(study.ask())


def test_non_subclass_is_refused_with_a_hint(tmp_path: Path) -> None:
    code = "class Objective:\n    def __init__(self, config, metric='m', device='cpu'):\n        pass\n"
    s = write_search(tmp_path / "s", objective=code)
    config, model = load_config(s.hyper, s.model)
    with pytest.raises(ObjectiveError, match="must subclass hyper_opt.BaseObjective"):
        instantiate(config, model or {}, study=None, device="cpu")


def test_report_prunes_when_the_pruner_says_so() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    objective = BaseObjective({"a": 1})
    trial = study.ask()
    objective.report(trial, 0.5, 0)
    with pytest.raises(optuna.TrialPruned):
        objective.report(trial, 5.0, 1)


def test_device_is_cuda_only_with_exactly_one_visible_gpu_that_torch_sees() -> None:
    assert pick_device({"CUDA_VISIBLE_DEVICES": ""}) == "cpu"
    assert pick_device({"CUDA_VISIBLE_DEVICES": "0,1"}) == "cpu"
    # One GPU index from Slurm, but no CUDA on this machine: falls back to the CPU.
    expected = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            expected = "cuda:0"
    except ImportError:
        pass
    assert pick_device({"CUDA_VISIBLE_DEVICES": "2"}) == expected


def test_checkpoints_are_shared_by_a_trial_and_its_retried_copy(tmp_path: Path) -> None:
    study = optuna.create_study()
    objective = BaseObjective({"a": 1})
    objective.save_path = tmp_path
    first = study.ask()
    assert objective.load_checkpoint(first) is None
    objective.save_checkpoint(first, {"epoch": 3})
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    copy = study.ask()
    copy.set_user_attr("retry_of", first.number)  # what the worker records for a retried copy
    assert objective.checkpoint_path(copy) == tmp_path / "checkpoints" / f"trial_{first.number}"
    assert objective.load_checkpoint(copy) == {"epoch": 3}
    assert not list(objective.checkpoint_path(copy).glob(".checkpoint.*")), "written atomically"


def test_one_device_rule_for_trials_rerun_and_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers, ``rerun`` and ``test`` share one rule: pick a GPU with optuna:gpu, or when the
    scheduler gave the process one; CPU otherwise (``test`` used to ignore the second case)."""
    from hyper_opt import objective

    monkeypatch.setattr(objective, "pick_device", lambda env=None: "cuda:0")
    assert objective.trial_device(True, {}) == "cuda:0"
    assert objective.trial_device(False, {"CUDA_VISIBLE_DEVICES": "3"}) == "cuda:0"
    assert objective.trial_device(False, {}) == "cpu"


def test_threads_importing_one_objective_file_at_once_all_get_the_whole_module(tmp_path: Path) -> None:
    """Several workers in one process (benchmarks/fleet.py holds hundreds) import the objective
    file at once: those that come while the first is still executing it wait for it to finish
    instead of getting the half that has run ("Objective is not a class")."""
    import threading

    from hyper_opt.loader import import_file

    path = tmp_path / "slow_objective.py"
    path.write_text(textwrap.dedent("""
        import time
        time.sleep(0.5)  # a module that takes its time: torch, a dataset index...
        class Objective:
            pass
        """))
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(import_file(path, what="objective file").Objective))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(isinstance(c, type) for c in got) and len(set(got)) == 1
