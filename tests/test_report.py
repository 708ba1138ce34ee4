"""``hyper-opt report``: every file, derived from the study, for single- and multi-objective studies."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hyper_opt.cli import main
from hyper_opt.config import load_config
from hyper_opt.report import best_trials, dashboard_command, error_line, format_seconds
from hyper_opt.results import read_csv
from hyper_opt.study import open_study

from .conftest import Search, write_search

# Fails for x > 3.5; the curve makes MedianPruner stop trials far from x = 2.
REPORT_OBJECTIVE = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def __init__(self, config, metric="val_loss", device="cpu"):
            BaseObjective.__init__(self, config, metric, device)

        def train(self, trial, conf):
            x = conf["model"]["x"]
            if x > 3.5:
                raise ValueError(f"x too large: {x}")
            for step in range(3):
                self.report(trial, (x - 2) ** 2 + 1.0 / (step + 1), step)
            return {"val_loss": (x - 2) ** 2, "loss": abs(x), "device": self.device}
''')
PARAMETERS = {
    "model:x": {"type": "float", "settings": {"name": "x", "low": -5.0, "high": 5.0}},
    "model:act": {"type": "categorical", "settings": {"name": "act", "choices": ["relu", "tanh"]}},
    "lr": {"type": "float", "settings": {"low": 1e-4, "high": 1e-1, "log": True}},  # not a model path
}
MODEL = {"model": {"x": 0.0, "act": "relu", "units": 4}, "train": {"epochs": 3}}
# In order: COMPLETE, COMPLETE, FAIL, PRUNED, PRUNED, FAIL, COMPLETE (5 finished = n_trials).
ENQUEUE = [{"x": 2.0, "act": "relu", "lr": 0.01}, {"x": 1.0, "act": "tanh", "lr": 0.001},
           {"x": 4.5, "act": "relu", "lr": 0.05}, {"x": -4.0, "act": "tanh", "lr": 0.002},
           {"x": -3.0, "act": "relu", "lr": 0.0005}, {"x": 4.8, "act": "tanh", "lr": 0.02},
           {"x": 2.5, "act": "tanh", "lr": 0.003}]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# the module-scoped search is run once: every test of this module on one xdist worker
pytestmark = pytest.mark.xdist_group("report")


def _study(s: Search) -> optuna.Study:
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=False)
    opened.lock.close()
    return opened.study


def _assert_png(path: Path, *, min_kb: float = 8) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width >= 400 and height >= 200, f"{path.name} is {width}x{height}"
    assert len(data) > min_kb * 1024, f"{path.name} is only {len(data)} bytes"


def _expected_row(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """What trials.csv must hold for a trial, computed here from the FrozenTrial."""
    row: dict[str, str] = {"number": str(trial.number), "state": trial.state.name}
    row.update({k: str(v) for k, v in trial.params.items()})
    row.update({k: str(v) for k, v in (trial.user_attrs.get("metrics") or {}).items()})
    if trial.values is not None and len(trial.values) == 1:
        row["value"] = str(trial.values[0])
    elif trial.values is not None:
        row.update({f"value_{i}": str(v) for i, v in enumerate(trial.values)})
    for key in ("hostname", "slurm_job_id", "cuda_visible_devices"):
        row[key] = str(trial.user_attrs.get(key, ""))
    row["retry_of"] = str(trial.system_attrs.get("failed_trial", ""))
    return row


def _check_csv(path: Path, study: optuna.Study) -> list[dict[str, str]]:
    rows = read_csv(path)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [int(r["number"]) for r in rows] == [t.number for t in trials], "one row per trial, in order"
    for row, trial in zip(rows, trials):
        expected = _expected_row(trial)
        assert {k: row[k] for k in expected} == expected, f"trial {trial.number}"
        if trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
            assert float(row["duration_s"]) == pytest.approx(seconds, abs=0.001)
    return rows


# --------------------------------------------------------------------------- single objective, real CLI


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Search:
    s = write_search(tmp_path_factory.mktemp("report") / "single", objective=REPORT_OBJECTIVE, model=MODEL,
                     optuna={"n_trials": 5, "parameters": PARAMETERS, "enqueue": ENQUEUE,
                             "max_consecutive_failures": 10,
                             "pruner": {"type": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0}})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    return s


def test_report_of_complete_pruned_and_failed_trials(single: Search) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    proc = single.cli("report", "hyper.yml", "model.yml", check=True, env=env)
    study = _study(single)
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED", "PRUNED", "FAIL", "COMPLETE"]
    folder = single.save_path / "report"
    names = {p.name for p in folder.iterdir() if p.name != ".hyper_opt_report.json"}
    assert names == {"trials.csv", "best.yml", "summary.md", "optimization_history.png", "intermediate_values.png",
                     "best_vs_gpu_hours.png",
                     "param_importances.png", "parallel_coordinate.png", "slice.png"}
    for png in folder.glob("*.png"):
        _assert_png(png)

    rows = _check_csv(folder / "trials.csv", study)
    assert rows[0]["hostname"] == socket.gethostname() and rows[0]["val_loss"] == "0.0"
    assert rows[2]["error"] == "ValueError: x too large: 4.5"
    assert rows[3]["value"] != "", "a pruned trial keeps its last reported value"

    # best.yml: the model config with exactly the best trial's parameters changed.
    best = study.best_trial
    assert best.number == 0
    text = (folder / "best.yml").read_text()
    expected = json.loads(json.dumps(MODEL))
    expected["model"].update(x=best.params["x"], act=best.params["act"])
    assert yaml.safe_load(text) == expected
    assert "trial 0" in text.splitlines()[0] and "lr" in text, "the header names the trial and unpatched params"

    summary = (folder / "summary.md").read_text()
    for line in ("| COMPLETE | 3 |", "| PRUNED | 2 |", "| FAIL | 2 |", "| total | 7 |"):
        assert line in summary
    assert "Best trial **0**: val_loss = 0" in summary
    assert "Pruning: 2 pruned trials used" in summary
    assert "| 2 | 2, 5 | `ValueError: x too large: 4.5` |" in summary, "failures grouped, first error line"
    assert "optuna-dashboard sqlite:///" in summary
    assert "best trial 0: val_loss = 0" in proc.stdout and str(folder) in proc.stdout
    assert len(study.trials) == 7, "the report adds nothing to the study"


def test_report_without_matplotlib_still_writes_csv_best_and_summary(single: Search, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from hyper_opt.cli import main\n"
            f"raise SystemExit(main(['report', 'hyper.yml', 'model.yml', '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=single.folder, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'hyper_opt[plots]'" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hyper_opt_report.json", "best.yml", "summary.md",
                                                          "trials.csv"]
    assert "pip install 'hyper_opt[plots]'" in (tmp_path / "summary.md").read_text()


def test_no_plots_and_importances_need_two_completed_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # An earlier test in this process may have imported pyplot (keras does): forget it, so that
    # the check at the end is about the report alone.
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    s = write_search(tmp_path / "s", model=MODEL, optuna={"parameters": PARAMETERS})
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=True)
    opened.lock.close()
    dists = {"x": optuna.distributions.FloatDistribution(-5, 5),
             "act": optuna.distributions.CategoricalDistribution(["relu", "tanh"]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    opened.study.add_trial(optuna.trial.create_trial(params={"x": 1.5, "act": "tanh", "lr": 0.01},
                                                     distributions=dists, value=0.25))
    opened.study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    out = tmp_path / "report"
    assert main(["report", str(s.hyper), str(s.model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert "parameter importances not computed: they need at least 2 completed trials, the study has 1" in summary
    assert "param_importances.png" not in {p.name for p in out.iterdir()}
    assert "no error recorded" in summary, "a FAIL without a traceback (a dead worker) is explained"
    assert "best trial 1" not in printed and "best trial 0: val_loss = 0.25" in printed
    assert yaml.safe_load((out / "best.yml").read_text())["model"] == {"x": 1.5, "act": "tanh", "units": 4}

    # --no-plots writes no PNG and removes the ones an earlier report left behind.
    assert main(["report", str(s.hyper), "--out", str(out), "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["summary.md", "trials.csv"]
    assert "give the model config too" in (out / "summary.md").read_text()
    assert "matplotlib.pyplot" not in sys.modules, "figures are rendered without pyplot (no display, no backend)"


def test_report_never_deletes_a_file_it_did_not_write(tmp_path: Path) -> None:
    """``report --out DIR`` without a model writes no best.yml: a best.yml of the user's in DIR
    stays, as do plots of the user's; what an earlier report wrote there and this one did not
    goes, unless changed since."""
    s = write_search(tmp_path / "s", model={"model": {"x": 0.0}})
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=True)
    opened.lock.close()
    dist = {"x": optuna.distributions.FloatDistribution(-5, 5)}
    for x in (1.0, 2.5):
        opened.study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=(x - 2) ** 2))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "best.yml").write_text("model: {x: 42}  # tuned by hand\n")
    (out / "slice.png").write_bytes(b"my own plot")
    assert main(["report", str(s.hyper), "--out", str(out), "--no-plots"]) == 0
    assert (out / "best.yml").read_text() == "model: {x: 42}  # tuned by hand\n"
    assert (out / "slice.png").read_bytes() == b"my own plot"
    assert (out / "trials.csv").exists() and (out / "summary.md").exists()
    # An earlier report's best.yml goes once a report no longer writes it; one edited since stays.
    assert main(["report", str(s.hyper), str(s.model), "--out", str(out), "--no-plots"]) == 0
    assert "tuned by hand" not in (out / "best.yml").read_text(), "written (overwritten) by this report"
    assert main(["report", str(s.hyper), "--out", str(out), "--no-plots"]) == 0
    assert not (out / "best.yml").exists(), "the earlier report's own best.yml is outdated: removed"
    assert main(["report", str(s.hyper), str(s.model), "--out", str(out), "--no-plots"]) == 0
    (out / "best.yml").write_text("model: {x: 7}  # edited\n")
    assert main(["report", str(s.hyper), "--out", str(out), "--no-plots"]) == 0
    assert (out / "best.yml").read_text() == "model: {x: 7}  # edited\n", "edited since: not the report's any more"


def test_report_of_a_missing_study_is_one_clear_error(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s")
    proc = s.cli("report", "hyper.yml")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- multi-objective


def _multi_study(folder: Path, *, storage: str | None = None) -> tuple[Search, optuna.Study]:
    """40 trials made directly in the study's storage: COMPLETE, PRUNED, FAIL, retries."""
    extra = {"storage": storage} if storage else {}
    s = write_search(folder, model=MODEL, optuna={"metric": ["val_loss", "acc"], "direction": ["minimize", "maximize"],
                                                  "parameters": PARAMETERS, **extra})
    config, _ = load_config(s.hyper)
    opened = open_study(config, create=True)
    opened.lock.close()
    dists = {"x": optuna.distributions.FloatDistribution(-5, 5),
             "act": optuna.distributions.CategoricalDistribution(["relu", "tanh"]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    TS = optuna.trial.TrialState
    start = dt.datetime(2025, 1, 1)
    trials = []
    for i in range(40):
        x = -5 + i * 0.25
        params = {"x": x, "act": ["relu", "tanh"][i % 2], "lr": 10 ** (-4 + 3 * i / 40)}
        state = TS.FAIL if i % 10 == 9 else TS.PRUNED if i % 10 == 5 else TS.COMPLETE
        values = [(x - 1) ** 2, 1 / (1 + abs(x + 1)) + 0.01 * (i % 3)] if state == TS.COMPLETE else None
        attrs: dict[str, Any] = {"hostname": "node1", "slurm_job_id": f"77_{i % 4}", "cuda_visible_devices": str(i % 2)}
        if values:
            attrs["metrics"] = {"val_loss": values[0], "acc": values[1], "epochs": 3}
        if state == TS.FAIL:
            attrs["error"] = "Traceback (most recent call last):\n  File \"o.py\", line 1\nRuntimeError: CUDA oom\n"
        trials.append(optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=dists, user_attrs=attrs,
            system_attrs={"failed_trial": i - 1} if i % 10 == 0 and i else {}))
        trials[-1].datetime_start = start + dt.timedelta(minutes=i)
        trials[-1].datetime_complete = start + dt.timedelta(minutes=i, seconds=30 if state == TS.PRUNED else 90)
    opened.study.add_trials(trials)
    return s, opened.study


def test_multi_objective_report_writes_one_best_file_per_pareto_trial(tmp_path: Path) -> None:
    s, study = _multi_study(tmp_path / "multi")
    out = s.save_path / "report"
    out.mkdir(parents=True)
    (out / "best_trial_999.yml").write_text("mine: true\n")  # not a report's: kept
    assert main(["report", str(s.hyper), str(s.model)]) == 0
    pareto = sorted(t.number for t in study.best_trials)
    assert len(pareto) >= 3
    assert sorted(t.number for t in best_trials(study.trials, ["minimize", "maximize"])) == pareto
    names = {p.name for p in out.iterdir()}
    assert {f"best_trial_{n}.yml" for n in pareto} | {"best_trial_999.yml"} == {n for n in names if n.startswith("best")}, \
        "one file per Pareto-optimal trial; a file no report wrote stays"
    assert (out / "best_trial_999.yml").read_text() == "mine: true\n"
    for n in pareto:
        params = study.trials[n].params
        expected = json.loads(json.dumps(MODEL))
        expected["model"].update(x=params["x"], act=params["act"])
        assert yaml.safe_load((out / f"best_trial_{n}.yml").read_text()) == expected
    assert {"pareto_front.png", "optimization_history.png", "param_importances.png", "parallel_coordinate.png",
            "slice.png", "trials.csv", "summary.md"} <= names
    assert "intermediate_values.png" not in names
    for png in out.glob("*.png"):
        _assert_png(png)
    rows = _check_csv(out / "trials.csv", study)
    assert {"value_0", "value_1", "epochs"} <= set(rows[0])
    summary = (out / "summary.md").read_text()
    assert f"**{len(pareto)}** Pareto-optimal trial(s)" in summary
    assert "| 4 | 9, 19, 29, 39 | `RuntimeError: CUDA oom` |" in summary
    assert "3 trial(s) were retries of failed ones" in summary
    assert "| PRUNED | 4 | 0:02:00 | " in summary and "| COMPLETE | 32 | 0:48:00 | " in summary


@pytest.mark.postgres
def test_report_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    s, study = _multi_study(tmp_path / "pg", storage=pg_url)
    try:
        assert main(["report", str(s.hyper), str(s.model)]) == 0
        _check_csv(s.save_path / "report" / "trials.csv", study)
        assert (s.save_path / "report" / "pareto_front.png").is_file()
    finally:
        optuna.delete_study(study_name=study.study_name, storage=pg_url)


# --------------------------------------------------------------------------- the live view


def test_dashboard_hint_masks_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = write_search(tmp_path / "s", optuna={"storage": "postgresql://me:secret@db.example:5432/studies"})
    assert main(["report", str(s.hyper), "--dashboard"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("optuna-dashboard 'postgresql://me:***@db.example:5432/studies' --host 127.0.0.1")
    assert "secret" not in out and "PGPASSWORD" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_optuna_dashboard_serves_the_study(single: Search) -> None:
    pytest.importorskip("optuna_dashboard")
    config, _ = load_config(single.hyper)
    port = _free_port()
    argv = shlex.split(dashboard_command(config.optuna.storage, port=port))  # the documented command
    argv[0] = str(Path(sys.executable).with_name("optuna-dashboard"))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, f"optuna-dashboard did not answer: {proc.poll()=}"
        assert [st["study_name"] for st in body["study_summaries"]] == [config.optuna.study_name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- helpers


def test_error_line_and_durations() -> None:
    tb = ("Traceback (most recent call last):\n  File \"a.py\", line 3, in f\n    g()\n"
          "ValueError: first line\n  of a two-line message\n")
    assert error_line(tb) == "ValueError: first line"
    assert error_line("") == ""
    assert format_seconds(4.24) == "4.2 s" and format_seconds(3725) == "1:02:05"
    assert format_seconds(90061) == "1d 01:01:01"


def test_one_finite_rule_inf_is_never_the_best_trial() -> None:
    """best trials, importances and plots share one rule: NaN and ±inf values are not results
    (a COMPLETE trial with value inf from an older study would otherwise be 'best' when maximizing)."""
    import optuna

    from hyper_opt.trials import best_trials, finite_complete

    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trials = [optuna.trial.create_trial(params={"x": 0.1}, distributions=dist, value=v) for v in (0.5, 0.9)]
    inf = optuna.trial.create_trial(params={"x": 0.2}, distributions=dist, value=0.0)
    inf.values = [float("inf")]
    trials = [*trials, inf]
    assert [t.value for t in finite_complete(trials)] == [0.5, 0.9]
    assert best_trials(trials, ["maximize"])[0].value == 0.9


def test_worker_processes_and_one_process_write_the_same_report(tmp_path: Path) -> None:
    """The plots and importances drawn in forked workers (the default on Linux) or here."""
    from hyper_opt.report import write_report

    s, study = _multi_study(tmp_path / "multi")
    config, model = load_config(s.hyper, s.model)
    here = write_report(config, model, out=tmp_path / "here", processes=0)
    forked = write_report(config, model, out=tmp_path / "forked", processes=2)
    assert [p.name for p in here.files] == [p.name for p in forked.files]
    assert here.notes == forked.notes
    assert "importances and plots (wall)" in forked.timings

    def stable(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("- report written"))

    assert stable(here.summary).replace("/here", "/forked") == stable(forked.summary)
    for path in here.files:
        if path.suffix in (".csv", ".png"):
            assert path.read_bytes() == (tmp_path / "forked" / path.name).read_bytes(), path.name


def test_a_finalizers_resource_warning_never_becomes_an_importance_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection of the caller's collected while the importances run warns (ResourceWarning):
    not the importances' to report; their own warnings still are."""
    import importlib
    import warnings

    import optuna

    from hyper_opt.trials import param_importances

    def importances(study: optuna.Study) -> dict[str, float]:
        warnings.warn("<psycopg.Connection> was deleted while still open", ResourceWarning)
        warnings.warn("the evaluator says something", UserWarning)
        return {"x": 1.0}

    # The module itself: optuna.importance is a lazy-import proxy until something loads it, and
    # loading it puts the real module in its place (patching the proxy patched nothing when this
    # test was the first of its process to touch the importances).
    monkeypatch.setattr(importlib.import_module("optuna.importance"), "get_param_importances", importances)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trials = [optuna.trial.create_trial(params={"x": x}, distributions=dist, value=x) for x in (0.1, 0.5, 0.9)]
    notes: list[str] = []
    assert param_importances(trials, ["minimize"], notes=notes)[0] == {"x": 1.0}
    assert "parameter importances: the evaluator says something" in notes
    assert not [n for n in notes if "psycopg" in n], notes
