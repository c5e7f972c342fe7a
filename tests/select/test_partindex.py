"""The partition index: the blocks that hold each partition, from sparse per-block counts, written in
slices that fit a budget; checked against the dense (block × partition) count matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curate.select.partindex import PartitionIndex, Totals, block_counts, write_index


def _blocks(rng: np.random.Generator, n_blocks: int, k: int) -> list[np.ndarray]:
    """Per block, labels in 0 .. k-1 (skewed, so most partitions sit in few blocks) with −1 for rows
    without a partition; one block has no labelled row and one has 2-D labels (rows in two partitions)."""
    out = []
    for b in range(n_blocks):
        n = int(rng.integers(1, 60))
        lab = np.minimum(rng.zipf(1.6, size=n) - 1, k - 1).astype(np.int64)
        lab = np.where(rng.random(n) < 0.2, -1, (lab * 7 + b) % k)
        if b == 2:
            lab[:] = -1
        if b == 4:
            lab = np.stack([lab, np.where(lab >= 0, (lab + 3) % k, -1)], axis=1)
        out.append(lab)
    return out


def _dense(labels: list[np.ndarray], k: int) -> np.ndarray:
    out = np.zeros((len(labels), k), np.int64)
    for b, lab in enumerate(labels):
        p = lab.reshape(-1)
        np.add.at(out[b], p[p >= 0], 1)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_equals_the_dense_counts_at_every_budget(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n_blocks = 40, 9
    labels = _blocks(rng, n_blocks, k)
    dense = _dense(labels, k)
    sparse = [block_counts(lab) for lab in labels]
    totals = Totals(k)
    for present, counts in sparse:
        assert np.all(np.diff(present) > 0)
        totals.add(present, counts)
    np.testing.assert_array_equal(totals.sizes, dense.sum(axis=0))
    np.testing.assert_array_equal(totals.spread, (dense > 0).sum(axis=0))
    assert (totals.sizes == 0).any()  # some partitions are empty: their lists are empty

    files = []
    for budget in (1, 8, 40, 1 << 20):  # one entry per slice … everything in one slice
        folder = tmp_path / f"b{budget}"
        write_index(folder, n_blocks, lambda b: sparse[b][0], totals.spread, budget)
        index = PartitionIndex(folder)
        for lo in range(k):
            for hi in range(lo + 1, k + 1):
                want = np.flatnonzero(dense[:, lo:hi].sum(axis=1))
                np.testing.assert_array_equal(index.blocks(lo, hi), want)
        files.append((folder / "blocks.npy").read_bytes())
    assert all(f == files[0] for f in files)  # the same index whatever the slices


def test_no_partitions_and_labels_beyond_the_count(tmp_path: Path) -> None:
    """A pool where no row has a partition gives an empty index; a label at or past ``k`` grows the
    totals instead of failing."""
    totals = Totals(3)
    totals.add(*block_counts(np.full(5, -1)))
    write_index(tmp_path / "empty", 1, lambda b: np.zeros(0, np.int64), totals.spread, 1 << 10)
    index = PartitionIndex(tmp_path / "empty")
    assert len(index.blocks(0, 3)) == 0
    totals.add(*block_counts(np.array([0, 4, 4])))
    np.testing.assert_array_equal(totals.sizes, [1, 0, 0, 0, 2])
    np.testing.assert_array_equal(totals.spread, [1, 0, 0, 0, 1])


def test_an_unfinished_index_is_not_taken_for_a_whole_one(tmp_path: Path) -> None:
    """``offsets.npy`` is written last: a folder that has only the lists (a write killed between the two)
    is not an index, and writing again completes it."""
    folder = tmp_path / "ix"
    write_index(folder, 2, [np.array([0, 1]), np.array([1])].__getitem__, np.array([1, 2]), 1 << 10)
    (folder / "offsets.npy").unlink()
    assert not PartitionIndex.exists(folder)
    write_index(folder, 2, [np.array([0, 1]), np.array([1])].__getitem__, np.array([1, 2]), 1 << 10)
    assert PartitionIndex.exists(folder)
    np.testing.assert_array_equal(PartitionIndex(folder).blocks(1, 2), [0, 1])


def _greedy_groups(sizes: np.ndarray, row_bytes: int, memory: int) -> list[tuple[int, int]]:
    """The grouping rule, one partition at a time: the next partition joins the group while the group's
    bytes stay within a quarter of the memory; a partition larger than that is a group of its own."""
    groups: list[list[int]] = []
    held = 0
    for p in np.flatnonzero(sizes):
        b = int(sizes[p]) * row_bytes
        if groups and held + b <= memory // 4:
            groups[-1].append(int(p))
            held += b
        else:
            groups.append([int(p)])
            held = b
    return [(g[0], g[-1] + 1) for g in groups]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_partition_tasks_follow_the_greedy_grouping(seed: int) -> None:
    from curate.select.pipeline import _partition_tasks

    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(500) < 0.3, 0, rng.zipf(1.5, 500)).astype(np.int64)
    sizes[rng.integers(0, 500)] = 10_000  # larger than a group may hold
    first = {int(p): int(min(sizes[p], 16)) for p in np.flatnonzero(sizes)}
    for memory in (4 * 8, 4 * 2048, 4 * 100_000, 1 << 40):
        tasks = _partition_tasks(sizes, first, 8, memory)
        assert [(lo, hi) for _, lo, hi, _ in tasks] == _greedy_groups(sizes, 8, memory)
        assert [t for t, *_ in tasks] == list(range(len(tasks)))
        assert {p: n for *_, f in tasks for p, n in f.items()} == first
        assert all(not f for *_, f in _partition_tasks(sizes, {}, 8, memory))
