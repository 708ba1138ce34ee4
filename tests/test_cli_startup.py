"""What a worker or the local launcher pays at start-up and while it polls (no timings asserted)."""

from __future__ import annotations

import io
import subprocess
import sys

from hyper_opt.launch.local import _Progress


def test_a_worker_imports_only_its_own_command() -> None:
    code = ("import sys; from hyper_opt.cli.main import build_parser; "
            "p = build_parser('run'); p.parse_args(['run', 'h.yml', 'm.yml']); "
            "print(sorted(m for m in ('hyper_opt.report', 'hyper_opt.plots', 'hyper_opt.rerun', "
            "'hyper_opt.metric_learning.evaluate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "report" in subprocess.run([sys.executable, "-m", "hyper_opt", "--help"], capture_output=True,
                                      text=True, check=True).stdout


def test_progress_reads_the_best_trial_only_when_it_draws_a_line() -> None:
    calls = []

    def best() -> str:
        calls.append(1)
        return "best 1 (trial 0)"

    stream = io.StringIO()  # not a terminal: a line at most every 10 s, and at the end
    progress = _Progress(10, stream)
    progress.show(1, 1, 0, best)  # first line
    for n in range(2, 10):
        progress.show(n, 1, 0, best)  # within 10 s: no line, no query
    progress.show(10, 0, 0, best)  # the last line
    assert len(calls) == 2
    assert stream.getvalue().count("\n") == 2 and "best 1 (trial 0)" in stream.getvalue()
