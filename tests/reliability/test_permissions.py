"""Every file and folder curate writes gets the mode the process umask gives (like ``open`` and ``mkdir``).

Before, selection folders were created ``drwx------`` (``tempfile.mkdtemp``), loss tables ``-rw-------``
(``mkstemp``), the report ``0644`` whatever the umask, and other files took the umask the process had when
curate was imported: a teammate or a worker running as another user could not read them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from curate.cli.app import main
from curate.rundir import RunDir
from curate.trainer import LossRecorder
from tests.bootstrap_helpers import manifest_uids
from tests.reliability.runs import clustered_run, source_shards


def _every_command(root: Path) -> None:
    """The writing commands on a small run under ``root``: select, set algebra, export, reshard, bootstrap,
    losses (the trainer kit), report."""
    urls = source_shards(root / "src", 200, 2, member_bytes=64)
    run = clustered_run(root / "run", 200, dim=16, n_shards=2, k=3, shard_urls=urls)
    r = str(run)
    assert main(["select", "--run", r, "--method", "random", "--fraction", "0.5", "--json"]) == 0
    assert main(["select", "--run", r, "--method", "clip-score", "--fraction", "0.5", "--json"]) == 0
    assert main(["select", "--run", r, "--method", "union", "--of", "random-f0.5", "clip-score-f0.5", "--json"]) == 0
    sel = str(run / "selections" / "random-f0.5")
    assert main(["export", "--manifest", sel, "--format", "datacomp", "--json"]) == 0
    assert main(["export", "--manifest", sel, "--format", "keys", "--out", str(root / "exports" / "k.txt"),
                 "--json"]) == 0
    assert main(["reshard", "--manifest", sel, "--out", str(root / "subset"), "--shard-size", "40", "--json"]) == 0
    assert main(["bootstrap", "--run", r, "--round", "0", "--warmup-rounds", "0", "--json"]) == 0
    uids = manifest_uids(RunDir(run), 0)
    with LossRecorder(run, 0) as rec:
        rec.add(uids, np.linspace(0.1, 2.0, len(uids)), batch=0)
    assert main(["bootstrap", "--run", r, "--round", "1", "--json"]) == 0
    assert main(["report", "--run", r, "--thumbs", "2", "--json"]) == 0


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path: Path, mask: int, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "work"
    old = os.umask(mask)
    try:
        root.mkdir()
        _every_command(root)
    finally:
        os.umask(old)
    capsys.readouterr()
    want = {"file": 0o666 & ~mask, "dir": 0o777 & ~mask}
    wrong = []
    seen = {"file": 0, "dir": 0}
    for p in sorted(root.rglob("*")):
        kind = "dir" if p.is_dir() else "file"
        seen[kind] += 1
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode != want[kind]:
            wrong.append(f"{p.relative_to(root)}: {mode:o}, want {want[kind]:o}")
    assert not wrong, wrong
    assert seen["dir"] >= 10 and seen["file"] >= 20, seen  # selections, exports, shards, bootstrap, losses, report
    for must in ("run/selections/random-f0.5", "run/selections/random-f0.5/subset.npy", "exports/k.txt",
                 "subset/000000.tar", "run/losses/round-0000/part-00000.parquet", "run/reports/report.html",
                 "run/manifests/round-0001.parquet", "run/bootstrap/state.json"):
        assert (root / must).exists(), must
