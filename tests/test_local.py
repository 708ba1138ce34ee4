"""Local searches end to end through the real CLI: exact budget, reload, failures, pruning, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from hyper_opt.results import read_csv

from .conftest import Search, write_search


def _study(s: Search) -> optuna.Study:
    cfg = s.hyper_config()
    storage = optuna.storages.RDBStorage(f"sqlite:///{s.save_path / 'hyper_opt.db'}")
    return optuna.load_study(study_name=cfg["optuna"]["study_name"], storage=storage)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


@pytest.mark.slow
def test_three_workers_reach_exactly_n_trials(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 30}, extra={"local": {"workers": 3}})
    proc = s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = _study(s)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(30)), "exactly 30 trials, numbered 0..29, none extra"
    assert len(_finished(study)) == 30
    files = sorted(p.name for p in (s.save_path / "trials").glob("trial_*.csv"))
    assert files == sorted(f"trial_{n}.csv" for n in range(30))
    pids = {t.user_attrs["worker_pid"] for t in study.trials}
    assert len(pids) == 3, "all three workers ran trials"
    rows = read_csv(s.save_path / "trials.csv")
    assert [int(r["number"]) for r in rows] == list(range(30))
    assert set(rows[0]) >= {"number", "state", "x", "val_loss", "loss", "duration_s", "hostname",
                            "slurm_job_id", "cuda_visible_devices"}
    one = read_csv(s.save_path / "trials" / "trial_7.csv")
    assert len(one) == 1 and float(one[0]["x"]) == study.trials[7].params["x"]
    assert "30/30 finished" in proc.stderr


def test_reload_zero_refuses_an_existing_study_and_changes_nothing(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 4})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    before = (s.save_path / "hyper_opt.db").stat().st_mtime_ns, len(_study(s).trials)
    s.rewrite_hyper(lambda h: h["optuna"].update(n_trials=8))
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2
    assert "already holds 4 trials" in proc.stderr and "reload: 1" in proc.stderr and "--replace" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(_study(s).trials) == before[1]


@pytest.mark.slow
def test_reload_continues_to_the_new_n_trials(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 4, "enqueue": [{"x": 2.0}]})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    s.rewrite_hyper(lambda h: h["optuna"].update(n_trials=9, reload=1))
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = _study(s)
    assert sorted(t.number for t in study.trials) == list(range(9))
    assert [t.params["x"] for t in study.trials].count(2.0) == 1, "enqueued once, never again on reload"
    assert study.trials[0].params["x"] == 2.0
    # --reload on the command line does the same, and a full study is left alone.
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--reload", check=True)
    assert "already holds 9 finished trials" in proc.stdout
    assert len(study.trials) == 9


def test_replace_deletes_only_when_asked(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 3})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    s.cli("optimize", "hyper.yml", "model.yml", "--replace", "--set", "optuna:n_trials=2", check=True)
    assert len(_study(s).trials) == 2


FAILING = textwrap.dedent('''
    from hyper_opt import BaseObjective

    class Objective(BaseObjective):
        def train(self, trial, conf):
            if trial.number % 3 == 1:
                raise RuntimeError(f"boom in trial {trial.number}")
            if trial.number == 5:
                return {"not_the_metric": 1.0}
            return {"val_loss": conf["model"]["x"] ** 2}
''')


def test_a_failing_trial_is_fail_with_its_traceback_and_the_worker_goes_on(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 6}, objective=FAILING)
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = _study(s)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(_finished(study)) == 6
    assert {t.number for t in failed} >= {1, 4, 5}
    assert "RuntimeError: boom in trial 1" in study.trials[1].user_attrs["error"]
    assert "no 'val_loss'" in study.trials[5].user_attrs["error"]
    row = read_csv(s.save_path / "trials" / "trial_1.csv")[0]
    assert row["state"] == "FAIL" and "boom in trial 1" in row["error"]
    assert len(list((s.save_path / "trials").glob("*.csv"))) == len(study.trials)


def test_every_trial_failing_stops_the_worker_instead_of_looping(tmp_path: Path) -> None:
    code = "from hyper_opt import BaseObjective\nclass Objective(BaseObjective):\n    def train(self, t, c):\n        raise ValueError('always')\n"
    s = write_search(tmp_path / "s", optuna={"n_trials": 50, "max_consecutive_failures": 3}, objective=code)
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 1
    assert len(_study(s).trials) == 3
    assert "3 trials failed in a row" in (s.save_path / "logs" / "worker_0.log").read_text()


def test_pruner_prunes_trials(tmp_path: Path) -> None:
    code = textwrap.dedent('''
        from hyper_opt import BaseObjective
        class Objective(BaseObjective):
            def train(self, trial, conf):
                x = conf["model"]["x"]
                for step in range(5):
                    self.report(trial, (x - 2) ** 2 + 5 - step, step)
                return {"val_loss": (x - 2) ** 2}
    ''')
    s = write_search(tmp_path / "s", objective=code, optuna={
        "n_trials": 16, "pruner": {"type": "MedianPruner", "n_startup_trials": 3, "n_warmup_steps": 0}})
    s.cli("optimize", "hyper.yml", "model.yml", check=True)
    study = _study(s)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the median pruner pruned nothing"
    assert all(t.intermediate_values for t in pruned)
    assert all(t.value == t.intermediate_values[max(t.intermediate_values)] for t in pruned)
    assert len(_finished(study)) == 16


def test_ctrl_c_stops_workers_and_leaves_no_running_trial(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": 100}, extra={"local": {"workers": 2}},
                     model={"model": {"x": 0.0}, "sleep": 0.5, "steps": 20})
    proc = subprocess.Popen([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                            cwd=s.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (s.save_path / "hyper_opt.db").exists():
            try:
                if any(t.state == optuna.trial.TrialState.RUNNING for t in _study(s).trials):
                    break
            except Exception:
                pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    study = _study(s)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, err
    assert optuna.trial.TrialState.FAIL in states
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all("interrupted" in t.user_attrs.get("error", "") for t in interrupted)
    assert len(study.trials) < 100


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried_by_the_launcher(tmp_path: Path) -> None:
    code = textwrap.dedent('''
        import os, signal
        from hyper_opt import BaseObjective
        class Objective(BaseObjective):
            def train(self, trial, conf):
                flag = os.path.join(str(self.save_path), "killed_once")
                if trial.number == 1 and not os.path.exists(flag):
                    open(flag, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
                return {"val_loss": conf["model"]["x"] ** 2}
    ''')
    s = write_search(tmp_path / "s", objective=code, optuna={"n_trials": 6, "max_retry": 1},
                     extra={"local": {"workers": 2}})
    s.cli("optimize", "hyper.yml", "model.yml")
    study = _study(s)
    assert study.trials[1].state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].params == study.trials[1].params
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    assert len(_finished(study)) == 6
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_second_study_in_the_same_save_path_is_refused(tmp_path: Path) -> None:
    a = write_search(tmp_path / "s", optuna={"n_trials": 1})
    a.cli("optimize", "hyper.yml", "model.yml", check=True)
    b = write_search(tmp_path / "s", optuna={"n_trials": 1})  # same folder and save_path, a new study name
    proc = b.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2, proc.stderr
    assert "already holds the files of study" in proc.stderr and "Traceback" not in proc.stderr
    worker = subprocess.run([sys.executable, "-m", "hyper_opt.run", "hyper.yml", "model.yml"], cwd=b.folder,
                            text=True, capture_output=True, timeout=60)
    assert worker.returncode == 2 and "needs a save_path of its own" in worker.stderr
    assert sorted(p.name for p in (a.save_path / "trials").glob("*.csv")) == ["trial_0.csv"]


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_a_worker_logs_tail_is_read_from_its_end(tmp_path: Path) -> None:
    """A dead worker's log tail: the right lines, read from the end (a bounded number of bytes,
    counted by the kernel), not the whole log."""
    from hyper_opt.launch.local import TAIL_MAX_BYTES, _tail

    log = tmp_path / "worker_0.log"
    with open(log, "wb") as fh:
        chunk = b"".join(b"line %07d of the worker's log\n" % i for i in range(100_000))  # about 3.2 MB
        for _ in range(20):
            fh.write(chunk)
        fh.write("the last line, é, no newline".encode())
    size = log.stat().st_size
    before = _bytes_read()
    tail = _tail(log, lines=3)
    read = _bytes_read() - before
    assert tail.splitlines() == ["    line 0099998 of the worker's log", "    line 0099999 of the worker's log",
                                 "    the last line, é, no newline"]
    assert read < 64 * 1024, f"read {read} bytes of a {size}-byte log"
    # One huge line: at most TAIL_MAX_BYTES are read; short logs and empty ones whole.
    (tmp_path / "one.log").write_bytes(b"x" * (4 * TAIL_MAX_BYTES) + b"\nend\n")
    before = _bytes_read()
    assert _tail(tmp_path / "one.log", lines=2).splitlines()[-1] == "    end"
    assert _bytes_read() - before <= TAIL_MAX_BYTES + 8192
    (tmp_path / "short.log").write_text("a\r\nb\n")
    assert _tail(tmp_path / "short.log") == "    a\n    b"
    (tmp_path / "empty.log").write_text("")
    assert _tail(tmp_path / "empty.log") == "" and _tail(tmp_path / "missing.log") == ""
