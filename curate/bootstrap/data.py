"""Inputs of a bootstrap round: the pool of samples and the per-sample loss tables of a round.

The pool is in a canonical order (shard, position) and every other table is mapped onto pool row indices,
so the methods work on integer arrays. Rounds read the pool and the losses a part at a time
(``store.py``, ``tasks.py``); this module has the pool in memory (:func:`load_round_pool`, for the coreset,
reports and history) and the in-memory mapping of a loss table (:func:`map_losses`). Fixed-width uids
(DataComp's 32-hex) are mapped with a sorted uid index (``uidindex.py``, from the cache when it has
distinct keys); other uids with ``pyarrow.compute.index_in``. Both give the same rows.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from curate.bootstrap.uidindex import UidIndex, uid_words
from curate.errors import InputError, UsageError
from curate.io.tables import embedding_files, read_parquet
from curate.rundir import RunDir
from curate.schemas import ID_COLUMNS, LOSS_SCHEMA, POOL_SCHEMA

#: Rows per chunk of the pool table, fresh or cached (a record batch of ``pool.arrow``). Manifests are cut from
#: the pool and their content hash is taken per record batch, so the layout must not depend on the cache.
POOL_CHUNK = 1 << 16

def bools(col: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    """A boolean column as numpy, nulls as False, from its bit buffers (no per-value conversion)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n, off = len(arr), arr.offset
    if n == 0:
        return np.zeros(0, bool)
    def unpack(buf: pa.Buffer) -> np.ndarray:
        return np.unpackbits(np.frombuffer(buf, np.uint8), count=off + n, bitorder="little")[off:].view(bool)

    out = unpack(arr.buffers()[1])
    if arr.null_count:
        out = out & unpack(arr.buffers()[0])
    return out


class StringHasher:
    """sha256 of a string column's values in order, fed a chunk at a time (the result does not depend on
    how the column is cut into chunks)."""

    def __init__(self) -> None:
        self.lengths, self.data = hashlib.sha256(), hashlib.sha256()

    def update(self, col: pa.Array | pa.ChunkedArray) -> None:
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        for chunk in chunks:
            chunk = chunk.cast(pa.large_string())
            if len(chunk) == 0:
                continue
            offs = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
            self.lengths.update(np.diff(offs).astype("<i8").tobytes())
            self.data.update(memoryview(chunk.buffers()[2])[int(offs[0]) : int(offs[-1])])

    def hexdigest(self) -> str:
        return hashlib.sha256(self.lengths.digest() + self.data.digest()).hexdigest()


def hash_strings(col: pa.Array | pa.ChunkedArray) -> str:
    """sha256 of a string column's values in order (independent of chunking)."""
    h = StringHasher()
    h.update(col)
    return h.hexdigest()


@dataclass
class RoundPool:
    """The samples a run may train on, in (shard, position) order; row indices are stable per digest."""

    table: pa.Table  # uid, shard, key, position
    source: str  # "embeddings" or "selection:<name>"
    digest: str  # sha256 of the uids in pool order
    fingerprint: str = ""  # of the input files the pool was read from
    uid_index: UidIndex | None = None  # sorted fixed-width uid keys (built on first use when not cached)
    _uids: pa.Array | None = field(default=None, init=False, repr=False, compare=False)
    _whole: pa.Table | None = field(default=None, init=False, repr=False, compare=False)  # one chunk per column
    _index_tried: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, table: pa.Table, source: str, digest: str, fingerprint: str, **kw: Any) -> RoundPool:
        """A pool over ``table`` (any chunking), held in ``POOL_CHUNK``-row chunks (zero-copy when ``table`` is
        one chunk per column; the uid column then stays available as one array without a copy)."""
        whole = table if all(c.num_chunks == 1 for c in table.columns) else None
        if whole is None and any(len(c) != POOL_CHUNK for c in table.column("uid").chunks[:-1]):
            whole = table.combine_chunks()
        pool = cls(_rechunk(whole) if whole is not None else table, source, digest, fingerprint, **kw)
        if whole is not None:
            pool._whole, pool._uids = whole, whole.column("uid").chunk(0)
        return pool

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def uids(self) -> pa.Array:
        """The uid column as one array (combined once)."""
        if self._uids is None:
            self._uids = _one_chunk(self.table.column("uid"))
        return self._uids

    def fast_index(self) -> UidIndex | None:
        """The fixed-width uid index (built and kept on first use); None when the uids are not fixed-width."""
        if self.uid_index is None and not self._index_tried:
            self._index_tried = True
            self.uid_index = UidIndex.build(self.uids)
        return self.uid_index

    def index_of(self, uids: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int64]:
        """Pool row of each uid; -1 where the uid is not in the pool."""
        index = self.fast_index()
        if index is not None:
            words = uid_words(self.uids, index.width)
            rows = index.lookup(words, uids) if words is not None else None
            if rows is not None:
                return rows
        idx = pc.index_in(uids, value_set=self.uids)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def init_manifest_path(run: RunDir, init: str) -> Path:
    """``--init`` accepts a selection name (``RUN/selections/NAME``) or a manifest ``.parquet`` path."""
    sel = run.selection_manifest(init)
    if sel.exists():
        return sel
    p = Path(init)
    if p.suffix == ".parquet" and p.exists():
        return p
    raise UsageError(
        f"--init {init!r}: no selection {sel} and no manifest file by that path; "
        f"run 'curate select --run {run.root} --name {init} ...' first"
    )


def pool_cache_path(run: RunDir) -> Path:
    return run.bootstrap_dir / "pool.arrow"


def pool_index_path(run: RunDir) -> Path:
    return run.bootstrap_dir / "pool-index.arrow"


def inputs_fingerprint(files: list[Path], source: str) -> str:
    h = hashlib.sha256(source.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_one_pool_table(path: Path) -> tuple[str, pa.Table, bool]:
    """(its shard, the pool columns of one file, whether it holds one shard in position order)."""
    t = read_parquet(path, ID_COLUMNS, memory_map=True).select(ID_COLUMNS).cast(POOL_SCHEMA)
    shards = pc.unique(t.column("shard"))
    pos = t.column("position").to_numpy()
    return (shards[0].as_py() if len(shards) else ""), t, len(shards) <= 1 and bool(np.all(pos[1:] > pos[:-1]))


def read_sorted_pool(files: list[Path]) -> pa.Table:
    """Per-shard tables concatenated in shard order; sorted with Arrow only if a file is not in order.

    Files are read by a few threads (pyarrow releases the GIL); the first bad file in order raises.
    """
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as ex:
        read = list(ex.map(read_one_pool_table, files))
    ordered = all(ok for _, _, ok in read)
    keyed = [(shard, t) for shard, t, _ in read]
    keyed.sort(key=lambda kt: kt[0].encode())  # Arrow sorts strings bytewise
    table = pa.concat_tables([t for _, t in keyed]) if keyed else POOL_SCHEMA.empty_table()
    if not ordered:
        table = table.sort_by([("shard", "ascending"), ("position", "ascending")])
    return table.combine_chunks()


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _rechunk(table: pa.Table) -> pa.Table:
    """``table`` in chunks of ``POOL_CHUNK`` rows, as a cached pool reads back (zero-copy slices)."""
    return pa.Table.from_batches(table.to_batches(max_chunksize=POOL_CHUNK), table.schema)


def _read_index(index: Path, width: int | None) -> UidIndex | None:
    """The cached uid index (``store.py``) as a :class:`UidIndex`; None for uids of several widths, equal keys
    (the in-memory index needs distinct ones) or a damaged file."""
    if width is None:
        return None
    try:
        table = feather.read_table(index, columns=["key", "row"], memory_map=True)
        key, row = (_one_chunk(table.column(c)).to_numpy() for c in ("key", "row"))
        if len(key) > 1 and not bool(np.all(key[1:] > key[:-1])):
            return None
        return UidIndex(int(width), key, row)
    except (pa.ArrowInvalid, OSError, ValueError):
        return None


def pool_inputs(run: RunDir, init: str | None) -> tuple[list[Path], str]:
    """The files the pool is read from and its source: every embedding file, or the ``--init`` manifest."""
    if init is None:
        files = embedding_files(run.root)
        if not files:
            raise InputError(f"no embeddings in {run.root}; run 'curate embed SHARDS --run {run.root}' first")
        return files, "embeddings"
    return [init_manifest_path(run, init)], f"selection:{init}"


def load_round_pool(run_root: str | os.PathLike[str], init: str | None = None) -> RoundPool:
    """The whole pool in memory: every embedded sample, or the subset of the manifest ``init`` names.

    From the cache ``bootstrap_round`` keeps (``store.py``: memory-mapped) when it is current, else read and
    validated from the input files. For tools that need the pool at once (the coreset, reports, history);
    rounds read it a piece at a time (:func:`curate.bootstrap.store.open_pool_store`).
    """
    from curate.bootstrap.store import cached_store

    run = RunDir(run_root)
    files, source = pool_inputs(run, init)
    fp = inputs_fingerprint(files, source)
    store = cached_store(run, source, fp)
    if store is not None:
        try:
            table = feather.read_table(store.path, memory_map=True)
            return RoundPool.of(table.replace_schema_metadata(None), source, store.digest, fp,
                           uid_index=_read_index(store.index_path, store.width))
        except (pa.ArrowInvalid, OSError, ValueError):
            pass  # a damaged cache: read the inputs
    table = read_sorted_pool(files)
    if table.num_rows == 0:
        raise InputError(f"the pool of {run.root} ({source}) is empty")
    uids = table.column("uid").chunk(0)  # one chunk after read_sorted_pool
    index = UidIndex.build(uids)  # sorted fixed-width keys: built only for distinct uids
    if index is None and pc.count_distinct(uids).as_py() != table.num_rows:
        raise InputError(f"the pool of {run.root} ({source}) has duplicate uids; re-embed or fix the selection")
    if init is not None:
        _check_embedded(run, table, files[0])
    return RoundPool.of(table, source, hash_strings(uids), fp, uid_index=index)


def _check_embedded(run: RunDir, table: pa.Table, manifest: Path) -> None:
    """An ``--init`` manifest must hold samples of this run (not, say, a manifest of another run)."""
    emb = embedding_files(run.root)
    if not emb:
        raise InputError(f"no embeddings in {run.root}; run 'curate embed SHARDS --run {run.root}' first")
    known = pa.chunked_array([read_parquet(f, ["uid"], memory_map=True).column("uid").combine_chunks() for f in emb])
    missing = pc.invert(pc.is_in(table.column("uid"), value_set=known.combine_chunks()))
    n = pc.sum(missing).as_py() or 0
    if n:
        raise InputError(
            f"--init {manifest}: {n} of {table.num_rows} samples are not embedded in {run.root} "
            "(a manifest of another run?)"
        )


@dataclass
class RoundLosses:
    """Validated losses of one round mapped onto pool rows."""

    row: npt.NDArray[np.int64]  # pool row of each loss row
    batch: npt.NDArray[np.int64]
    loss_a: npt.NDArray[np.float32]  # as stored (float32); every use converts exactly
    loss_b: npt.NDArray[np.float32] | None
    files: int

    def __len__(self) -> int:
        return len(self.row)

    @property
    def loss(self) -> npt.NDArray[np.float64]:
        """The training loss per sample: (loss_a + loss_b) / 2, or loss_a alone (float64)."""
        a = self.loss_a.astype(np.float64)
        return a if self.loss_b is None else (a + self.loss_b.astype(np.float64)) / 2.0


def loss_files(run: RunDir, round_: int) -> list[Path]:
    """Finished loss parts of a round (hidden temporary files of live writers are skipped)."""
    d = run.losses_dir(round_)
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def read_losses(run: RunDir, round_: int) -> tuple[pa.Table, int]:
    """All loss parts of a round as one table with ``LOSS_SCHEMA``; a clear error when absent or bad."""
    files = loss_files(run, round_)
    if not files:
        raise InputError(
            f"no loss table for round {round_} in {run.losses_dir(round_)}; record losses while training "
            f"(curate.trainer.LossRecorder) or run 'curate losses --run {run.root} --round {round_} --checkpoint CKPT'"
        )
    tables = []
    for f in files:
        t = read_parquet(f, memory_map=True)
        missing = {"uid", "batch", "loss_a"} - set(t.column_names)
        if missing:
            raise InputError(f"loss table {f} lacks columns {sorted(missing)} (need uid, batch, loss_a[, loss_b])")
        if "loss_b" not in t.column_names:
            t = t.append_column("loss_b", pa.nulls(t.num_rows, pa.float32()))
        try:
            t = t.select(LOSS_SCHEMA.names).cast(LOSS_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise InputError(f"loss table {f} has wrong column types: {str(exc).splitlines()[0]}") from None
        tables.append(t)
    return pa.concat_tables(tables), len(files)


def map_losses(
    run: RunDir, round_: int, pool: RoundPool, allowed: npt.NDArray[np.bool_] | None = None
) -> RoundLosses:
    """Read, validate and map the losses of ``round_``: unknown, duplicate or non-finite rows are errors.

    ``allowed`` marks the pool rows that were in the round's manifest; a loss for any other uid is an
    unknown uid.
    """
    table, nfiles = read_losses(run, round_)
    where = run.losses_dir(round_)
    if table.num_rows == 0:
        raise InputError(f"the loss table of round {round_} in {where} is empty")
    for col in ("uid", "batch", "loss_a"):
        if table.column(col).null_count:
            raise InputError(f"the loss table of round {round_} in {where} has nulls in {col}")
    loss_a = table.column("loss_a").to_numpy()
    lb = table.column("loss_b")
    if lb.null_count == table.num_rows:
        loss_b = None
    elif lb.null_count:
        raise InputError(f"the loss table of round {round_} in {where} has nulls in loss_b (fill all or none)")
    else:
        loss_b = lb.to_numpy()
    for name, arr in (("loss_a", loss_a), ("loss_b", loss_b)):
        if arr is not None and not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(
                f"the loss table of round {round_} has {bad} NaN or infinite {name} values; "
                "fix the trainer (diverged loss?) and record the round again"
            )
    uids = table.column("uid")
    row = pool.index_of(uids)
    unknown = row < 0
    if allowed is not None:
        unknown |= ~allowed[np.where(unknown, 0, row) if unknown.any() else row]
    if unknown.any():
        first = uids[int(np.flatnonzero(unknown)[0])].as_py()
        raise InputError(
            f"the loss table of round {round_} has {int(unknown.sum())} uids that were not in round "
            f"{round_}'s manifest (e.g. {first}); record losses only for samples of that manifest"
        )
    seen = np.zeros(len(pool), np.uint8)
    seen[row] = 1
    if np.count_nonzero(seen) < len(row):  # some row twice: count them (error path only)
        counts = np.bincount(row, minlength=len(pool))
        dup = int(np.sum(counts > 1))
        first = pool.uids[int(np.flatnonzero(counts > 1)[0])].as_py()
        raise InputError(
            f"the loss table of round {round_} has {dup} duplicate uids (e.g. {first}); "
            "record each sample once per round (no resampling within a round)"
        )
    del seen, unknown
    batch = table.column("batch").to_numpy().astype(np.int64, copy=False)
    return RoundLosses(row, batch, loss_a, loss_b, nfiles)
