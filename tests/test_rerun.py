"""``hyper-opt rerun``: one trial's parameters through the objective again, outside the study."""

from __future__ import annotations

import json
import textwrap

import pytest

from hyper_opt.cli import main
from hyper_opt.config import load_config
from hyper_opt.rerun import rerun
from hyper_opt.study import open_study

from .conftest import Search, write_search

# Deterministic; fails for x > 3.5; reports its config so that --set is visible in the result.
OBJECTIVE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def __init__(self, config, metric="val_loss", device="cpu"):
            BaseObjective.__init__(self, config, metric, device)

        def train(self, trial, conf):
            x = conf["model"]["x"]
            if x > 3.5:
                raise ValueError(f"x too large: {x}")
            state = self.load_checkpoint(trial)
            first = state["step"] if state else 0
            for step in range(first, conf["train"]["epochs"]):
                self.report(trial, (x - 2) ** 2 + 1.0 / (step + 1), step)
                self.save_checkpoint(trial, {"step": step + 1})
            (self.save_path / f"model_{trial.number}.txt").write_text(str(x))
            return {"val_loss": (x - 2) ** 2 + 0.1 * conf["train"]["epochs"], "epochs": conf["train"]["epochs"],
                    "act": conf["model"]["act"], "number": trial.number, "resumed_from": first}
''')
PARAMETERS = {
    "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
    "model:act": {"type": "categorical", "settings": {"name": "act", "choices": ["relu", "tanh"]}},
}

# the module-scoped search is run once: every test of this module on one xdist worker
pytestmark = pytest.mark.xdist_group("rerun")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    s = write_search(tmp_path_factory.mktemp("rerun") / "s", objective=OBJECTIVE,
                     model={"model": {"x": 0.0, "act": "relu"}, "train": {"epochs": 3}},
                     optuna={"n_trials": 3, "parameters": PARAMETERS,
                             "enqueue": [{"x": 2.5, "act": "tanh"}, {"x": 4.5, "act": "relu"},
                                         {"x": 1.25, "act": "relu"}, {"x": 0.5, "act": "tanh"}]})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    return s


def _trials(s: Search) -> list:
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=False)
    opened.lock.close()
    return sorted(opened.study.trials, key=lambda t: t.number)


def test_rerun_reproduces_a_trials_value_and_adds_no_trial(search: Search) -> None:
    before = _trials(search)
    assert [t.state.name for t in before] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    proc = search.cli("rerun", "hyper.yml", "model.yml", "--trial", "2", check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == before[2].user_attrs["metrics"]
    assert result["val_loss"] == before[2].value, "the same value, exactly"
    assert result["number"] == 2, "the objective sees the trial's own number"
    assert result["resumed_from"] == 0, "not resumed from the recorded trial's checkpoint"
    assert "trial 2 recorded val_loss" in proc.stderr and ": the same" in proc.stderr
    after = _trials(search)
    assert [(t.number, t.state, t.values) for t in after] == [(t.number, t.state, t.values) for t in before]
    # The objective's files go to a new folder per rerun, never over the study's own.
    assert (search.save_path / "rerun" / "trial_2" / "model_2.txt").read_text() == str(before[2].params["x"])
    study_file = search.save_path / "model_2.txt"
    mtime = study_file.stat().st_mtime_ns
    search.cli("rerun", "hyper.yml", "model.yml", "--trial", "2", check=True)
    assert (search.save_path / "rerun" / "trial_2_2" / "model_2.txt").is_file()
    assert study_file.stat().st_mtime_ns == mtime


def test_rerun_best_with_an_override(search: Search, capsys: pytest.CaptureFixture[str]) -> None:
    config, model = load_config(search.hyper, search.model)
    best = min((t for t in _trials(search) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    result = rerun(config, model or {}, trial="best")
    assert result.trial.number == best.number and result.values == [best.value]

    assert main(["rerun", str(search.hyper), str(search.model), "--trial", "best", "--set", "train:epochs=5"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["epochs"] == 5 and printed["act"] == best.params["act"]
    assert printed["val_loss"] == pytest.approx(best.value + 0.2)
    assert "different" in captured.err


def test_rerun_of_a_failed_trial_shows_its_traceback(search: Search) -> None:
    proc = search.cli("rerun", "hyper.yml", "model.yml", "--trial", "1")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: x too large: 4.5" in proc.stderr
    assert len(_trials(search)) == 4


def test_rerun_refuses_unknown_trials(search: Search, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rerun", str(search.hyper), str(search.model), "--trial", "42"]) == 2
    err = capsys.readouterr().err
    assert "--trial 42: study" in err and "has trials 0 to 3" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["rerun", str(search.hyper), str(search.model), "--trial", "first"])
    assert "must be a trial number" in capsys.readouterr().err
