"""``curate bootstrap --engine ray``: the passes over the loss table as Ray tasks on a local Ray (2 CPUs) write
the files of the in-memory rounds, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bootstrap_helpers import make_pool_run
from test_bootstrap_partitions import _assert_same, record

from curate.bootstrap import bootstrap_round
from curate.cli.app import main
from curate.engines import make_engine
from curate.rundir import RunDir

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'curate[ray]')")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def engine():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    with make_engine("ray", device="cpu") as eng:
        yield eng
    ray.shutdown()


def test_ray_tasks_write_the_local_files(engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_pool_run(tmp_path / "base", 900, per_shard=80)
    local, remote, cli = tmp_path / "local", tmp_path / "ray", tmp_path / "cli"
    for p in (local, remote, cli):
        shutil.copytree(base.root, p)
    for r in range(4):
        if r:
            for p in (local, remote, cli):
                record(RunDir(p), r - 1, seed=3)
        kw = {"knobs": {"warmup_rounds": 1, "t_cos": 1}} if r == 0 else {}
        bootstrap_round(local, r, partition_rows=60, **kw)
        bootstrap_round(remote, r, partition_rows=60, engine=engine, **kw)
        args = ["--warmup-rounds", "1", "--t-cos", "1"] if r == 0 else []
        assert main(["bootstrap", "--run", str(cli), "--round", str(r), "--engine", "ray", "--json", *args]) == 0
        capsys.readouterr()
        _assert_same(local, remote)
        _assert_same(local, cli)  # the CLI's default parts: the same files
