"""Start-up (issue 24): ``optimize`` starts its local workers before its own checks; they load
everything and wait for its go, skip the schema work it has done, and leave if it refuses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna

from .conftest import Search, write_search

TS = optuna.trial.TrialState


def _study(s: Search) -> optuna.Study:
    name = s.hyper_config()["optuna"]["study_name"]
    return optuna.load_study(study_name=name, storage=f"sqlite:///{s.save_path / 'hyper_opt.db'}")


def _worker(s: Search) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml", "--wait-for-go",
                             "--schema-checked"], cwd=s.folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_worker_waiting_for_go_touches_nothing_until_then_and_leaves_at_the_end_of_its_input(tmp_path: Path) -> None:
    from hyper_opt.config import load_config
    from hyper_opt.study import open_study

    s = write_search(tmp_path / "s", optuna={"n_trials": 2})
    config, _ = load_config(s.hyper, s.model)
    open_study(config, create=True, check_reload=True).lock.close()  # as optimize leaves it before its go
    study = _study(s)
    assert study.trials == []
    waiting = _worker(s)
    leaving = _worker(s)
    time.sleep(4)  # both have loaded and wait
    assert waiting.poll() is None and leaving.poll() is None, "they wait for the launcher"
    assert _study(s).trials == [], "nothing started before go"
    leaving.stdin.close()  # type: ignore[union-attr]
    assert leaving.wait(timeout=30) == 0, leaving.stderr.read()  # type: ignore[union-attr]
    assert _study(s).trials == [], "a worker told nothing does nothing"
    waiting.stdin.write("go\n")  # type: ignore[union-attr]
    waiting.stdin.close()  # type: ignore[union-attr]
    assert waiting.wait(timeout=60) == 0, waiting.stderr.read()  # type: ignore[union-attr]
    assert [t.state for t in _study(s).trials] == [TS.COMPLETE, TS.COMPLETE]


def test_workers_started_ahead_leave_when_optimize_refuses(tmp_path: Path) -> None:
    """optimize starts its local workers before it opens the study; when it then refuses (an
    existing study and reload 0) they must leave without running a trial."""
    s = write_search(tmp_path / "s", optuna={"n_trials": 2}, extra={"local": {"workers": 2}})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    before = [(t.number, t.state) for t in _study(s).trials]
    s.rewrite_hyper(lambda h: h["optuna"].update({"reload": 0, "n_trials": 4}))
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode != 0 and "already holds" in proc.stderr, proc.stderr[-2000:]
    time.sleep(1)
    assert [(t.number, t.state) for t in _study(s).trials] == before
    left = subprocess.run(["pgrep", "-f", f"hyper_opt.run {s.folder / 'hyper.yml'}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"workers left running: {left.stdout}"


def test_a_worker_waiting_for_go_has_imported_the_objective_and_a_broken_one_is_reported_after_go(
        tmp_path: Path) -> None:
    """The objective's module (often torch with it: seconds) is imported while the launcher checks,
    so that go leaves only the study's opening and the claim; a module that fails to import
    fails the worker after go with its usual message, and not before (a refusing launcher kills
    its workers first)."""
    from hyper_opt.config import load_config
    from hyper_opt.study import open_study

    from .conftest import FAST_OBJECTIVE

    marker = tmp_path / "imported"
    good = write_search(tmp_path / "good", optuna={"n_trials": 1},
                        objective=f"open({str(marker)!r}, 'a').write('x')\n" + FAST_OBJECTIVE)
    broken = write_search(tmp_path / "broken", optuna={"n_trials": 1},
                          objective="import not_a_module_anywhere\n" + FAST_OBJECTIVE)
    for s in (good, broken):
        config, _ = load_config(s.hyper, s.model)
        open_study(config, create=True, check_reload=True).lock.close()
    waiting, failing = _worker(good), _worker(broken)
    deadline = time.time() + 60
    # its content, not its existence: the file is created by open() before the "x" is written,
    # and a loaded machine can stop the worker between the two
    while not (marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists() and marker.read_text() == "x", "imported before go"
    assert waiting.poll() is None and _study(good).trials == [], "and nothing else"
    time.sleep(2)
    assert failing.poll() is None, "a module that does not import waits for go like any other"
    for proc in (waiting, failing):
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    assert waiting.wait(timeout=60) == 0, waiting.stderr.read()  # type: ignore[union-attr]
    assert marker.read_text() == "x", "imported once"
    assert [t.state for t in _study(good).trials] == [TS.COMPLETE]
    assert failing.wait(timeout=60) != 0
    assert "No module named 'not_a_module_anywhere'" in failing.stderr.read()  # type: ignore[union-attr]
