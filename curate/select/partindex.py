"""Where each partition's rows are: pass 1's per-block partition counts, turned around on disk.

Pass 1 keeps, per block, the partitions present in the block and their row counts (sparse: a block
holds at most one entry per row). The driver adds them up into the rows per partition (one number per
partition) and writes, for every partition, the sorted list of the blocks that hold it. That list is a
counting sort over the blocks, done for one slice of partitions at a time so that the slice fits a
memory budget. A pass-2 task memory-maps the lists and reads only its own partitions' slice.

Nothing here holds a (block × partition) matrix: with √N k-means clusters that matrix grows as N^1.5,
with N/128 clusters as N². On disk the lists hold one entry per (block, partition) pair that has rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from curate.fs import atomic_path

ENTRY_BYTES = 4  # what an entry of the lists costs against the budget (an int32 block id)
_ITEM = np.dtype(np.int32).itemsize  # bytes of an entry in the files


def block_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The partitions among ``labels`` (any shape; −1 is none) and their row counts, by partition."""
    p = np.asarray(labels).reshape(-1)
    present, counts = np.unique(p[p >= 0], return_counts=True)
    return present.astype(np.int64), counts.astype(np.int64)


class Totals:
    """Rows per partition and blocks per partition, added up block by block (``k`` partitions)."""

    def __init__(self, k: int) -> None:
        self.sizes = np.zeros(k, np.int64)
        self.spread = np.zeros(k, np.int64)

    def add(self, present: np.ndarray, counts: np.ndarray) -> None:
        if len(present) and int(present[-1]) >= len(self.sizes):  # labels beyond the announced count
            grow = int(present[-1]) + 1 - len(self.sizes)
            self.sizes = np.concatenate([self.sizes, np.zeros(grow, np.int64)])
            self.spread = np.concatenate([self.spread, np.zeros(grow, np.int64)])
        self.sizes[present] += counts
        self.spread[present] += 1


def write_index(folder: Path, n_blocks: int, present_of: Callable[[int], np.ndarray], spread: np.ndarray,
                budget: int, sizes: np.ndarray | None = None) -> None:
    """``folder/blocks.npy`` (each partition's blocks, in partition then block order) and
    ``folder/offsets.npy`` (where each partition's list starts), in slices of at most ``budget`` bytes;
    with ``sizes`` (rows per partition) also ``folder/sizes.npy``, so that a reader can allocate a
    partition's rows before it reads them.

    ``present_of(b)`` gives block ``b``'s partitions, sorted. It is called once per block: the blocks'
    partitions go into one spool file; each slice maps it a group of blocks at a time (at most a quarter
    of the budget) and reads only its range of each block. ``spread`` is the blocks per partition.
    ``offsets.npy`` is written last, so its presence means the index is whole.
    """
    fmt = np.lib.format
    k = len(spread)
    offsets = np.zeros(k + 1, np.int64)
    np.cumsum(spread, out=offsets[1:])
    total = int(offsets[-1])
    cap = max(budget // ENTRY_BYTES, 1)
    folder.mkdir(parents=True, exist_ok=True)
    spool = folder / "present.tmp"
    starts = np.zeros(n_blocks + 1, np.int64)
    with open(spool, "wb") as fh:
        for blk in range(n_blocks):
            present = np.asarray(present_of(blk), np.int32)
            fh.write(present.tobytes())
            starts[blk + 1] = starts[blk] + len(present)
    groups = _block_groups(starts, max(cap // 4, 1))
    with atomic_path(folder / "blocks.npy") as tmp, open(tmp, "wb") as fh:
        fmt.write_array_header_1_0(fh, {"descr": fmt.dtype_to_descr(np.dtype(np.int32)),
                                        "fortran_order": False, "shape": (total,)})
        data_at = fh.tell()
        fh.truncate(data_at + total * _ITEM)
        a = 0
        while a < k:
            # the partitions a .. b-1 whose lists fit the budget together (at least one partition)
            b = int(np.searchsorted(offsets, offsets[a] + cap, side="right")) - 1
            b = min(max(b, a + 1), k)
            buf = np.empty(int(offsets[b] - offsets[a]), np.int32)
            fill = offsets[a:b] - offsets[a]
            if len(buf):
                for g0, g1 in itertools.pairwise(groups):  # blocks in order: every list comes out sorted
                    # a group of blocks mapped at a time: the pages its searches touched leave with it
                    base = int(starts[g0])
                    if starts[g1] == base:  # no block of the group has a partition
                        continue
                    flat = np.memmap(spool, np.int32, "r", offset=base * _ITEM, shape=(int(starts[g1]) - base,))
                    for blk in range(g0, g1):
                        present = flat[starts[blk] - base : starts[blk + 1] - base]
                        i, j = np.searchsorted(present, [a, b])
                        if i < j:
                            at = np.asarray(present[i:j], np.int64) - a  # each partition once per block
                            buf[fill[at]] = blk
                            fill[at] += 1
                    del flat, present
                fh.seek(data_at + int(offsets[a]) * _ITEM)
                fh.write(memoryview(buf))  # no copy of the slice
            a = b
    spool.unlink()
    if sizes is not None:
        with atomic_path(folder / "sizes.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(sizes, np.int64))
    with atomic_path(folder / "offsets.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, offsets)


def _block_groups(starts: np.ndarray, most: int) -> list[int]:
    """Edges of runs of consecutive blocks whose spooled entries add up to at most ``most`` (a block
    with more is a group of its own)."""
    edges, n = [0], len(starts) - 1
    while edges[-1] < n:
        g0 = edges[-1]
        g1 = int(np.searchsorted(starts, starts[g0] + most, side="right")) - 1
        edges.append(min(max(g1, g0 + 1), n))
    return edges


class PartitionIndex:
    """The blocks that hold each partition, memory-mapped from a folder :func:`write_index` wrote."""

    def __init__(self, folder: Path) -> None:
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.lists = np.load(folder / "blocks.npy", mmap_mode="r")
        sizes = folder / "sizes.npy"
        self.sizes = np.load(sizes, mmap_mode="r") if sizes.exists() else None

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / "offsets.npy").exists()

    def blocks(self, lo: int, hi: int) -> np.ndarray:
        """The blocks that hold any of partitions ``lo .. hi-1``, sorted."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        return np.unique(np.asarray(self.lists[a:b]))

    def rows(self, p: int) -> int:
        """Rows of partition ``p`` (an index written with ``sizes``)."""
        if self.sizes is None:
            raise ValueError("this partition index was written without the rows per partition")
        return int(self.sizes[p]) if p < len(self.sizes) else 0
