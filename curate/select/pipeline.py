"""The partitioned selection pipeline: every method, any pool size, bounded memory per process.

Stages (docs/scale.md has the picture and the numbers):

1. ``setup`` on the driver: pool-wide inputs (class embeddings, k-means centroids trained on a bounded,
   seeded sample of the pool).
2. **pass 1**, one task per block of :data:`~curate.select.source.BLOCK_ROWS` pool rows: the
   selector's per-row terms, eligibility and partition; the block's rows that pass 2 needs are
   written sorted by partition (float16 embeddings: the *shuffle*), and pool-wide sums are kept.
3. ``reduce`` on the driver: shared inputs that need the sums (pool means, counts per label).
   Methods whose per-row terms need those (``Selector.rescans``: metaclip's sampling probabilities
   need the pool's counts per metadata entry) then **rescan** each block's pass-1 output, one task per
   block, without reading embeddings or shards again.
4. **pass 2**, one task per partition or per group of small partitions: terms that need the other
   members of the partition, and the partition's pick sequence. A method may send a row to several
   partitions (e.g. K random batches); then a **combine** task per block adds up each row's pass-2
   values in partition order and computes the row's final columns (``Selector.finish``).
5. **decision** over scalars only: a streaming top-k, a mask, or the merge of the partitions' pick
   sequences; then the score table and the manifest are written block by block.

Every task writes its output atomically under the selection's work folder, so a killed select resumes
from the finished blocks and partitions; the work folder is removed when the selection is written.
Tasks run in this process or on an :class:`~curate.engines.Engine` (local processes, Ray): the
arithmetic depends only on the blocks and partitions, never on where they ran, so every engine and
every memory budget gives the same bits.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import shutil
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.engines.base import Engine
from curate.errors import InputError
from curate.fs import atomic_path
from curate.io.tables import release_arrow_memory
from curate.progress import NullProgress, Progress
from curate.select.base import (
    KeepWhere,
    MergeSequences,
    RankBy,
    SelectContext,
    Selector,
    get_selector,
)
from curate.select.partindex import PartitionIndex, Totals, block_counts, write_index
from curate.select.ranking import (
    FileRun,
    RowValues,
    key_of,
    ranked,
    save_key_run,
    value_of,
    write_run,
    write_run_pieces,
)
from curate.select.source import PoolSource

WORK_FORMAT = 3  # 2: partition counts per block are sparse; the partition index. 3: its rows per partition
#: what a pass-2 task holds besides its rows and their copies where its resident memory cannot be read:
#: libraries (~0.6 GB with torch), one product's scratch and small arrays (below)
TASK_OVERHEAD = 864 << 20
#: one product's scratch (≤ 0.2 GB: 2^24 float32 similarities and their float64 cast) and ~40 MB of small
#: arrays (benchmarks/pass2_memory.py: 800 MiB left a 57k-row class 14 MB above its target)
TASK_SCRATCH = (200 << 20) + (40 << 20)
EMB_COLUMNS = {"image": "image_emb", "text": "text_emb"}  # a part's embedding column in the shuffle files
SEQ_MIN = 16  # a partition's first pick sequence holds at least this many picks
SEQ_ENTRY_BYTES = 17  # a pick of a sequence in the merge's window: row (8), score (8), refresh flag (1)
INDEX_DIR = "index"  # the work folder's partition index (curate.select.partindex)
SHUFFLE_WINDOW = 8192  # entries of a block's shuffle gathered at once (whole partitions)
DECISION_SHARE = 4  # the decision's picks, per-partition groups and merge each hold ≤ --memory / this
_PASS1_COLUMNS = ("__eligible", "__reason", "__partition")
STASH = "__stash:"  # prefix of the pass-1 columns kept for the rescan (dropped by it)
_RESCANNED = b"rescanned"  # pass-1 table metadata: the rescan's columns are in


# --------------------------------------------------------------------------------------------------
# What tasks share, and where they write
# --------------------------------------------------------------------------------------------------
@dataclass
class TaskSpec:
    """Everything a task needs besides its item (sent to every task once)."""

    source: PoolSource
    work: Path
    method: str
    options: dict[str, Any]
    shared: dict[str, Any]
    rule: Any
    device: str = "cpu"
    memory: int = 1 << 30
    per_partition: PerPartition | None = None

    def selector(self) -> Selector:
        cls = get_selector(self.method)
        return cls(cls.config_class(**self.options))


@dataclass(frozen=True)
class PerPartition:
    """Budgets per partition: ``mode`` proportional | sqrt | cap (``cap`` = T), over the selector's own
    partitions, or over those of ``partitioner`` (for methods that have none)."""

    mode: str
    cap: int | None = None
    partitioner: Any = None  # curate.select.partition.Partitioner

    def describe(self) -> str:
        return f"cap:{self.cap}" if self.mode == "cap" else self.mode


class WorkDir:
    """``RUN/selections/.work-NAME/``: the outputs of finished tasks of one selection attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, identity: dict[str, Any]) -> bool:
        """Use the folder for ``identity``; a folder left by another attempt is emptied. True when resuming."""
        ident = json.dumps({"format": WORK_FORMAT, **identity}, sort_keys=True, default=str)
        marker = self.path / "work.json"
        if marker.exists() and marker.read_text() == ident:
            return True
        if self.path.exists():
            shutil.rmtree(self.path)
        for sub in ("p1", "sh", "p2", "p3", "seq", "runs"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        with atomic_path(marker) as tmp:
            tmp.write_text(ident)
        return False

    def p1(self, b: int) -> Path:
        return self.path / "p1" / f"b{b:07d}.arrow"

    def sums(self, b: int) -> Path:
        return self.path / "p1" / f"b{b:07d}.npz"

    def shuffle(self, b: int) -> Path:
        return self.path / "sh" / f"b{b:07d}.arrow"

    def p2(self, t: int) -> Path:
        return self.path / "p2" / f"t{t:07d}.arrow"

    def p3(self, b: int) -> Path:
        return self.path / "p3" / f"b{b:07d}.arrow"

    def seq(self, p: int) -> Path:
        return self.path / "seq" / f"p{p:07d}.npz"

    def run(self, kind: str, i: int) -> Path:
        return self.path / "runs" / f"{kind}{i:07d}.bin"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _save_npz(path: Path, **arrays: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _write_ipc(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> None:
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for b in batches:
            w.write_batch(b)


def _read_ipc(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as src:
        return pa.ipc.open_file(src).read_all()


def _ranked(rule: RankBy, values: Any) -> Any:
    """The values a rule's runs hold: the column's, negated when the smallest go first (exact)."""
    return -np.asarray(values, np.float64) if rule.ascending else values



# --------------------------------------------------------------------------------------------------
# Pass 1
# --------------------------------------------------------------------------------------------------
def _pass1_task(blocks: list[int], spec: TaskSpec) -> int:
    """Scan blocks ``blocks``: per-row columns, shuffle rows, sums and key runs (one set of files each)."""
    sel = spec.selector()
    spans = spec.source.blocks()
    pp = spec.per_partition
    own = pp is not None and pp.partitioner is not None
    parts = sel.needs | sel.partition_parts | ({"image"} if own else set())
    ids = sel.reads_ids or (own and "scores" in spec.shared["per_partition"])  # selection:NAME checks uids
    for b in blocks:
        start, stop = spans[b]
        chunk = spec.source.chunk(start, stop, parts, ids=ids, by_rows=sel.row_parts)
        scan = sel.scan(chunk, start, spec.shared)
        pp_labels = None
        if own:  # the per-partition budgets' partitions (the selector's own, if any, serve its pass 2)
            from curate.select.partition import Partitioner

            assert chunk.image_ok is not None
            pp_labels = Partitioner.block_labels(chunk, start, stop, spec.shared["per_partition"],
                                                 np.asarray(scan.eligible, bool) & chunk.image_ok)
        n = stop - start
        rows = np.arange(start, stop, dtype=np.int64)
        cols: dict[str, Any] = {k: np.asarray(v) for k, v in scan.columns.items()}
        cols["__eligible"] = np.asarray(scan.eligible, bool)
        cols["__reason"] = scan.reasons.codes
        part = scan.partition
        if part is not None and np.ndim(part) == 1:  # (n, K): a row in K partitions has no single label
            cols["__partition"] = np.asarray(part, np.int32)
        if pp_labels is not None:
            cols["__pp_partition"] = np.asarray(pp_labels, np.int32)
        meta = {b"reasons": json.dumps(scan.reasons.names).encode()}
        arrays = {k: pa.array(v) for k, v in cols.items()}
        arrays.update({f"{STASH}{k}": v for k, v in scan.stash.items()})
        table = pa.table(arrays).replace_schema_metadata(meta)
        if sel.partitioned and part is not None:
            _write_shuffle(spec.work / "sh" / f"b{b:07d}.arrow", chunk, rows, np.asarray(part, np.int32),
                           np.asarray(scan.eligible, bool), scan.carry, sel.partition_parts)
        sums = {f"sum:{k}": np.asarray(v, np.float64) for k, v in scan.sums.items()}
        for k, v in scan.tallies.items():  # sparse: the labels present in the block and their counts
            labels, counts = np.unique(np.asarray(v, np.int64), return_counts=True)
            sums[f"tally:{k}:labels"], sums[f"tally:{k}:counts"] = labels, counts.astype(np.int64)
        if part is not None:  # sparse: the partitions present in the block and their rows
            sums["part:present"], sums["part:counts"] = block_counts(part)
        if pp_labels is not None:
            sums["pp:present"], sums["pp:counts"] = block_counts(pp_labels)
        _save_npz(spec.work / "p1" / f"b{b:07d}.npz", **sums)
        rule = spec.rule
        if isinstance(rule, RankBy) and rule.column in cols:
            ok = cols["__eligible"] & np.isfinite(np.asarray(cols[rule.column], np.float64))
            save_key_run(spec.work / "runs" / f"b{b:07d}.bin", _ranked(rule, np.asarray(cols[rule.column])[ok]),
                         rows[ok])
        _write_ipc(spec.work / "p1" / f"b{b:07d}.arrow", table.to_batches(max_chunksize=n) or
                   [pa.RecordBatch.from_pylist([], schema=table.schema)], table.schema)
        del chunk, scan, table
        release_arrow_memory()
    spec.source.release()
    release_arrow_memory()
    return len(blocks)


def _write_shuffle(path: Path, chunk: Any, rows: np.ndarray, part: np.ndarray, eligible: np.ndarray,
                   carry: dict[str, np.ndarray], parts: frozenset[str]) -> None:
    """The block's eligible, partitioned rows sorted by (partition, row): one record batch per partition.

    ``part`` of shape (n, K) writes a row once for each of its K partitions (entries ``(row, k)``). The
    embeddings are gathered a window of whole partitions at a time (≤ :data:`SHUFFLE_WINDOW` entries
    unless one partition is larger), so the sorted copy never holds the whole block."""
    src = np.repeat(np.arange(len(part)), part.shape[1]) if part.ndim == 2 else np.arange(len(part))
    flat = part.reshape(-1)
    keep = np.flatnonzero(eligible[src] & (flat >= 0))
    keep = keep[np.argsort(flat[keep], kind="stable")]  # entries sorted by partition, then row
    order, pv = src[keep], flat[keep]
    edges = np.r_[0, np.flatnonzero(np.diff(pv)) + 1, len(pv)] if len(pv) else np.zeros(1, np.int64)
    meta = {b"partitions": json.dumps([int(pv[a]) for a in edges[:-1]]).encode()}
    raw = EMB_COLUMNS

    def window(a: int, e: int) -> pa.Table:
        cols: dict[str, pa.Array] = {"row": pa.array(rows[order[a:e]]), "partition": pa.array(pv[a:e])}
        for p in sorted(parts):
            cols[raw[p]] = chunk.raw[raw[p]].take(pa.array(order[a:e]))
        for k, v in carry.items():
            cols[k] = pa.array(np.asarray(v)[order[a:e]])
        return pa.table(cols)

    def batches() -> Iterator[pa.RecordBatch]:
        i = 0
        while i < len(edges) - 1:  # partitions i .. j-1 in one window
            j = max(int(np.searchsorted(edges, edges[i] + SHUFFLE_WINDOW, side="right")) - 1, i + 1)
            base = int(edges[i])
            table = window(base, int(edges[j]))
            for a, e in itertools.pairwise(edges[i : j + 1]):
                yield table.slice(int(a) - base, int(e - a)).combine_chunks().to_batches()[0]
            del table
            i = j

    _write_ipc(path, batches(), window(0, 0).schema.with_metadata(meta))


# --------------------------------------------------------------------------------------------------
# Rescan (after reduce): more per-row columns from each block's pass-1 table
# --------------------------------------------------------------------------------------------------
def _rescanned(path: Path) -> bool:
    with pa.OSFile(str(path), "rb") as src:
        return _RESCANNED in (pa.ipc.open_file(src).schema.metadata or {})


def _rescan_task(blocks: list[int], spec: TaskSpec) -> int:
    """Rescan blocks ``blocks``: the selector's columns are added to each pass-1 table (which loses its
    stash), atomically, with the key run of the rule's column when it is one of them."""
    sel = spec.selector()
    spans = spec.source.blocks()
    for b in blocks:
        path = spec.work / "p1" / f"b{b:07d}.arrow"
        table = _read_ipc(path)
        meta = dict(table.schema.metadata or {})
        if _RESCANNED in meta:
            continue
        start, stop = spans[b]
        cols = {k: np.asarray(v) for k, v in sel.rescan(table, start, spec.shared).items()}
        table = table.drop_columns([c for c in table.column_names if c.startswith(STASH)])
        for k, v in cols.items():
            if k in table.column_names:
                table = table.set_column(table.column_names.index(k), k, pa.array(v))
            else:
                table = table.append_column(k, pa.array(v))
        rule = spec.rule
        if isinstance(rule, RankBy) and rule.column in cols:
            rows = np.arange(start, stop, dtype=np.int64)
            eligible = table.column("__eligible").to_numpy(zero_copy_only=False)
            v = np.asarray(cols[rule.column], np.float64)
            ok = eligible & np.isfinite(v)
            save_key_run(spec.work / "runs" / f"b{b:07d}.bin", _ranked(rule, v[ok]), rows[ok])
        meta[_RESCANNED] = b"1"
        table = table.replace_schema_metadata(meta)
        _write_ipc(path, table.to_batches(max_chunksize=stop - start) or
                   [pa.RecordBatch.from_pylist([], schema=table.schema)], table.schema)
    return len(blocks)


# --------------------------------------------------------------------------------------------------
# Pass 2
# --------------------------------------------------------------------------------------------------
@dataclass
class PartitionData:
    """One partition's rows (pool order), their float16 embeddings and carried scalars."""

    index: int
    rows: np.ndarray
    raw: dict[str, pa.FixedSizeListArray] = field(default_factory=dict)
    carry: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def matrix(self, part: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings (``image`` or ``text``) of the partition (or of ``rows``)."""
        from curate.select.pool import normalise_rows

        raw = self.raw16(part)
        return normalise_rows(raw if rows is None else raw[rows])

    def raw16(self, part: str) -> np.ndarray:
        """The partition's stored (float16) embeddings, ``(n, d)``, not normalised (no copy)."""
        from curate.select.pool import raw_matrix

        return raw_matrix(self.raw[EMB_COLUMNS[part]])

    def held_bytes(self, parts: int = 2) -> int:
        """Bytes of ``parts`` normalised float32 matrices of the partition."""
        col = next(iter(self.raw.values()))
        return len(self) * col.type.list_size * 4 * parts

    def raw_bytes(self) -> int:
        """Bytes of the partition's stored (float16) embeddings."""
        return sum(len(col) * col.type.list_size * col.type.value_type.bit_width // 8 for col in self.raw.values())

    def holds(self, parts: int, memory: int, reserve: int | None = None) -> bool:
        """Whether a selector keeps ``parts`` float32 copies of the partition, or normalises its float16
        rows a slice at a time. ``memory`` is what a task may hold besides its partitions' float16 rows:
        what the process holds already, a product's scratch and the copies. ``reserve`` (bytes) is the
        first two; by default :func:`task_reserve`, measured. A memory knob only: the values are the same
        either way."""
        if reserve is None:
            reserve = task_reserve(self.raw_bytes())
        return self.held_bytes(parts) <= memory - reserve


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def task_reserve(rows_bytes: int = 0) -> int:
    """What a pass-2 task holds besides its partition's rows (``rows_bytes``, resident already) and their
    float32 copies: its resident memory now (libraries, allocator pools) less those rows, plus one
    product's scratch (:data:`TASK_SCRATCH`). Measured, because the libraries' share differs by machine
    (``import torch`` alone holds 663 MiB on one of ours, BENCHMARKS.md §4); :data:`TASK_OVERHEAD`
    where it cannot be read."""
    import torch  # noqa: F401 - the task computes with it: its libraries count before they are loaded

    rss = resident_bytes()
    if rss is None:
        return TASK_OVERHEAD
    return max(0, rss - rows_bytes) + TASK_SCRATCH


class ShuffleReaders:
    """The shuffle files a task reads, each opened once: its footer and partition list are parsed when
    it is first needed and kept, least recently used closed first when more than ``cap`` files or more
    than ``max_entries`` partition entries (~30 bytes each with the footer) are open. A task of many small
    partitions reads every block once per partition, and opening a file costs more than reading a small
    piece of it; the entry budget keeps blocks of very many partitions (√N clusters of a 1B pool) from
    filling the task's memory."""

    def __init__(self, work: Path, cap: int = 256, max_entries: int = 1 << 21) -> None:
        self.work, self.cap, self.max_entries = work, cap, max_entries
        self._open: OrderedDict[int, tuple[Any, Any, np.ndarray]] = OrderedDict()
        self._entries = 0

    def piece(self, b: int, p: int) -> pa.RecordBatch | None:
        """Block ``b``'s rows of partition ``p`` (None when the block has none)."""
        got = self._open.get(b)
        if got is None:
            src = pa.OSFile(str(self.work / "sh" / f"b{b:07d}.arrow"), "rb")
            reader = pa.ipc.open_file(src)
            got = (src, reader, np.asarray(json.loads(reader.schema.metadata[b"partitions"]), np.int64))
            self._open[b] = got
            self._entries += len(got[2])
            while len(self._open) > 1 and (len(self._open) > self.cap or self._entries > self.max_entries):
                old = self._open.popitem(last=False)[1]
                old[0].close()
                self._entries -= len(old[2])
        else:
            self._open.move_to_end(b)
        _, reader, parts_in = got  # partitions ascending
        i = int(np.searchsorted(parts_in, p))
        return reader.get_batch(i) if i < len(parts_in) and parts_in[i] == p else None

    def close(self) -> None:
        for src, _, _ in self._open.values():
            src.close()
        self._open.clear()
        self._entries = 0


def read_partition(work: Path, index: PartitionIndex, p: int, parts: frozenset[str], carry: Sequence[str],
                   readers: ShuffleReaders | None = None) -> PartitionData | None:
    """Partition ``p`` gathered from the shuffle files of the blocks that hold it, rows in pool order
    (None when it has no rows).

    The rows are copied a piece (one block's rows of the partition) at a time into arrays sized from
    the index, so the partition is held once, plus a piece, never twice. ``readers`` keeps the files
    open across the partitions of a task."""
    from curate.select.pool import raw_matrix

    n = index.rows(p)
    if n == 0:
        return None
    own = readers is None
    readers = ShuffleReaders(work) if readers is None else readers
    names = [EMB_COLUMNS[part] for part in sorted(parts)]
    rows = np.empty(n, np.int64)
    emb: dict[str, np.ndarray] = {}
    kept: dict[str, list[np.ndarray]] = {k: [] for k in carry}
    at = 0
    try:
        for b in index.blocks(p, p + 1):
            piece = readers.piece(int(b), p)
            if piece is None:
                continue
            m = piece.num_rows
            rows[at : at + m] = piece.column("row").to_numpy()
            for name in names:
                values = raw_matrix(piece.column(name))
                if name not in emb:
                    emb[name] = np.empty((n, values.shape[1]), values.dtype)
                emb[name][at : at + m] = values
                del values
            for k in carry:
                kept[k].append(piece.column(k).to_numpy(zero_copy_only=False))
            at += m
            del piece
    finally:
        if own:
            readers.close()
    if at != n:
        raise RuntimeError(f"partition {p}: the shuffle holds {at} rows, the index {n}")
    data = PartitionData(p, rows)
    for name, mat in emb.items():  # wrapped without a copy
        data.raw[name] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])
    for k in carry:
        data.carry[k] = np.concatenate(kept[k])
    return data


def _pass2_task(task: tuple[int, int, int, dict[int, int]], spec: TaskSpec) -> int:
    """Pass 2 over partitions ``lo .. hi-1``: their columns (one file, rows sorted) and pick sequences."""
    t, lo, hi, first = task
    sel = spec.selector()
    carry = spec.shared.get("carry", ())
    rows_all, cols_all = [], []
    index = PartitionIndex(spec.work / INDEX_DIR)
    readers = ShuffleReaders(spec.work)
    try:
        for p in range(lo, hi):  # one partition at a time: a task holds one partition's rows, not its group's
            data = read_partition(spec.work, index, p, sel.partition_parts, carry, readers)
            if data is None:
                continue
            release_arrow_memory()  # the pieces the partition was copied from
            res = sel.partition(data, spec.shared)
            rows_all.append(data.rows)
            cols_all.append(res.columns)
            if res.cursor is not None:
                m = first.get(data.index, SEQ_MIN)
                local, scores, flags = res.cursor.take(m)
                _save_sequence(spec.work, data.index, data.rows, res.cursor, local, scores, flags)
            # before the next partition: its rows and copies never meet this one's (the cursor holds them)
            del data, res
            release_arrow_memory()
    finally:
        readers.close()
    if rows_all:
        rows = np.concatenate(rows_all)
        order = np.argsort(rows, kind="stable")
        names = list(cols_all[0])
        table = pa.table({"row": pa.array(rows[order]),
                          **{k: pa.array(np.concatenate([c[k] for c in cols_all])[order]) for k in names}})
    else:
        table = pa.table({"row": pa.array(np.zeros(0, np.int64))})
    rule = spec.rule
    if isinstance(rule, RankBy) and rule.column in table.column_names and not sel.pass2_combine:
        v = table.column(rule.column).to_numpy()
        ok = np.isfinite(v)
        save_key_run(spec.work / "runs" / f"p{t:07d}.bin", _ranked(rule, v[ok]), table.column("row").to_numpy()[ok])
    _write_row_blocks(spec.work / "p2" / f"t{t:07d}.arrow", table, spec.source.block_rows)
    return t


def _write_row_blocks(path: Path, table: pa.Table, block_rows: int) -> None:
    """A row-sorted table as one record batch per pool block (the block ids go into the metadata)."""
    rows = table.column("row").to_numpy()
    blk = rows // block_rows
    edges = np.r_[0, np.flatnonzero(np.diff(blk)) + 1, len(rows)] if len(rows) else np.zeros(1, np.int64)
    ids = [int(blk[a]) for a in edges[:-1]]
    meta = {b"blocks": json.dumps(ids).encode()}
    batches = [table.slice(int(a), int(e - a)).combine_chunks().to_batches()[0] for a, e in itertools.pairwise(edges)]
    _write_ipc(path, batches, table.schema.with_metadata(meta))


def _save_sequence(work: Path, p: int, rows: np.ndarray, cursor: Any, local: np.ndarray, scores: np.ndarray,
                   flags: np.ndarray, prev: dict[str, np.ndarray] | None = None) -> None:
    """A partition's picks so far (pool rows, score at pick, refresh flags) and its cursor state, atomically."""
    got = {"rows": rows[local], "scores": scores, "flags": flags}
    if prev is not None:
        got = {k: np.concatenate([prev[k], got[k]]) for k in got}
    state = {f"state:{k}": v for k, v in cursor.state().items()}
    _save_npz(work / "seq" / f"p{p:07d}.npz", **got, done=np.asarray(cursor.done), **state)


def _extend_task(item: tuple[int, int], spec: TaskSpec) -> int:
    """More picks of partition ``p`` (``m`` in all), continuing from its saved cursor."""
    p, m = item
    sel = spec.selector()
    data = read_partition(spec.work, PartitionIndex(spec.work / INDEX_DIR), p, sel.partition_parts,
                          spec.shared.get("carry", ()))
    assert data is not None  # only partitions with rows have sequences to extend
    with np.load(spec.work / "seq" / f"p{p:07d}.npz") as z:
        prev = {k: z[k] for k in ("rows", "scores", "flags")}
        state = {k.removeprefix("state:"): z[k] for k in z.files if k.startswith("state:")}
    cursor = sel.restore_cursor(data, state, spec.shared)
    local, scores, flags = cursor.take(m - len(prev["rows"]))
    _save_sequence(spec.work, p, data.rows, cursor, local, scores, flags, prev)
    return p


# --------------------------------------------------------------------------------------------------
# Combine (methods whose rows are in several partitions)
# --------------------------------------------------------------------------------------------------
def combine_rows(rows: np.ndarray, cols: dict[str, np.ndarray], how: str, start: int,
                 n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per block row ``start .. start+n``: the pass-2 values of its entries combined, and its entry count.

    ``rows`` are sorted with a row's entries in partition order (:meth:`Pass2Columns.block`); ``"sum"``
    adds them one entry at a time in that order (never a pairwise or parallel sum), so the bits depend
    only on the partitions, not on how they were grouped into tasks. Rows without entries get NaN."""
    if how != "sum":  # pragma: no cover - the only combination so far
        raise ValueError(f"unknown pass-2 combination {how!r}")
    count = np.bincount(rows - start, minlength=n)[:n]
    first = np.r_[0, np.cumsum(count)[:-1]]
    out = {}
    for k, v in cols.items():
        acc = np.full(n, np.nan)
        has = count > 0
        acc[has] = v[first[has]]
        for j in range(1, int(count.max(initial=0))):
            more = count > j
            acc[more] = acc[more] + v[first[more] + j]
        out[k] = acc
    return out, count


def _combine_task(blocks: list[int], spec: TaskSpec) -> int:
    """Combine the pass-2 entries of the rows of ``blocks`` and write their final columns (one file each)."""
    sel = spec.selector()
    assert sel.pass2_combine is not None
    p2 = Pass2Columns(WorkDir(spec.work))
    spans = spec.source.blocks()
    for b in blocks:
        start, stop = spans[b]
        rows, got = p2.block(b)
        combined, count = combine_rows(rows, got, sel.pass2_combine, start, stop - start)
        t = _read_ipc(spec.work / "p1" / f"b{b:07d}.arrow")
        p1 = {k: t.column(k).to_numpy(zero_copy_only=False) for k in t.column_names}
        cols = {k: np.asarray(v) for k, v in sel.finish(p1, combined, count, spec.shared).items()}
        rule = spec.rule
        if isinstance(rule, RankBy) and rule.column in cols:
            v = np.asarray(cols[rule.column], np.float64)
            ok = p1["__eligible"] & np.isfinite(v)
            save_key_run(spec.work / "runs" / f"c{b:07d}.bin", v[ok], np.arange(start, stop, dtype=np.int64)[ok])
        table = pa.table({k: pa.array(v) for k, v in cols.items()})
        _write_ipc(spec.work / "p3" / f"b{b:07d}.arrow", table.to_batches(max_chunksize=stop - start) or
                   [pa.RecordBatch.from_pylist([], schema=table.schema)], table.schema)
    return len(blocks)


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
@dataclass
class PipelineResult:
    """Where the decision's picks are, and the numbers the manifest header records."""

    picks: RowValues  # rank (int64) and gain (float64) of every picked row, by row
    kept: int
    info: dict[str, Any]
    rule: Any
    work: WorkDir
    source: PoolSource
    part_sizes: np.ndarray | None  # rows per partition of the selector's own partitions
    shared: dict[str, Any]
    last_value: float | None = None  # RankBy: the value of the last row kept
    quotas: np.ndarray | None = None  # per-partition budgets: samples each partition may keep
    per_partition: PerPartition | None = None


def table_columns(selector: Selector, res: PipelineResult) -> dict[str, str]:
    """The score table's method columns: the selector's, plus the partition of per-partition budgets."""
    extra = {"partition": "i4"} if res.quotas is not None and "partition" not in selector.columns else {}
    return {**selector.columns, **extra}


def _map(engine: Engine | None, fn: Any, items: list[Any], spec: TaskSpec, progress: Progress) -> list[Any]:
    if not items:
        return []
    if engine is None:
        out = []
        for it in items:
            out.append(fn(it, spec))
            progress.advance(1)
        return out
    return engine.map(fn, items, {"spec": spec}, progress)


def run_pipeline(selector: Selector, source: PoolSource, budget: int | None, ctx: SelectContext, work: WorkDir,
                 identity: dict[str, Any], per_partition: PerPartition | None = None) -> PipelineResult:
    """Run every stage of ``selector`` over ``source``; the picks stay on disk under ``work``.

    Stages: pass 1 over blocks → reduce the block sums → (rescan blocks) → per-partition quotas →
    pass 2 over partitions (→ combine blocks) → pick by the selector's rule. Every task's output is a file
    in ``work``, so a rerun skips finished tasks.
    """
    progress = ctx.progress or NullProgress()
    engine = ctx.engine if ctx.engine is not None and ctx.engine.distributed else None
    shared = _setup(selector, source, ctx, engine, per_partition)
    work.open(identity)
    stages = _Stages(engine if _needs_tasks(selector, per_partition) else None, progress, selector.name)
    spec = TaskSpec(source, work.path, selector.name, selector.config.to_dict(), shared, selector.rule(budget, shared),
                    device=(engine.worker_device() if engine is not None else ctx.device), memory=ctx.memory,
                    per_partition=per_partition)
    n_blocks = len(source.blocks())
    stages.blocks("pass 1", _pass1_task, [b for b in range(n_blocks) if not work.p1(b).exists()], n_blocks, spec)
    pp_k = int(shared["per_partition"]["n_partitions"]) if "per_partition" in shared else 0
    sums, totals, pp_sizes = _reduce_blocks(work, n_blocks, int(shared.get("n_partitions", 0)), pp_k)
    sizes = totals.sizes if totals is not None else None
    shared.update(selector.reduce(sums, sizes if sizes is not None else np.zeros(0, np.int64), shared))
    rule = selector.rule(budget, shared)
    spec = TaskSpec(source, work.path, selector.name, selector.config.to_dict(), shared, rule,
                    device=spec.device, memory=ctx.memory, per_partition=per_partition)
    if selector.rescans:
        stages.blocks("rescan", _rescan_task, [b for b in range(n_blocks) if not _rescanned(work.p1(b))], n_blocks,
                      spec)
    quotas = _quotas(selector, rule, pp_sizes, per_partition)
    if selector.partitioned and totals is not None:
        _partition_stages(selector, rule, spec, work, totals, quotas, stages, n_blocks)
    picks = RowValues({"rank": "i8", "gain": "f8"}, len(source), source.block_rows * 16,
                      ctx.memory // DECISION_SHARE, work.path / "picks")
    pick = _PICKERS.get(type(rule))
    if pick is None:  # pragma: no cover - the rule types are closed
        raise TypeError(rule)
    kept, last_value, info = pick(_PickInput(selector, rule, spec, source, work, sizes, quotas, engine, progress,
                                             ctx.memory), picks)
    if quotas is not None:
        assert per_partition is not None
        info["per_partition"] = _quota_info(quotas, per_partition)
    return PipelineResult(picks, kept, info, rule, work, source, sizes, shared, last_value, quotas, per_partition)


def _needs_tasks(selector: Selector, per_partition: PerPartition | None) -> bool:
    """Whether the block stages are worth the engine's tasks: a method that reads no embedding and no
    other table per block (random, clip-score) scans a block in milliseconds, less than starting a task
    process takes, so its blocks are scanned here (the same functions, so the same files)."""
    reads = selector.needs | selector.partition_parts
    return (bool(reads & {"image", "text"}) or selector.reads_ids or selector.partitioned or selector.rescans
            or (per_partition is not None and per_partition.partitioner is not None))


def _setup(selector: Selector, source: PoolSource, ctx: SelectContext, engine: Engine | None,
           per_partition: PerPartition | None) -> dict[str, Any]:
    """The selector's shared state (plus the budgets' partitioner, the device and the memory budget)."""
    shared = selector.setup(source, ctx)
    if per_partition is not None and per_partition.partitioner is not None:
        shared["per_partition"] = per_partition.partitioner.setup(
            source, ctx, {"image"}, lambda c: c.image_ok, shared.get("device", "cpu"))
    if engine is not None and engine.worker_device() != "auto":
        shared["device"] = engine.worker_device()  # tasks compute where the engine puts them
    shared["memory"] = ctx.memory
    return shared


@dataclass
class _Stages:
    """Runs one stage's unfinished tasks here or on the engine, with progress that counts finished ones."""

    engine: Engine | None
    progress: Progress
    name: str

    def blocks(self, label: str, task: Callable[[list[int], TaskSpec], Any], todo: list[int], total: int,
               spec: TaskSpec) -> None:
        self.progress.start(f"{self.name}: {label}", total=total, unit="blocks")
        self.progress.advance(total - len(todo))
        if self.engine is None:
            for b in todo:
                task([b], spec)
                self.progress.advance(1)
        else:
            # one block per task: progress moves block by block; the spec travels once per process
            self.engine.map(task, [[b] for b in todo], {"spec": spec}, self.progress)
        self.progress.finish()


def _reduce_blocks(work: WorkDir, n_blocks: int, k: int, pp_k: int) -> tuple[dict[str, np.ndarray],
                                                                       Totals | None, np.ndarray | None]:
    """Pass 1's block sums added up; the rows (and blocks) per partition of the selector's ``k``
    partitions, and the rows per partition of the budgets' ``pp_k`` (the selector's when it has its own)."""
    sums: dict[str, np.ndarray] = {}
    totals, pp = None, None
    for b in range(n_blocks):
        with np.load(work.sums(b)) as z:
            for key in z.files:
                if key.startswith("sum:"):
                    name = key[4:]
                    sums[name] = z[key] if name not in sums else sums[name] + z[key]
                elif key.startswith("tally:") and key.endswith(":labels"):
                    name = key[6:-7]
                    sums[name] = _add_tally(sums.get(name), z[key], z[f"tally:{name}:counts"])
            if "part:present" in z.files:
                totals = totals or Totals(k)
                totals.add(z["part:present"], z["part:counts"])
            if "pp:present" in z.files:
                pp = pp or Totals(pp_k)
                pp.add(z["pp:present"], z["pp:counts"])
    if pp is not None:
        return sums, totals, pp.sizes
    return sums, totals, (totals.sizes if totals is not None else None)


def _quotas(selector: Selector, rule: Any, pp_sizes: np.ndarray | None,
            per_partition: PerPartition | None) -> np.ndarray | None:
    """Each partition's budget under ``--per-partition``; None without it."""
    if per_partition is None:
        return None
    from curate.select.partition import allocate_quotas

    if pp_sizes is None:
        raise InputError(f"--per-partition: {selector.name} found no partitions")
    budget = getattr(rule, "budget", None)
    quotas = allocate_quotas(pp_sizes, budget, per_partition.mode, per_partition.cap)
    if budget is not None and int(quotas.sum()) < budget:
        raise InputError(f"the per-partition caps leave {int(quotas.sum())} samples, fewer than the budget "
                         f"{budget}; raise T or lower --fraction/--count")
    return quotas


def _quota_info(quotas: np.ndarray, per_partition: PerPartition) -> dict[str, Any]:
    info: dict[str, Any] = {"mode": per_partition.describe(), "partitions": int((quotas > 0).sum()),
                            "quota_min": int(quotas[quotas > 0].min()) if (quotas > 0).any() else 0,
                            "quota_max": int(quotas.max()) if len(quotas) else 0}
    if per_partition.partitioner is not None:
        info["partition"] = per_partition.partitioner.describe()
    return info


def _partition_stages(selector: Selector, rule: Any, spec: TaskSpec, work: WorkDir, totals: Totals,
                      quotas: np.ndarray | None, stages: _Stages, n_blocks: int) -> None:
    """The partition index, pass 2 (one task per group of partitions, sized to the memory budget) and,
    for selectors whose rows lie in several partitions, the combining pass over blocks."""
    index = work.path / INDEX_DIR
    if not PartitionIndex.exists(index):
        def present_of(b: int) -> np.ndarray:
            with np.load(work.sums(b)) as z:
                return z["part:present"] if "part:present" in z.files else np.zeros(0, np.int64)

        write_index(index, n_blocks, present_of, totals.spread, spec.memory // DECISION_SHARE, totals.sizes)
    sizes = totals.sizes
    first = _first_requests(sizes, rule, quotas)
    tasks = _partition_tasks(sizes, first, 4 * max(spec.source.dim, 1), spec.memory)
    todo = [t for t in tasks if not work.p2(t[0]).exists()]
    stages.progress.start(f"{selector.name}: pass 2", total=len(tasks), unit="tasks")
    stages.progress.advance(len(tasks) - len(todo))
    _map(stages.engine, _pass2_task, todo, spec, stages.progress)
    stages.progress.finish()
    if selector.pass2_combine:  # rows in several partitions: their final columns, block by block
        (work.path / "p3").mkdir(exist_ok=True)
        stages.blocks("combining", _combine_task, [b for b in range(n_blocks) if not work.p3(b).exists()], n_blocks,
                      spec)


@dataclass
class _PickInput:
    selector: Selector
    rule: Any
    spec: TaskSpec
    source: PoolSource
    work: WorkDir
    sizes: np.ndarray | None
    quotas: np.ndarray | None
    engine: Engine | None
    progress: Progress
    memory: int


def _pick_ranked(x: _PickInput, picks: RowValues) -> tuple[int, float | None, dict[str, Any]]:
    """RankBy: the best ``budget`` rows over every block's sorted run (or per partition's quota)."""
    rule, info = x.rule, {}
    if x.quotas is not None:
        kept, last_value = _rank_per_partition(x.selector, rule, x.source, x.work, x.quotas, x.memory, picks)
        if rule.info and last_value is not None:
            info[rule.info] = last_value
        return kept, last_value, info
    runs = [FileRun(p) for p in sorted((x.work.path / "runs").glob("*.bin"))]
    max_key = key_of(float(_ranked(rule, np.float64(rule.minimum)))) if rule.minimum is not None else None
    n, last, last_value = 0, None, None
    for rows, keys in ranked(runs, rule.budget, x.memory // DECISION_SHARE, x.work.path / "merge", max_key):
        picks.append(rows, rank=np.arange(n, n + len(rows)), gain=np.full(len(rows), np.nan))
        n += len(rows)
        last = keys[-1]
    if rule.budget is not None and n < rule.budget:
        raise _short(x.selector, x.source, x.work, n, rule.budget)
    if last is not None:
        last_value = float(_ranked(rule, value_of(np.asarray([last]))[0]))
        if rule.info:
            info[rule.info] = last_value
    return n, last_value, info


def _pick_kept(x: _PickInput, picks: RowValues) -> tuple[int, float | None, dict[str, Any]]:
    """KeepWhere: every row whose flag column pass 1 set, in pool order."""
    kept = 0
    for b, (start, _) in enumerate(x.source.blocks()):
        t = _read_ipc(x.work.p1(b))
        keep = np.flatnonzero(t.column(x.rule.column).to_numpy(zero_copy_only=False))
        picks.append(start + keep, rank=np.arange(kept, kept + len(keep)), gain=np.full(len(keep), np.nan))
        kept += len(keep)
    return kept, None, {}


def _pick_merged(x: _PickInput, picks: RowValues) -> tuple[int, float | None, dict[str, Any]]:
    """MergeSequences: the partitions' pick sequences merged by score (ClipCov's budget split)."""
    kept, info = _merge(x.selector, x.rule, x.spec, x.sizes, x.engine, x.progress, picks, x.source, x.work,
                        x.quotas)
    return kept, None, info


#: How each rule type turns the stages' outputs into picks.
_PICKERS: dict[type, Callable[[_PickInput, RowValues], tuple[int, float | None, dict[str, Any]]]] = {
    RankBy: _pick_ranked, KeepWhere: _pick_kept, MergeSequences: _pick_merged,
}


def _add_tally(total: np.ndarray | None, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``total`` (int64 counts per label, grown as needed) plus one block's sparse counts."""
    size = int(labels[-1]) + 1 if len(labels) else 0
    if total is None:
        total = np.zeros(size, np.int64)
    elif len(total) < size:
        total = np.concatenate([total, np.zeros(size - len(total), np.int64)])
    total[labels] += counts
    return total


def _rank_per_partition(selector: Selector, rule: RankBy, source: PoolSource, work: WorkDir, quotas: np.ndarray,
                        memory: int, picks: RowValues) -> tuple[int, float | None]:
    """RankBy under per-partition budgets: each partition's best rows up to its quota (ties: lower row),
    then the kept rows ranked together (and cut at the budget in ``cap`` mode).

    Scalars only, grouped by partition with :class:`RowValues` (spilled by ranges of partitions when
    they exceed the budget); each group of partitions gives one sorted run of its kept rows.
    """
    from curate.select.ranking import desc_key

    k = len(quotas)
    bucket = max(1, -(-k // 64))
    groups = RowValues({"key": "u8", "row": "i8"}, k, bucket, memory // DECISION_SHARE, work.path / "pp")
    reader = _ColumnReader(work, selector)
    max_key = key_of(float(_ranked(rule, np.float64(rule.minimum)))) if rule.minimum is not None else None
    for b, (start, stop) in enumerate(source.blocks()):
        t = _read_ipc(work.p1(b))
        part = t.column("__pp_partition" if "__pp_partition" in t.column_names else "__partition").to_numpy()
        ok = t.column("__eligible").to_numpy(zero_copy_only=False) & (part >= 0)
        values = np.asarray(_ranked(rule, reader.block(b, t, rule.column, start, stop)), np.float64)
        ok &= np.isfinite(values)
        key = desc_key(values)
        if max_key is not None:
            ok &= key <= np.uint64(max_key)
        idx = np.flatnonzero(ok)
        groups.append(part[idx], key=key[idx], row=start + idx)
    runs: list[FileRun] = []
    for i, lo in enumerate(range(0, k, bucket)):
        if not groups.fits(i):  # one partition (or a few) with more entries than the budget holds
            runs.extend(_large_partition_runs(groups, i, quotas, memory, work))
            continue
        parts, cols = groups.slice(lo, min(k, lo + bucket))
        order = np.lexsort((cols["row"], cols["key"], parts))
        parts, key, row = parts[order], cols["key"][order], cols["row"][order]
        first = np.r_[0, np.flatnonzero(np.diff(parts)) + 1] if len(parts) else np.zeros(0, np.int64)
        within = np.arange(len(parts)) - np.repeat(first, np.diff(np.r_[first, len(parts)]))
        keep = within < quotas[parts]
        key, row = key[keep], row[keep]
        order = np.lexsort((row, key))
        path = work.path / "runs" / f"pp{i:07d}.bin"
        write_run(path, key[order], row[order])
        runs.append(FileRun(path))
    groups.close()
    budget = rule.budget if rule.budget is not None and int(quotas.sum()) > rule.budget else None
    n, last = 0, None
    for rows, keys in ranked(runs, budget, memory // DECISION_SHARE, work.path / "merge"):
        picks.append(rows, rank=np.arange(n, n + len(rows)), gain=np.full(len(rows), np.nan))
        n += len(rows)
        last = keys[-1]
    if rule.budget is not None and n < rule.budget and int(quotas.sum()) >= rule.budget:
        raise _short(selector, source, work, n, rule.budget)
    return n, (float(_ranked(rule, value_of(np.asarray([last]))[0])) if last is not None else None)


def _large_partition_runs(groups: RowValues, i: int, quotas: np.ndarray, memory: int,
                          work: WorkDir) -> list[FileRun]:
    """Each partition's best rows up to its quota, for a bucket of partitions too large to read back
    whole: every spilled piece gives one sorted run per partition (cut at the quota: rows past it in a
    piece are past it overall), and each partition's runs are merged to its quota in bounded memory."""
    tmp = work.path / "pp-large"
    tmp.mkdir(parents=True, exist_ok=True)
    per: dict[int, list[FileRun]] = {}
    for j, (parts, cols) in enumerate(groups.pieces(i)):
        order = np.lexsort((cols["row"], cols["key"], parts))
        parts, key, row = parts[order], cols["key"][order], cols["row"][order]
        edges = np.r_[0, np.flatnonzero(np.diff(parts)) + 1, len(parts)] if len(parts) else np.zeros(1, np.int64)
        for a, b in itertools.pairwise(edges):
            p = int(parts[a])
            take = min(int(b), int(a) + int(quotas[p]))
            if take > a:
                path = tmp / f"{i:07d}-{p:07d}-{j:06d}.bin"
                write_run(path, key[a:take], row[a:take])
                per.setdefault(p, []).append(FileRun(path))
    out = []
    for p, pruns in sorted(per.items()):
        path = work.path / "runs" / f"pp{i:07d}-{p:07d}.bin"
        write_run_pieces(path, ranked(pruns, int(quotas[p]), memory // DECISION_SHARE, tmp / "merge"))
        out.append(FileRun(path))
    shutil.rmtree(tmp, ignore_errors=True)
    return out


class _ColumnReader:
    """A block's final values of one column: from pass 1, the combine stage, or the pass-2 files."""

    def __init__(self, work: WorkDir, selector: Selector) -> None:
        self.work = work
        self.combined = bool(selector.partitioned and selector.pass2_combine)
        self.p2 = Pass2Columns(work) if selector.partitioned and not self.combined else None

    def block(self, b: int, t: pa.Table, column: str, start: int, stop: int) -> np.ndarray:
        if self.combined:
            t3 = _read_ipc(self.work.p3(b))
            if column in t3.column_names:
                return t3.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        if column in t.column_names:
            return t.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        values = np.full(stop - start, np.nan)
        if self.p2 is not None:
            rows, got = self.p2.block(b)
            if column in got:
                values[rows - start] = got[column]
        return values


def _short(selector: Selector, source: PoolSource, work: WorkDir, n: int, budget: int) -> InputError:
    counts: dict[str, int] = {}
    for b in range(len(source.blocks())):
        t = _read_ipc(work.p1(b))
        names = json.loads(t.schema.metadata[b"reasons"])
        c = np.bincount(t.column("__reason").to_numpy(), minlength=len(names))
        for i, name in enumerate(names):
            if i > 1 and c[i]:
                counts[name] = counts.get(name, 0) + int(c[i])
    dropped = ", ".join(f"{k}: {v}" for k, v in counts.items())
    return InputError(f"{selector.name} can rank {n} samples ({dropped}) but the budget is {budget}; lower it")


def _first_requests(sizes: np.ndarray, rule: Any, quotas: np.ndarray | None = None) -> dict[int, int]:
    """How many picks each partition's first sequence holds: twice its share of the budget (>= SEQ_MIN),
    all of its rows when the rule asks for whole sequences, or exactly its quota under per-partition
    budgets."""
    if not isinstance(rule, MergeSequences):
        return {}
    total = int(sizes.sum())
    out = {}
    for p in np.flatnonzero(sizes):
        if quotas is not None:
            out[int(p)] = int(min(sizes[p], quotas[p]))
            continue
        if rule.whole:
            out[int(p)] = int(sizes[p])
            continue
        share = -(-2 * rule.budget * int(sizes[p]) // max(total, 1))
        out[int(p)] = int(min(sizes[p], max(SEQ_MIN, share)))
    return out


def _partition_tasks(sizes: np.ndarray, first: dict[int, int], row_bytes: int,
                     memory: int) -> list[tuple[int, int, int, dict[int, int]]]:
    """Consecutive partitions grouped into tasks that hold at most a quarter of the memory budget in
    embeddings (a partition larger than that is a task of its own). The grouping depends only on the
    partition sizes and the budget, never on the engine, so a resumed select finds the same tasks."""
    present = np.flatnonzero(sizes)
    cap = max(1, memory // 4)
    ends = np.zeros(len(present) + 1, np.int64)  # bytes of present[:i]
    np.cumsum(sizes[present].astype(np.int64) * row_bytes, out=ends[1:])
    tasks: list[tuple[int, int, int, dict[int, int]]] = []
    g = 0
    while g < len(present):  # greedy: a group takes the next partitions while they fit (at least one)
        j = max(int(np.searchsorted(ends, ends[g] + cap, side="right")) - 1, g + 1)
        lo, hi = int(present[g]), int(present[j - 1]) + 1
        tasks.append((len(tasks), lo, hi, {p: first[p] for p in range(lo, hi) if p in first} if first else {}))
        g = j
    return tasks


def _merge(selector: Selector, rule: MergeSequences, spec: TaskSpec, sizes: np.ndarray | None,
           engine: Engine | None, progress: Progress, picks: RowValues, source: PoolSource,
           work: WorkDir, quotas: np.ndarray | None = None) -> tuple[int, dict[str, Any]]:
    """Merge the partitions' pick sequences by score at pick time into ``rule.budget`` picks.

    A partition's picks depend only on the partition; the global order takes, at each step, the
    partition whose next pick scores highest. Ties: a partition refreshed later goes after one
    refreshed earlier (or never), then the lower partition index.
    """
    assert sizes is not None
    present = [int(p) for p in np.flatnonzero(sizes)]
    eligible = int(sizes.sum())
    if rule.budget > eligible:
        raise _short(selector, source, work, eligible, rule.budget)
    limit = np.minimum(sizes, quotas) if quotas is not None else sizes
    if rule.budget > int(limit.sum()):
        raise InputError(f"the per-partition caps leave {int(limit.sum())} samples, fewer than the budget "
                         f"{rule.budget}; raise T or lower --fraction/--count")
    # one window of each partition's sequence: the windows together stay under a share of --memory
    size = int(np.clip((spec.memory // DECISION_SHARE) // (max(len(present), 1) * SEQ_ENTRY_BYTES), SEQ_MIN, 1 << 16))
    wins = {p: _SequenceWindow(work.seq(p), size) for p in present}
    pos: dict[int, int] = {}
    stamp: dict[int, int] = {}
    heap: list[tuple[float, int, int]] = []

    def push(p: int) -> None:
        w = wins[p]
        i = pos[p]
        if i >= limit[p]:  # the partition's quota is used up
            return
        if i >= w.n:
            if w.done:
                return
            want = min(int(limit[p]), max(2 * w.n, SEQ_MIN))
            _map(engine, _extend_task, [(p, want)], spec, NullProgress())
            w.reload()
            if i >= w.n:
                return
        if not w.lo <= i < w.lo + len(w.rows):
            w.fill(i)
        heapq.heappush(heap, (-float(w.scores[i - w.lo]), stamp[p], p))

    for p in present:
        pos[p], stamp[p] = 0, -1
        push(p)
    progress.start(f"{selector.name}: merging", total=rule.budget)
    out_rows = np.empty(min(rule.budget, 1 << 16), np.int64)
    out_gain = np.empty(len(out_rows), np.float64)
    done, fill, refreshes = 0, 0, 0
    while done < rule.budget:
        neg, _, p = heapq.heappop(heap)
        w = wins[p]
        i = pos[p]
        j = i - w.lo  # push() left pick i in the window
        out_rows[fill], out_gain[fill] = w.rows[j], -neg
        fill += 1
        done += 1
        pos[p] = i + 1
        if w.flags[j]:
            stamp[p] = done
            refreshes += 1
        if fill == len(out_rows) or done == rule.budget:
            picks.append(out_rows[:fill].copy(), rank=np.arange(done - fill, done), gain=out_gain[:fill].copy())
            progress.advance(fill)
            fill = 0
        push(p)
    progress.finish()
    return done, {"class_updates": refreshes}


# --------------------------------------------------------------------------------------------------
# Reading results back block by block (the score table and manifest writers)
# --------------------------------------------------------------------------------------------------
def _npy_member(path: Path, name: str) -> tuple[int, np.dtype, int]:
    """Where the values of array ``name`` of an uncompressed ``.npz`` (``np.savez``) start in the file,
    their dtype and their count: a slice is then read from the file directly, without the rest."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        info = zipfile.ZipFile(f).getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:  # pragma: no cover - _save_npz never compresses
            raise ValueError(f"{path}: {name} is compressed")
        f.seek(info.header_offset + 26)  # a local file header: 30 bytes, then the name and the extra field
        n_name, n_extra = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + n_name + n_extra)
        version = fmt.read_magic(f)
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = header(f)
        return f.tell(), np.dtype(dtype), int(shape[0])


class _SequenceWindow:
    """A partition's saved pick sequence (pool rows, score at pick, refresh flags), read ``size`` picks
    at a time: the merge holds one window per partition, not every sequence whole."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.reload()

    def reload(self) -> None:
        """Read the sequence's layout again (after it was extended) and drop the window."""
        with np.load(self.path) as z:
            self.done = bool(z["done"])
        self.members = {k: _npy_member(self.path, k) for k in ("rows", "scores", "flags")}
        self.n = self.members["rows"][2]
        self.lo, self.rows, self.scores, self.flags = 0, np.empty(0, np.int64), np.empty(0), np.empty(0, bool)

    def fill(self, i: int) -> None:
        """The window of picks ``[i, i + size)``."""
        m = min(self.n, i + self.size) - i
        got = [np.fromfile(self.path, dtype=dt, count=m, offset=off + i * dt.itemsize)
               for off, dt, _ in (self.members[k] for k in ("rows", "scores", "flags"))]
        self.lo, (self.rows, self.scores, self.flags) = i, got


class Pass2Columns:
    """Pass-2 columns of the rows of one block, gathered from every task's row-sorted file."""

    def __init__(self, work: WorkDir) -> None:
        self.files = sorted((work.path / "p2").glob("t*.arrow"))
        self.names: list[str] = []
        self._index: list[dict[int, int]] = []
        for f in self.files:
            with pa.OSFile(str(f), "rb") as src:
                schema = pa.ipc.open_file(src).schema
            self.names = self.names or [n for n in schema.names if n != "row"]
            blocks = json.loads((schema.metadata or {}).get(b"blocks", b"[]"))
            self._index.append({blk: i for i, blk in enumerate(blocks)})

    def block(self, b: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows, cols = [], {k: [] for k in self.names}
        for f, idx in zip(self.files, self._index, strict=True):
            i = idx.get(b)
            if i is None:
                continue
            with pa.OSFile(str(f), "rb") as src:
                batch = pa.ipc.open_file(src).get_batch(i)
            rows.append(batch.column(batch.schema.get_field_index("row")).to_numpy())
            for k in self.names:
                cols[k].append(batch.column(batch.schema.get_field_index(k)).to_numpy(zero_copy_only=False))
        if not rows:
            return np.zeros(0, np.int64), {}
        r = np.concatenate(rows)
        order = np.argsort(r, kind="stable")
        return r[order], {k: np.concatenate(v)[order] for k, v in cols.items()}


def iter_blocks(res: PipelineResult, selector: Selector) -> Iterator[dict[str, Any]]:
    """Per block: ids, every score-table column, the selected mask and the reason strings."""
    combined = bool(selector.partitioned and selector.pass2_combine)
    p2 = Pass2Columns(res.work) if selector.partitioned and not combined else None
    rule = res.rule
    decision_reason = getattr(rule, "reason", None)
    for b, (start, stop) in enumerate(res.source.blocks()):
        n = stop - start
        t = _read_ipc(res.work.p1(b))
        names = json.loads(t.schema.metadata[b"reasons"])
        codes = t.column("__reason").to_numpy().astype(np.int16)
        eligible = t.column("__eligible").to_numpy(zero_copy_only=False)
        cols: dict[str, np.ndarray] = {}
        for k, dt in table_columns(selector, res).items():
            if k == "partition" and k not in t.column_names and "__pp_partition" in t.column_names:
                cols[k] = t.column("__pp_partition").to_numpy()
            elif k == "partition" and k not in t.column_names and "__partition" in t.column_names:
                cols[k] = t.column("__partition").to_numpy()
            elif k in t.column_names:
                cols[k] = t.column(k).to_numpy(zero_copy_only=False)
            else:
                cols[k] = _null_column(dt, n)
        if p2 is not None:
            rows, got = p2.block(b)
            local = rows - start
            for k, v in got.items():
                if k in cols and k not in t.column_names:
                    cols[k][local] = v
        if combined:  # the final columns of rows in several partitions (the combine stage)
            t3 = _read_ipc(res.work.p3(b))
            for k in t3.column_names:
                if k in cols:
                    cols[k] = t3.column(k).to_numpy(zero_copy_only=False)
        prow, pcols = res.picks.slice(start, stop)
        rank = np.full(n, -1, np.int64)
        rank[prow - start] = pcols["rank"]
        if "gain" in selector.columns:
            gain = np.full(n, np.nan)
            gain[prow - start] = pcols["gain"]
            cols["gain"] = gain
        selected = rank >= 0
        names = list(names)
        below = (getattr(rule, "below", None), _below(rule, res, cols, eligible))
        steps = [(decision_reason, eligible), below]
        if res.quotas is not None:  # not kept although eligible: the partition's quota was full
            steps = [("quota", eligible), *([(decision_reason, _under(rule, cols, eligible))]
                                          if getattr(rule, "minimum", None) is not None else []), below]
        for reason, rows in steps:
            if reason is not None and rows is not None:
                if reason not in names:
                    names.append(reason)
                codes[rows] = names.index(reason)
        codes[selected] = 0
        ids = res.source.read(start, stop, ["uid", "shard", "key", "position"])
        yield {"start": start, "ids": ids, "columns": cols, "selected": selected, "rank": rank,
               "reason_codes": codes, "reason_names": names,
               "partition": t.column("__partition").to_numpy() if "__partition" in t.column_names else None}


def _below(rule: Any, res: PipelineResult, cols: dict[str, np.ndarray], eligible: np.ndarray) -> np.ndarray | None:
    """Eligible rows whose rule column is below the last kept value (``RankBy.below``)."""
    if not isinstance(rule, RankBy) or rule.below is None or res.last_value is None:
        return None
    return eligible & (np.asarray(cols[rule.column], np.float64) < res.last_value)


def _under(rule: Any, cols: dict[str, np.ndarray], eligible: np.ndarray) -> np.ndarray:
    """Eligible rows under ``RankBy.minimum`` (they get the rule's reason, not the quota's)."""
    v = np.asarray(cols[rule.column], np.float64)
    return eligible & ~(v >= rule.minimum)


def _null_column(dtype: str, n: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return np.full(n, np.nan, dt)
    if dt.kind in "iu":
        return np.full(n, -1, dt)
    return np.zeros(n, dt)


def work_identity(source: PoolSource, method: str, params: dict[str, Any], seed: int, budget: int | None,
                  memory: int) -> dict[str, Any]:
    """What a work folder's outputs depend on (a resumed attempt must agree on all of it)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"pool": source.fingerprint(), "rows": len(source), "method": method, "params": digest, "seed": seed,
            "budget": budget, "block_rows": source.block_rows, "memory": memory}
