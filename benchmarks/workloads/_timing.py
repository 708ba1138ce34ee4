"""When ``train`` ran in this process, written as JSON when the process exits.

Standard library only: objectives running under hyper_opt, echo-opt (its own virtual
environment) and plain optuna all import it. Each process writes one file,
``<timing_dir>/<pid>.json``: ``{"pid", "label", "spans": [[start, end], ...]}`` with wall-clock
times (``time.time()``), so that the benchmark can put the spans of several processes and the
launch time of the workers on one time line.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Recorder:
    def __init__(self) -> None:
        self.folder: Path | None = None
        self.label = ""
        self.spans: list[tuple[float, float]] = []
        self._registered = False

    def configure(self, folder: str | os.PathLike[str] | None, label: str = "") -> None:
        if not folder:
            return
        self.folder = Path(folder)
        self.label = label or self.label
        if not self._registered:
            atexit.register(self.write)
            self._registered = True

    @contextmanager
    def span(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.spans.append((start, time.time()))

    def write(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "label": self.label, "spans": self.spans}))
        os.replace(tmp, path)


RECORDER = Recorder()
RECORDER.configure(os.environ.get("BENCH_TIMING_DIR"))


def toy_loss(x: float, y: int) -> float:
    """The value every benchmark objective returns: a bowl with its minimum at (2, 3)."""
    return (x - 2.0) ** 2 + (y - 3) ** 2
