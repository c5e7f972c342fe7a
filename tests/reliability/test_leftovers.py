"""Temporary files of killed writers are removed by the next attempt; those of live writers are kept."""

from __future__ import annotations

import os
from pathlib import Path

from curate.bootstrap import bootstrap_round
from curate.fs import pid_alive, remove_dead_temps
from curate.select import run_selection
from tests.bootstrap_helpers import make_pool_run, record_random_losses
from tests.reliability.runs import clustered_run

DEAD = 999_999_999  # above the kernel's pid_max: never a live process


def test_pid_alive() -> None:
    assert pid_alive(os.getpid()) and not pid_alive(DEAD) and not pid_alive(0)


def test_remove_dead_temps_keeps_live_writers(tmp_path: Path) -> None:
    (tmp_path / f".out.tmp-{DEAD}").mkdir()
    (tmp_path / f".out.tmp-{DEAD}" / "000000.tar").write_bytes(b"partial")
    (tmp_path / f".out.tmp-{DEAD}-x1y2").write_bytes(b"partial")
    (tmp_path / f".out.tmp-{os.getpid()}").mkdir()  # a live writer (this process)
    (tmp_path / ".other.tmp-1").mkdir()  # another output's temp folder
    (tmp_path / "out").mkdir()
    removed = remove_dead_temps(tmp_path, ".out.tmp-")
    assert sorted(p.name for p in removed) == [f".out.tmp-{DEAD}", f".out.tmp-{DEAD}-x1y2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".out.tmp-{os.getpid()}", ".other.tmp-1", "out"])


def test_select_removes_a_killed_attempts_temp_folder(tmp_path: Path) -> None:
    run = clustered_run(tmp_path / "run", 200, dim=8, n_shards=2, k=2)
    sel = run / "selections"
    stale = sel / f".rand.tmp-{DEAD}-abcd"
    stale.mkdir(parents=True)
    (stale / "scores.parquet").write_bytes(b"half a table")
    live = sel / f".rand.tmp-{os.getpid()}-efgh"
    live.mkdir()
    run_selection(run, "random", fraction=0.5, name="rand")
    assert not stale.exists() and live.exists()
    assert (sel / "rand" / "manifest.parquet").exists()


def test_bootstrap_removes_a_killed_attempts_temp_files(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 100)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 1})
    record_random_losses(run, 0)
    dead = DEAD  # temporary names carry their writer's pid (curate.fs.atomic_path)
    stale = [run.manifest_file(1).parent / f".round-0001.parquet.{dead}-k2j3.tmp",
             run.bootstrap_dir / f".state.json.{dead}-a1b2.tmp",
             run.bootstrap_dir / "decisions" / f".round-0001.parquet.{dead}-zz.tmp"]
    other = run.manifest_file(0).parent / ".round-0000.filter-abc.arrow"  # not a temp file of this round
    for p in [*stale, other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    bootstrap_round(run.root, 1)
    assert not any(p.exists() for p in stale) and other.exists()


def test_sweep_keeps_live_writers_and_other_files(tmp_path: Path) -> None:
    """``sweep_dead_temps`` removes atomic_path temporaries of dead writers only; other files stay."""
    from curate.fs import atomic_path, sweep_dead_temps

    dead = tmp_path / f".00001.parquet.{DEAD}-ab_c1.tmp"
    live = tmp_path / f".00002.parquet.{os.getpid()}-xy.tmp"
    mine = [tmp_path / "00001.parquet", tmp_path / ".hidden.tmp", tmp_path / f".a.{DEAD}.tmp"]
    for p in [dead, live, *mine]:
        p.write_bytes(b"x")
    assert sweep_dead_temps(tmp_path, tmp_path / "absent") == [dead]
    assert live.exists() and all(p.exists() for p in mine)
    with atomic_path(tmp_path / "out.json") as tmp:  # the names atomic_path makes are the ones swept
        assert sweep_dead_temps(tmp_path) == [] and tmp.exists()


def test_a_zombie_writer_is_dead_and_its_temp_is_swept(tmp_path: Path) -> None:
    """A writer that has exited but is not reaped yet (a zombie, as the children of a killed command
    can be for a while) writes nothing more: its temporary file goes."""
    import subprocess
    import sys
    import time

    from curate.fs import sweep_dead_temps

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    temp = tmp_path / f".00001.parquet.{child.pid}-zz.tmp"
    temp.write_bytes(b"x")
    assert not pid_alive(child.pid)
    assert sweep_dead_temps(tmp_path) == [temp]
    child.wait()
