"""The run folder's atomic writers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from curate.errors import InputError
from curate.fs import atomic_path, read_json, write_json


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    old = os.umask(0)
    os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temp files left


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_json_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="corrupt JSON"):
        read_json(bad)
