"""Crash and resume: SIGKILL ``curate select``, ``curate bootstrap --round N`` and ``curate reshard`` at seeded
random points, then rerun the same command.

After every kill each file under a final name holds either its bytes from before the command or its
bytes from an uninterrupted run (never a partial write); the rerun exits 0 and leaves every output
byte-identical to the uninterrupted run. ``run.json`` is compared without its command log, which records
when each command ran (and so legitimately gains entries with each attempt).

Commands run in processes forked from a server that has already imported curate (``runs.Command``),
so the kill times, drawn in [0.05, 1] of the uninterrupted wall time, land in the commands' work.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from curate.bootstrap import bootstrap_round
from tests.bootstrap_helpers import make_pool_run, record_random_losses
from tests.reliability.runs import (
    KillReport,
    clustered_run,
    hidden,
    kill_and_rerun,
    run_to_end,
    same_outputs,
    snapshot,
    source_shards,
    visible,
)

pytestmark = pytest.mark.slow
KILLS = 10


def _loop(tmp_path: Path, base: Path, args_for: Callable[[Path], list[str]], seed: int) -> KillReport:
    """Reference run on a copy of ``base``, a second one to check determinism, then the kill loop."""
    work = tmp_path / "work"
    err = tmp_path / "stderr.txt"

    def prepare() -> Path:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work, symlinks=True)
        return work

    before = snapshot(prepare())
    code, msg, first = run_to_end(args_for(work), err)  # also starts the fork server (imports)
    assert code == 0, msg
    reference = snapshot(work)
    assert not hidden(reference), hidden(reference)
    assert same_outputs(visible(reference), visible(before)), "the command wrote nothing"
    prepare()
    code, msg, wall = run_to_end(args_for(work), err)
    assert code == 0, msg
    assert not same_outputs(snapshot(work), reference), "two uninterrupted runs differ"
    wall = min(first, wall)
    rep = kill_and_rerun(args_for(work), prepare, reference, before, wall, err, n=KILLS, seed=seed)
    assert rep.kills >= KILLS // 2, rep  # most kills landed while the command was running
    left = sorted(set(rep.leftovers))  # including '.run.json.<pid>-*.tmp' of a kill inside RunDir.update
    assert not left, f"temporary files left after the reruns: {left[:5]}"
    return rep


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("clipcov", ["--fraction", "0.3", "--partition", "kmeans:12"]),
        # a 1 MiB budget: one pass-2 task per partition and spilled picks, so kills land between tasks
        # and the rerun resumes from the finished ones (the work folder under RUN/selections/)
        ("clipcov", ["--fraction", "0.3", "--partition", "kmeans:12", "--variant", "greedy", "--memory", "1M"]),
        ("semdedup", ["--eps", "0.05"]),
        ("negcliploss", ["--fraction", "0.3", "--temperature", "0.05", "--batch-size", "1000", "--repeats", "3"]),
    ],
)
def test_select_killed_and_rerun(tmp_path: Path, method: str, opts: list[str]) -> None:
    base = clustered_run(tmp_path / "base", 10_000)
    rep = _loop(tmp_path, base, lambda r: ["select", "--run", str(r), "--method", method, *opts, "--json"], seed=1)
    print(f"select {method}: {rep}")


@pytest.mark.parametrize(("method", "opts"), [("normsim", ["--fraction", "0.3"]), ("image-filter", [])])
def test_select_toward_a_target_killed_and_rerun(tmp_path: Path, method: str, opts: list[str]) -> None:
    base = clustered_run(tmp_path / "base", 10_000)
    target = clustered_run(tmp_path / "target", 2_000, n_shards=2, seed=1)  # another draw, same model
    args = ["--method", method, "--target", str(target), *opts, "--json"]
    rep = _loop(tmp_path, base, lambda r: ["select", "--run", str(r), *args], seed=4)
    print(f"select {method}: {rep}")


def test_metaclip_select_killed_and_rerun(tmp_path: Path) -> None:
    """metaclip reads captions back from the shards (pass 1), then rescans: killed anywhere, same bytes."""
    n, n_shards = 10_000, 8
    urls = source_shards(tmp_path / "src", n, n_shards, member_bytes=500,
                         caption=lambda i: f"item {i % 97} of set {i % 13}, shade {i % 7}")
    base = clustered_run(tmp_path / "base", n, n_shards=n_shards, shard_urls=urls)
    meta = tmp_path / "meta.txt"
    meta.write_text("".join(f"{k}\n" for k in ["item", "set", "shade", "of set", *map(str, range(100))]))
    rep = _loop(tmp_path, base, lambda r: ["select", "--run", str(r), "--method", "metaclip", "--metadata", str(meta),
                                           "--cap", "150", "--json"], seed=4)
    print(f"select metaclip: {rep}")


def test_bootstrap_round_killed_and_rerun(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "base", 60_000, per_shard=5_000, dim=4)
    for r in range(2):  # warm-up round 0, preparation round 1: round 2 is the first mutation round
        if r:
            record_random_losses(run, r - 1, batch_size=100, seed=3)
        bootstrap_round(run.root, r, knobs={"warmup_rounds": 1}, seed=7)
    record_random_losses(run, 1, batch_size=100, seed=3)
    rep = _loop(tmp_path, run.root, lambda r: ["bootstrap", "--run", str(r), "--round", "2", "--json"], seed=2)
    print(f"bootstrap: {rep}")


def test_reshard_killed_and_rerun(tmp_path: Path) -> None:
    n, n_shards = 4_000, 4
    urls = source_shards(tmp_path / "src", n, n_shards, member_bytes=2000)
    base = clustered_run(tmp_path / "base" / "run", n, n_shards=n_shards, shard_urls=urls)
    code, msg, _ = run_to_end(["select", "--run", str(base), "--method", "random", "--fraction", "0.6", "--json"],
                              tmp_path / "stderr.txt")
    assert code == 0, msg
    rep = _loop(  # the new shards go beside the run (never inside it); both are under the copied folder
        tmp_path, base.parent,
        lambda r: ["reshard", "--manifest", str(r / "run" / "selections" / "random-f0.6"), "--out", str(r / "subset"),
                   "--shard-size", "400", "--json"],
        seed=3,
    )
    print(f"reshard: {rep}")
