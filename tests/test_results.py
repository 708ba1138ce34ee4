"""Atomic result files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyper_opt.results import atomic_open, atomic_write_text


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "a.csv"
        atomic_write_text(path, "one\n")
        atomic_write_text(path, "two\n")
        assert path.read_text() == "two\n"
        assert path.stat().st_mode & 0o777 == 0o644, "readable by the group on a shared cluster"
        assert [p.name for p in path.parent.iterdir()] == ["a.csv"], "no temporary file left behind"
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.bin"]
