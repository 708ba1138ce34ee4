"""Benchmark 3: time to first trial on the local Slurm cluster, and how much of a job is training.

``hyper-opt optimize HYPER.yml MODEL.yml`` with a ``slurm`` section (one job, one worker) on a
study of 6 trials that each sleep 10 s in ``train``. Measured:

* ``optimize`` returns (config checked, study created, job submitted through submitit);
* queue wait (sacct Submit -> Start; other people's jobs share the cluster);
* job start -> first trial RUNNING (the trial's ``datetime_start``): the job script, Python and
  submitit start-up, the worker process, imports, opening the study, claiming a trial;
* first trial RUNNING -> first ``train`` (suggesting and patching the config);
* the fraction of the job's wall time (sacct Start -> End) spent inside ``train``.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import yaml

from benchmarks import common

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def _sacct(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,Submit,Start,End"],
                          capture_output=True, text=True, timeout=60)
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            return dict(zip(("state", "submit", "start", "end"), (p.strip() for p in parts)))
    return {}


def _epoch(text: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def run_once(url: str, *, trials: int, seconds: float, timeout_s: float = 600, keep: bool = False) -> dict[str, Any]:
    import optuna

    study = common.new_study_name("slurm")
    with common.scratch("slurm", keep=keep) as folder:
        timing_dir = folder / "timing"
        slurm = {"jobs": 1, "batch": {"t": "00:15:00", "J": "hyper_opt-bench", "mem": "1G"}}
        hyper, model = common.write_hyper_opt_search(folder / "search", url=url, study=study, n_trials=trials,
                                                     sleep=seconds, timing_dir=timing_dir, extra={"slurm": slurm})
        data = yaml.safe_load(hyper.read_text())
        data["optuna"]["reload"] = 0  # a new study, as a user's first optimize
        hyper.write_text(yaml.safe_dump(data, sort_keys=False))
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", str(hyper), str(model)],
                              cwd=folder, capture_output=True, text=True, timeout=300)
        t_submitted = time.time()
        if proc.returncode != 0:
            raise common.RunFailed(f"hyper-opt optimize exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        jobs = json.loads((folder / "search" / "results" / "jobs.json").read_text())
        job_id = jobs[0]["job_id"]
        try:
            deadline = time.monotonic() + timeout_s
            info: dict[str, str] = {}
            while time.monotonic() < deadline:
                info = _sacct(job_id)
                if info.get("state", "").split(" ")[0] in TERMINAL and info.get("end", "Unknown") != "Unknown":
                    break
                time.sleep(2.0)
            else:
                subprocess.run(["scancel", job_id], capture_output=True)
                raise common.RunFailed(f"Slurm job {job_id} did not finish in {timeout_s:.0f} s ({info})")
            storage = optuna.storages.RDBStorage(url)
            study_id = storage.get_study_id_from_name(study)
            trials_ = storage.get_all_trials(study_id, deepcopy=False)
            storage.remove_session()
            starts = sorted(t.datetime_start.timestamp() for t in trials_ if t.datetime_start)
            spans = sorted(s for proc_spans in common.read_spans(timing_dir) for s in proc_spans)
            submit, start, end = _epoch(info["submit"]), _epoch(info["start"]), _epoch(info["end"])
            first_running = starts[0] if starts else None
            train_s = sum(e - s for s, e in spans)
            return {
                "job_id": job_id, "state": info.get("state"), "trials": len(trials_),
                "finished": sum(t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED") for t in trials_),
                "optimize_s": t_submitted - t0,
                "queue_s": (start - submit) if start and submit else None,
                "job_start_to_first_running_s": (first_running - start) if first_running and start else None,
                "first_running_to_train_s": (spans[0][0] - first_running) if spans and first_running else None,
                "time_to_first_trial_s": (first_running - t0) if first_running else None,
                "time_to_first_train_s": (spans[0][0] - t0) if spans else None,
                "job_wall_s": (end - start) if end and start else None,
                "train_s": train_s,
                "train_fraction": train_s / (end - start) if end and start and end > start else None,
                "after_last_train_s": (end - spans[-1][1]) if spans and end else None,
                "note": "sacct times have 1 s resolution",
            }
        finally:
            common.delete_study(url, study)


def run(*, quick: bool, repeats: int | None = None, trials: int = 6, seconds: float = 10.0) -> dict[str, Any]:
    url = common.ensure_pg_env()
    repeats = repeats or (1 if quick else 3)
    load_start = common.load_average()
    runs = []
    for i in range(repeats):
        r = common.retrying(lambda: run_once(url, trials=trials, seconds=seconds), url=url,
                            what=f"slurm run {i + 1}")
        runs.append(r)
        print(f"  job {r['job_id']}: optimize {r['optimize_s']:.1f} s, queue {common.fmt_s(r['queue_s'])} s, "
              f"first trial RUNNING after {common.fmt_s(r['time_to_first_trial_s'])} s, job wall "
              f"{common.fmt_s(r['job_wall_s'])} s, in train {100 * (r['train_fraction'] or 0):.0f}%", file=sys.stderr)
    return {"runs": runs, "trials": trials, "trial_seconds": seconds,
            "load": {"start": load_start, "end": common.load_average()}}


def markdown(data: dict[str, Any]) -> str:
    runs = data["runs"]

    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    rows = [
        ["`hyper-opt optimize` returns (validate, create study, submit)", common.fmt_s(med("optimize_s"))],
        ["queue wait (sacct Submit -> Start)", common.fmt_s(med("queue_s"))],
        ["job start -> first trial RUNNING", common.fmt_s(med("job_start_to_first_running_s"))],
        ["first trial RUNNING -> first `train`", common.fmt_s(med("first_running_to_train_s"), digits=2)],
        ["**`optimize` -> first trial RUNNING**", f"**{common.fmt_s(med('time_to_first_trial_s'))}**"],
        ["job wall time (sacct Start -> End)", common.fmt_s(med("job_wall_s"))],
        [f"time inside `train` ({data['trials']} x {data['trial_seconds']:.0f} s)", common.fmt_s(med("train_s"))],
        ["last `train` end -> job end", common.fmt_s(med("after_last_train_s"))],
        ["**fraction of the job inside `train`**",
         f"**{100 * med('train_fraction'):.1f}%**" if med("train_fraction") is not None else "-"],
    ]
    jobs = ", ".join(f"{r['job_id']} ({r['state']}, {r['finished']} finished)" for r in runs)
    return (common.markdown_table(["phase", f"seconds (median of {len(runs)})"], rows)
            + f"\n\nJobs: {jobs}. sacct times have a resolution of 1 s.")
