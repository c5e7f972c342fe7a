"""Exact rankings over per-sample scalars in bounded memory.

Two pieces, both exact and both free of any dependence on how the rows arrive:

* :class:`RowValues` collects ``(row, values...)`` entries in any order and gives them back by row
  range, sorted by row: in memory while they fit the budget, else spilled to one file per row range.
* :func:`top_k` ranks rows by a float key, best first, ties by the lower pool row (what a stable
  ``argsort(-key)`` over the pool gives), from sorted runs that may live on disk: the runs are merged
  a chunk at a time, so memory is the number of runs times the chunk, whatever the pool size.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from curate.fs import atomic_path

RUN_DTYPE = np.dtype([("key", "<u8"), ("row", "<i8")])  # one entry of a sorted run file
SPILL_FACTOR = 3  # RowValues: peak bytes per entry / stored bytes (pieces, their concatenation, the sorted copy)
MERGE_ENTRY_BYTES = 64  # a merge step per entry in flight: chunk read, concatenation, sort order, sorted copy
MIN_CHUNK = 1 << 10  # entries read from a run at a time, at least
MAX_CHUNK = 1 << 16  # ... and at most
_INDEX = "__index"  # RowValues' spill files: the entries' row index (a column may be called "row")


def desc_key(values: np.ndarray) -> np.ndarray:
    """``uint64`` keys whose ascending order is ``values`` descending (-0.0 equals 0.0; NaN sorts last)."""
    v = np.asarray(values, np.float64) + 0.0  # -0.0 -> 0.0, as comparisons see them
    b = v.view(np.uint64)
    asc = np.where(b >> np.uint64(63), ~b, b | np.uint64(1 << 63))  # ascending float -> ascending uint
    key = ~asc
    key[np.isnan(v)] = np.iinfo(np.uint64).max
    return key


class RowValues:
    """``(row, columns...)`` entries gathered in any order, read back by row range, sorted by row.

    ``bucket_rows`` cuts the row space into ranges; when the entries held would pass ``memory`` bytes
    (counting the copies a spill or a sort makes: :data:`SPILL_FACTOR`) they go to one ``.npz`` per
    range under ``spill_dir`` (appended in pieces), so reading a range loads one range. A range read
    back must fit the same budget: choose ``bucket_rows`` so that one range holds a bounded share.
    """

    def __init__(self, dtypes: dict[str, np.dtype | str], n_rows: int, bucket_rows: int,
                 memory: int, spill_dir: Path) -> None:
        self.dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        entry = 8 + sum(d.itemsize for d in self.dtypes.values())
        self.n_rows, self.bucket_rows = n_rows, bucket_rows
        self.max_entries = max(1, memory // (SPILL_FACTOR * entry))
        self.spill_dir = spill_dir
        shutil.rmtree(spill_dir, ignore_errors=True)  # pieces of a killed earlier attempt: this one starts over
        self._mem: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._count = 0
        self._bucket_counts: dict[int, int] = {}  # entries spilled per bucket
        self._spilled = False
        self._pieces = 0
        self._sorted: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._cache: tuple[int, np.ndarray, dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self._count

    def append(self, rows: np.ndarray, **cols: np.ndarray) -> None:
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return
        cols = {k: np.asarray(cols[k], self.dtypes[k]) for k in self.dtypes}
        self._count += len(rows)
        self._mem.append((rows, cols))
        if sum(len(r) for r, _ in self._mem) > self.max_entries:
            self._spill()

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._spilled = True
        rows = np.concatenate([r for r, _ in self._mem])
        cols = {k: np.concatenate([c[k] for _, c in self._mem]) for k in self.dtypes}
        self._mem = []
        bucket = rows // self.bucket_rows
        order = np.argsort(bucket, kind="stable")
        bucket, rows = bucket[order], rows[order]
        cols = {k: v[order] for k, v in cols.items()}
        edges = np.r_[0, np.flatnonzero(np.diff(bucket)) + 1, len(rows)]
        for a, b in itertools.pairwise(edges):
            self._bucket_counts[int(bucket[a])] = self._bucket_counts.get(int(bucket[a]), 0) + int(b - a)
            path = self.spill_dir / f"b{int(bucket[a]):08d}-{self._pieces:06d}.npz"
            with open(path, "wb") as fh:
                np.savez(fh, **{_INDEX: rows[a:b]}, **{k: v[a:b] for k, v in cols.items()})
        self._pieces += 1

    def _load_bucket(self, b: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows, cols = [], {k: [] for k in self.dtypes}
        for path in sorted(self.spill_dir.glob(f"b{b:08d}-*.npz")):
            with np.load(path) as z:
                rows.append(z[_INDEX])
                for k in self.dtypes:
                    cols[k].append(z[k])
        if not rows:
            return np.zeros(0, np.int64), {k: np.zeros(0, v) for k, v in self.dtypes.items()}
        r = np.concatenate(rows)
        order = np.argsort(r, kind="stable")
        return r[order], {k: np.concatenate(v)[order] for k, v in cols.items()}

    def fits(self, b: int) -> bool:
        """Whether bucket ``b`` can be read back whole within the budget (always, while nothing spilled)."""
        if self._spilled and self._mem:
            self._spill()
        return not self._spilled or self._bucket_counts.get(b, 0) <= self.max_entries

    def pieces(self, b: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Bucket ``b``'s entries one spilled piece at a time (each within the budget), in no order."""
        if not self._spilled:
            rows, cols = self.slice(b * self.bucket_rows, min(self.n_rows, (b + 1) * self.bucket_rows))
            yield rows, cols
            return
        if self._mem:
            self._spill()
        for path in sorted(self.spill_dir.glob(f"b{b:08d}-*.npz")):
            with np.load(path) as z:
                yield z[_INDEX], {k: z[k] for k in self.dtypes}

    def slice(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The entries with ``start <= row < stop``, sorted by row (the range must not cross a bucket
        edge when spilled)."""
        if self._spilled:
            if self._mem:
                self._spill()
            b = start // self.bucket_rows
            if (stop - 1) // self.bucket_rows != b:
                raise ValueError("a slice of spilled rows must lie in one bucket")
            if self._cache is None or self._cache[0] != b:
                self._cache = (b, *self._load_bucket(b))
            rows, cols = self._cache[1], self._cache[2]
        else:
            if self._sorted is None:
                if self._mem:
                    r = np.concatenate([x for x, _ in self._mem])
                    order = np.argsort(r, kind="stable")
                    c = {k: np.concatenate([y[k] for _, y in self._mem])[order] for k in self.dtypes}
                    self._sorted = (r[order], c)
                else:
                    self._sorted = (np.zeros(0, np.int64), {k: np.zeros(0, v) for k, v in self.dtypes.items()})
                self._mem = []
            rows, cols = self._sorted
        a, b = np.searchsorted(rows, [start, stop])
        return rows[a:b], {k: v[a:b] for k, v in cols.items()}

    def close(self) -> None:
        self._mem, self._sorted, self._cache = [], None, None
        if self._spilled:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


class MemRun:
    """A sorted run of ``(key, row)`` held in memory (ascending key, then row)."""

    def __init__(self, key: np.ndarray, row: np.ndarray) -> None:
        self.key, self.row = np.asarray(key, np.uint64), np.asarray(row, np.int64)

    @classmethod
    def of(cls, values: np.ndarray, rows: np.ndarray) -> MemRun:
        """``rows`` sorted by ``values`` descending (ties: lower row first)."""
        key = desc_key(values)
        order = np.lexsort((rows, key))
        return cls(key[order], np.asarray(rows, np.int64)[order])

    def __len__(self) -> int:
        return len(self.key)

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self.key[a:b], self.row[a:b]


class RunReader(Protocol):
    def __len__(self) -> int: ...

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]: ...


def _records(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    rec = np.empty(len(keys), dtype=RUN_DTYPE)
    rec["key"], rec["row"] = keys, rows
    return rec


def write_run(path: Path, keys: np.ndarray, rows: np.ndarray) -> None:
    """Save a sorted run (ascending ``(key, row)``) as one raw file, atomically."""
    with atomic_path(path) as tmp:
        _records(keys, rows).tofile(tmp)


def write_run_pieces(path: Path, pieces: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Save a sorted run given as ``(rows, keys)`` pieces in order (what :func:`ranked` yields), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for rows, keys in pieces:
            _records(keys, rows).tofile(fh)


def save_key_run(path: Path, values: np.ndarray, rows: np.ndarray) -> None:
    """A sorted run for :func:`top_k`: ``rows`` by ``values`` descending (ties: lower row), as one file."""
    run = MemRun.of(values, rows)
    write_run(path, run.key, run.row)


class FileRun:
    """A run saved by :func:`write_run`, read a slice at a time (no memory map: RSS stays bounded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = path.stat().st_size // RUN_DTYPE.itemsize

    def __len__(self) -> int:
        return self.n

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        with open(self.path, "rb") as fh:
            fh.seek(a * RUN_DTYPE.itemsize)
            rec = np.fromfile(fh, RUN_DTYPE, count=b - a)
        return rec["key"], rec["row"]


def merge_shape(memory: int, n_runs: int) -> tuple[int, int]:
    """``(chunk, fan_in)`` of a merge in ``memory`` bytes: at most ``fan_in`` runs are merged at once,
    reading ``chunk`` entries of each, so that the entries in flight stay within the budget."""
    in_flight = max(2 * MIN_CHUNK, memory // MERGE_ENTRY_BYTES)
    fan_in = max(2, in_flight // MIN_CHUNK)
    chunk = max(MIN_CHUNK, min(MAX_CHUNK, in_flight // max(1, min(n_runs, fan_in))))
    return chunk, fan_in


def ranked(runs: Sequence[RunReader], k: int | None, memory: int, spill_dir: Path,
           max_key: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`top_k` over any number of runs in ``memory`` bytes, whatever the pool size.

    While there are more runs than one merge may read at once, groups of them are merged into one run
    file each under ``spill_dir`` (the earlier passes of an external merge sort); ties keep the lower
    row, so the order is that of one merge of every run.
    """
    runs = list(runs)
    chunk, fan_in = merge_shape(memory, len(runs))
    level = 0
    while len(runs) > fan_in:
        spill_dir.mkdir(parents=True, exist_ok=True)
        merged: list[RunReader] = []
        for g, i in enumerate(range(0, len(runs), fan_in)):
            path = spill_dir / f"m{level:02d}-{g:07d}.bin"
            with open(path, "wb") as fh:
                for r, kk in top_k(runs[i : i + fan_in], None, chunk=chunk):
                    _records(kk, r).tofile(fh)
            merged.append(FileRun(path))
        runs, level = merged, level + 1
        chunk, fan_in = merge_shape(memory, len(runs))
    yield from top_k(runs, k, chunk=chunk, max_key=max_key)


def top_k(runs: Sequence[RunReader], k: int | None, chunk: int = 1 << 14,
          max_key: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Merge sorted runs; yield ``(rows, keys)`` pieces of the global order, best first, ``k`` rows in all.

    ``max_key``: stop before the first key above it (a threshold on the value). Memory: ``chunk`` entries
    per run. Ties between runs are settled by row, so the order does not depend on how rows were cut
    into runs.
    """
    pos = [0] * len(runs)
    left = k if k is not None else -1
    live = [i for i, r in enumerate(runs) if len(r)]
    while live and left != 0:
        got = {i: runs[i].read(pos[i], min(len(runs[i]), pos[i] + chunk)) for i in live}
        # every entry not read yet is above the smallest (key, row) that ends a chunk: all up to it can go
        ck, cr = min((int(kk[-1]), int(rr[-1])) for kk, rr in got.values())
        keys, rows = [], []
        for i, (kk, rr) in got.items():
            take = int(np.searchsorted(_composite(kk, rr, ck, cr), True, side="left"))
            keys.append(kk[:take])
            rows.append(rr[:take])
            pos[i] += take
        kk, rr = np.concatenate(keys), np.concatenate(rows)
        if 0 < left < len(kk):  # only the best `left` can go out: sort those (and the ties of the last)
            cut = kk <= np.partition(kk, left - 1)[left - 1]
            kk, rr = kk[cut], rr[cut]
        order = np.lexsort((rr, kk))
        kk, rr = kk[order], rr[order]
        past = False
        if max_key is not None:
            stop = int(np.searchsorted(kk, np.uint64(max_key), side="right"))
            past = stop < len(kk)
            kk, rr = kk[:stop], rr[:stop]
        if left >= 0:
            kk, rr = kk[:left], rr[:left]
            left -= len(kk)
        if len(kk):
            yield rr, kk
        if past:
            return
        live = [i for i in live if pos[i] < len(runs[i])]


def _composite(key: np.ndarray, row: np.ndarray, ck: int, cr: int) -> np.ndarray:
    """``(key, row) > (ck, cr)`` per entry (sorted input gives a sorted bool array)."""
    ck64 = np.uint64(ck)
    return (key > ck64) | ((key == ck64) & (row > cr))


def key_of(value: float) -> int:
    """The :func:`desc_key` of one value."""
    return int(desc_key(np.asarray([value]))[0])


def value_of(key: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`desc_key` keys."""
    asc = ~np.asarray(key, np.uint64)
    b = np.where(asc >> np.uint64(63), asc & np.uint64((1 << 63) - 1), ~asc)
    return b.view(np.float64)
