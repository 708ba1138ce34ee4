"""The traps a new user fell into (issue 22), each through the CLI as the user typed it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from hyper_opt.keypath import apply_overrides

from .conftest import FAST_OBJECTIVE, Search, write_search

NESTED_MODEL = {"model": {"x": 0.0}, "net": {"layers": [{"units": 8}, {"units": 4}], "dropout": 0.1}}


def _study(s: Search) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    return optuna.load_study(study_name=s.hyper_config()["optuna"]["study_name"], storage=storage)


def _nested(tmp_path: Path, key: str, objective: str = FAST_OBJECTIVE, n_trials: int = 2) -> Search:
    return write_search(tmp_path / "s", model=NESTED_MODEL, objective=objective, optuna={
        "n_trials": n_trials,
        "parameters": {
            "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
            key: {"type": "int", "settings": {"name": "units", "low": 2, "high": 16}}}})


# ------------------------------------------------------------------ 1. a typo in a colon path


@pytest.mark.parametrize("key, why", [("net:layer:0:units", "net has no key 'layer'"),
                                      ("net:layers:2:units", "net:layers has 2 item(s), no index 2")])
def test_a_colon_path_that_does_not_resolve_is_refused_naming_the_closest_paths(
        tmp_path: Path, key: str, why: str) -> None:
    s = _nested(tmp_path, key)
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2, proc.stderr
    assert f"optuna:parameters:{key}: not a key path of the model config ({why})" in proc.stderr
    assert "closest key paths: net:layers:" in proc.stderr and ":units" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (s.save_path / "hyper_opt.db").exists(), "refused before the study was created"


def test_a_broken_colon_path_read_by_custom_updates_is_warned_once_and_marked_in_best_yml(tmp_path: Path) -> None:
    code = FAST_OBJECTIVE + textwrap.dedent('''
        def custom_updates(trial, conf):
            conf["net"]["layers"][0]["units"] = trial.params["units"]
            return conf
    ''')
    s = _nested(tmp_path, "net:layer:0:units", objective=code)
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert proc.stderr.count("optuna:parameters:net:layer:0:units: not a key path of the model config") == 1
    assert "closest key paths: net:layers:0:units" in proc.stderr
    s.cli("report", "hyper.yml", "model.yml", "--no-plots", check=True)
    best = (s.save_path / "report" / "best.yml").read_text()
    assert "# WARNING: colon paths that do not resolve in the model config (a typo?)" in best
    assert "net:layer:0:units" in best
    assert "net:layer:0:units" in (s.save_path / "report" / "summary.md").read_text()


def test_a_flat_name_that_is_not_a_model_key_stays_a_suggest_only_parameter(tmp_path: Path) -> None:
    s = _nested(tmp_path, "num_dense")
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    assert all("units" in t.params for t in _study(s).trials)


# ------------------------------------------------------------------ 2. where relative paths resolve


def test_dry_run_and_start_say_which_rule_resolves_relative_paths_and_where_each_went(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 1}, extra={"local": {"workers": 1}})
    s.rewrite_hyper(lambda h: [h["optuna"].pop(k) for k in ("heartbeat_interval", "grace_period")])
    here = Search(folder=tmp_path, hyper=s.hyper, model=s.model)  # started from the folder above the YAML
    plan = here.cli("optimize", "s/hyper.yml", "s/model.yml", "--dry-run", check=True).stdout
    assert f"relative paths are read from the YAML's folder {s.folder} (hyper_opt format: local is a key " in plan
    assert f"save_path -> {s.folder / 'results'}" in plan
    s.rewrite_hyper(lambda h: h.pop("local"))  # the README-style file without local: is echo-opt's
    plan = here.cli("optimize", "s/hyper.yml", "s/model.yml", "--dry-run", check=True).stdout
    assert (f"relative paths are read from the working directory {tmp_path} (echo format: save_path, "
            "optuna:study_name without any key only hyper_opt knows; write 'format: hyper_opt'") in plan
    assert f"save_path -> {tmp_path / 'results'}" in plan
    run = here.cli("optimize", "s/hyper.yml", "s/model.yml", check=True)
    assert f"WARNING hyper_opt: relative paths are read from the working directory {tmp_path}" in run.stderr
    assert f"save_path -> {tmp_path / 'results'}" in run.stderr


# ------------------------------------------------------------------ 3. --set model:... with a top-level model key


def test_set_model_path_reaches_the_key_under_a_top_level_model_key(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 1},
                     model={"model": {"x": 0.0, "hidden_size": 8, "layers": [16, 8]}})
    s.cli("optimize", "hyper.yml", "model.yml", "--set", "model:hidden_size=32", "--set", "model:layers=[64,32]",
          "--dry-run", check=True)
    model = {"model": {"hidden_size": 8, "layers": [16, 8]}, "hidden": 1}
    assert apply_overrides({}, model, ["model:hidden_size=32", "model:layers=[64,32]"]) == []
    assert model == {"model": {"hidden_size": 32, "layers": [64, 32]}, "hidden": 1}
    typo = s.cli("optimize", "hyper.yml", "model.yml", "--set", "model:hiden_size=32", "--dry-run")
    assert typo.returncode == 2
    assert ("neither 'hiden_size' nor 'model:hiden_size' is a key path of the model config; "
            "closest key paths: model:hidden_size") in typo.stderr


def test_set_model_path_that_could_mean_two_keys_is_refused_saying_how_to_write_each(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 1}, model={"model": {"x": 0.0, "size": 8}, "size": 4})
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--set", "model:size=32", "--dry-run")
    assert proc.returncode == 2
    assert "ambiguous" in proc.stderr and "'model:model:size=...'" in proc.stderr and "'size=...'" in proc.stderr
    s.cli("optimize", "hyper.yml", "model.yml", "--set", "model:model:size=32", "--set", "size=2", "--dry-run",
          check=True)


# ------------------------------------------------------------------ 4. an error every trial would meet


@pytest.mark.parametrize("body, message", [
    ("return {'loss': 1.0}", "MetricMissingError: train() returned no 'val_loss'"),
    ("return 0.5", "MetricMissingError: train() must return a dict"),
    ("import not_a_module_anywhere", "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("return {'val_loss': undefined_name}", "NameError: name 'undefined_name' is not defined"),
])
def test_an_error_of_the_code_alone_stops_the_search_after_the_first_trial(
        tmp_path: Path, body: str, message: str) -> None:
    code = f"from hyper_opt import BaseObjective\nclass Objective(BaseObjective):\n    def train(self, t, c):\n        {body}\n"
    s = write_search(tmp_path / "s", objective=code, optuna={"n_trials": 20, "max_consecutive_failures": 10},
                     extra={"local": {"workers": 2}})
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 1
    trials = _study(s).trials
    assert 1 <= len(trials) <= 2, f"each worker trains at most once, not 10 times: {len(trials)} trials"
    assert "search stopped: trial " in proc.stderr
    assert message in proc.stderr
    assert "run optimize again with --reload" in proc.stderr
    logs = "".join(p.read_text() for p in (s.save_path / "logs").glob("worker_*.log"))
    assert logs.count("stopping: trial") + logs.count("the search stopped") >= 2, "both workers stopped"


def test_a_code_error_after_finished_trials_fails_only_its_trial(tmp_path: Path) -> None:
    code = ("from hyper_opt import BaseObjective\nclass Objective(BaseObjective):\n    def train(self, t, c):\n"
            "        return {'val_loss': 1.0} if t.number != 1 else {}\n")
    s = write_search(tmp_path / "s", objective=code, optuna={"n_trials": 4})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    states = [t.state.name for t in _study(s).trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1


# ------------------------------------------------------------------ 5. --reload without the original --set


@pytest.mark.slow
def test_reload_without_the_original_set_is_refused_unless_accepted(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 2}, model={"model": {"x": 0.0}, "steps": 3})
    s.cli("optimize", "hyper.yml", "model.yml", "--set", "steps=1", check=True)
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--reload", "--set", "optuna:n_trials=4")
    assert proc.returncode == 2
    assert "it was started with --set steps=1" in proc.stderr and "--new-overrides" in proc.stderr
    assert len(_study(s).trials) == 2, "nothing ran"
    dry = s.cli("optimize", "hyper.yml", "model.yml", "--reload", "--set", "optuna:n_trials=4", "--dry-run")
    assert dry.returncode == 2 and "it was started with --set steps=1" in dry.stderr
    # the same overrides (n_trials may change) continue; --new-overrides accepts others
    s.cli("optimize", "hyper.yml", "model.yml", "--reload", "--set", "steps=1", "--set", "optuna:n_trials=3",
          check=True)
    accepted = s.cli("optimize", "hyper.yml", "model.yml", "--reload", "--set", "optuna:n_trials=4",
                     "--new-overrides", check=True)
    assert "--new-overrides: study" in accepted.stderr
    assert len(_study(s).trials) == 4


# ------------------------------------------------------------------ 6. --dry-run looks at the study


def test_dry_run_says_the_real_run_would_refuse_the_study_and_exits_non_zero(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 2})
    fresh = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", check=True)
    assert "study      new: the real run creates it" in fresh.stdout
    assert not (s.save_path / "hyper_opt.db").exists()
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    s.rewrite_hyper(lambda h: h["optuna"].update(reload=0, n_trials=4))
    dry = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run")
    real = s.cli("optimize", "hyper.yml", "model.yml")
    assert real.returncode == 2 and dry.returncode == 2
    assert "the real run would refuse" in dry.stderr and "already holds 2 trials" in dry.stderr
    ok = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run", "--reload", check=True)
    assert "study      exists: 2 trials (2 finished of n_trials 4)" in ok.stdout
    assert "would run  2 more trial(s)" in ok.stdout


# ------------------------------------------------------------------ 13. status figures


@pytest.mark.slow
def test_status_shows_the_budget_the_search_runs_with_and_no_rate_over_seconds(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 12})
    s.cli("optimize", "hyper.yml", "model.yml", "--set", "optuna:n_trials=3", check=True)
    out = s.cli("status", "hyper.yml", check=True).stdout
    assert "finished 3/3 " in out, out
    assert "n_trials 3 as last launched (the file says 12" in out
    assert "trials/hour" not in out, "no rate over a few seconds"
    s.cli("optimize", "hyper.yml", "model.yml", "--reload", "--set", "optuna:n_trials=5", check=True)
    assert "finished 5/5 " in s.cli("status", "hyper.yml", check=True).stdout


# ------------------------------------------------------------------ 7. cancel on a local search


def _start_slow_search(s: Search) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                            cwd=s.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if any(t.state == optuna.trial.TrialState.RUNNING for t in _study(s).trials):
                return proc
        except Exception:  # noqa: BLE001 - the study is not there yet
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("no trial started within 90 s")


def test_cancel_stops_a_local_search_and_its_workers(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 50}, extra={"local": {"workers": 2}},
                     model={"model": {"x": 0.0}, "sleep": 0.5, "steps": 40})
    proc = _start_slow_search(s)
    try:
        cancel = s.cli("cancel", "hyper.yml", timeout=120)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert "stopping the local search" in cancel.stdout and "--reload" in cancel.stdout
        proc.wait(timeout=30)  # the optimize process has ended
    finally:
        if proc.poll() is None:
            proc.kill()
    states = [t.state for t in _study(s).trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert len(states) < 50
    again = s.cli("cancel", "hyper.yml", check=True)
    assert "no trial is running" in again.stdout


# ------------------------------------------------------------------ 8. Ctrl-C inside a finalizer


FINALIZER_OBJECTIVE = textwrap.dedent('''
    import time, weakref
    from hyper_opt import BaseObjective

    class Thing:
        pass

    def slow_cleanup():  # like SQLAlchemy's InstanceState._cleanup: a weakref callback
        end = time.time() + 0.2
        while time.time() < end:
            pass

    class Objective(BaseObjective):
        def train(self, trial, conf):
            for _ in range(400):  # about 80 s, nearly all of it inside finalizers
                thing = Thing()
                weakref.finalize(thing, slow_cleanup)
                del thing
            return {"val_loss": 1.0}
''')


def test_ctrl_c_landing_in_a_finalizer_still_interrupts_the_trial(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 3}, objective=FINALIZER_OBJECTIVE)
    proc = _start_slow_search(s)
    time.sleep(1.0)  # well inside the training loop
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (s.save_path / "logs" / "worker_0.log").read_text()
    assert "Exception ignored" not in log, log
    trial = _study(s).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "worker interrupted by SIGINT" in trial.user_attrs["error"], "the worker stopped the trial itself"
    assert "--reload" in err.strip().splitlines()[-1], err


# ------------------------------------------------------------------ 9. a retried trial that completes


def test_a_retried_trial_that_completes_shows_no_error_of_its_original(tmp_path: Path) -> None:
    code = textwrap.dedent('''
        import os
        from hyper_opt import BaseObjective

        class Objective(BaseObjective):
            def train(self, trial, conf):
                marker = os.path.join(os.path.dirname(__file__), "died_once")
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(1)  # the worker dies during the trial: it is failed and re-queued
                return {"val_loss": 1.0}
    ''')
    s = write_search(tmp_path / "s", objective=code, optuna={"n_trials": 1})
    s.cli("optimize", "hyper.yml", "model.yml")
    s.cli("optimize", "hyper.yml", "model.yml", "--reload", check=True)
    trials = _study(s).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "worker process ended" in trials[0].user_attrs["error"]
    assert not trials[1].user_attrs.get("error"), "the completed copy keeps no error"
    from hyper_opt.results import read_csv

    rows = {r["number"]: r for r in read_csv(s.save_path / "trials.csv")}
    assert rows["1"]["state"] == "COMPLETE" and rows["1"]["error"] == "" and rows["1"]["retry_of"] == "0"
    assert "worker process ended" in rows["0"]["error"]
    assert read_csv(s.save_path / "trials" / "trial_1.csv")[0]["error"] == ""


# ------------------------------------------------------------------ 12. status | head


def test_status_into_a_closed_pipe_ends_quietly_with_141(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 2})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "status", "hyper.yml"], cwd=s.folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before status writes, as 'head' is after its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


# ------------------------------------------------------------------ 10. test on a study that is not metric learning


def test_test_command_on_another_objective_says_it_applies_to_metric_learning(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 1})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    proc = s.cli("test", "hyper.yml", "model.yml")
    assert proc.returncode == 2
    assert "'hyper-opt test' applies to the metric-learning objective" in proc.stderr
    assert "hyper-opt rerun" in proc.stderr and "problem(s)" not in proc.stderr


# ------------------------------------------------------------------ 14. docs


REPO = Path(__file__).resolve().parents[1]


def test_readme_install_lines_can_be_pasted_and_name_real_extras() -> None:
    import configparser
    import re
    import shlex

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    readme = (REPO / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("pip install")]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)  # what the shell passes: one target per line, nothing else
        assert argv[:2] == ["pip", "install"] and len(argv) == 3, line
        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", argv[2])
        assert match, line
        assert set((match.group(1) or "").split(",")) - {""} <= extras, line


def test_docs_do_not_promise_status_shows_the_first_error_or_top_level_echo_keys() -> None:
    assert "shows the first error" not in (REPO / "docs" / "slurm.md").read_text()
    readme = (REPO / "README.md").read_text()
    assert "under `optuna`: `study_name`, `storage` + `storage_type`, `pruner`, `enqueue`" in readme


# ------------------------------------------------------------------ 11. slice plot ticks


def _slice_axes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: float, high: float) -> dict[str, Any]:
    from hyper_opt import plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(t: optuna.Trial) -> float:
        loss = t.suggest_categorical("loss", ["TripletMarginLoss", "ContrastiveLoss", "NTXentLoss"])
        lr = t.suggest_float("lr", low, high, log=True)
        if loss != "ContrastiveLoss":
            raise optuna.TrialPruned()  # every completed trial used one choice
        return lr

    study.optimize(objective, n_trials=40)
    seen: dict[str, Any] = {}
    save = plots._save

    def keep(fig: Any, path: Path) -> Path:
        fig.canvas.draw()
        for ax in fig.axes:
            seen[ax.get_xlabel()] = ax
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    plots.slice_plot(study.trials, tmp_path / "slice.png", directions=["minimize"], names=["v"])
    return seen


@pytest.mark.parametrize("low, high", [(8.5e-4, 1.3e-3), (5e-4, 2e-3), (1e-5, 1e-1)])
def test_slice_plot_labels_every_choice_and_log_ticks_do_not_overlap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: float, high: float) -> None:
    pytest.importorskip("matplotlib")
    axes = _slice_axes(tmp_path, monkeypatch, low, high)
    labels = [t.get_text() for t in axes["loss"].get_xticklabels()]
    assert labels == ["TripletMarginLoss", "ContrastiveLoss", "NTXentLoss"]
    left, right = axes["loss"].get_xlim()
    assert all(left < x < right for x in axes["loss"].get_xticks()), "every choice's label is in view"
    lr = axes["lr"]
    renderer = lr.figure.canvas.get_renderer()
    boxes = sorted((b for b in (t.get_window_extent(renderer) for t in lr.get_xticklabels(which="both")
                                if t.get_text() and t.get_visible()) if b.width), key=lambda b: b.x0)
    assert len(boxes) >= 1
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    sizes = {t.get_fontsize() for t in lr.get_xticklabels(which="both") if t.get_text()}
    assert sizes == {7}


def test_a_third_ctrl_c_ends_a_worker_stuck_in_a_finalizer(tmp_path: Path) -> None:
    stuck = FINALIZER_OBJECTIVE.replace("end = time.time() + 0.2", "end = time.time() + 3600")
    s = write_search(tmp_path / "s", optuna={"n_trials": 3}, objective=stuck)
    proc = _start_slow_search(s)
    time.sleep(1.0)
    try:
        for _ in range(3):  # Ctrl-C three times: the parent passes the later ones on to its workers
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(1.0)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (s.save_path / "logs" / "worker_0.log").read_text()
    assert "third Ctrl-C while the trial could not be interrupted; exiting now" in log, log
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in _study(s).trials]
