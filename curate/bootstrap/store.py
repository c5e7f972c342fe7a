"""The pool on disk, read a piece at a time: ``pool.arrow`` and the bucketed uid index ``pool-index.arrow``.

``pool.arrow``
    Arrow IPC file of ``uid, shard, key, position`` in canonical (shard, position) order, one record batch
    per :data:`~curate.bootstrap.data.POOL_CHUNK` rows (pool row r is in batch ``r // POOL_CHUNK``);
    metadata: the fingerprint of the input files, the digest of the uids, the source.
``pool-index.arrow``
    Arrow IPC file of ``key, row, uid`` sorted by (key, row), where ``key`` is the uid's 64-bit
    :func:`~curate.bootstrap.uidindex.uid_keys`. Record batch ``b`` is *bucket* ``b``: the keys whose top
    ``bits`` bits are ``b`` (``2**bits`` buckets of about ``bucket_rows`` rows). Mapping a loss table's
    uids onto pool rows is a join per bucket (``tasks.py``): each bucket of the index is read alone.

Both are written in one streaming pass over the embedding files (or the ``--init`` manifest) that holds
one input file and one group of rows; the index rows are spilled to disk by bucket and each bucket is
sorted alone. Memory therefore does not grow with the pool. Inputs that are not one shard per file (a
merged or hand-made layout) are sorted in memory, as before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.bootstrap.data import (
    POOL_CHUNK,
    StringHasher,
    inputs_fingerprint,
    pool_cache_path,
    pool_index_path,
    pool_inputs,
    read_one_pool_table,
    read_sorted_pool,
)
from curate.bootstrap.uidindex import KEY_VERSION, fixed_width, mix, uid_keys, uid_words, word_items
from curate.errors import InputError
from curate.fs import make_temp_file, remove_dead_temps
from curate.io.tables import embedding_files, read_parquet
from curate.rundir import RunDir
from curate.schemas import ID_COLUMNS, POOL_SCHEMA

POOL_FORMAT = 2  # pool.arrow in POOL_CHUNK-row record batches (format 1: one record batch)
INDEX_FORMAT = 3  # pool-index.arrow bucketed, with the uids (1: key and row only; 2: uids as strings)
#: Pool rows per bucket of the uid index, and rows per task of the passes over a loss table (``tasks.py``):
#: a task holds about 300 bytes per row at its peak, so ~0.6 GB at this size.
PARTITION_ROWS = 1 << 21
_INDEX_META = b"curate.pool_index"
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.uint64(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
    ]
)


def index_schema(width: int | None) -> pa.Schema:
    """The uid index's schema: uids as fixed-size binary when every pool uid has ``width`` bytes, else strings."""
    return INDEX_SCHEMA if not width else INDEX_SCHEMA.set(2, pa.field("uid", pa.binary(width), nullable=False))
_PREFETCH = 8  # embedding files read ahead by threads while the pool streams
_MAP_CHUNKS = 16  # pool chunks read through one memory map


# --- partitioned Arrow files ------------------------------------------------------------------------
def write_parts(path: str | os.PathLike[str], table: pa.Table, dest: np.ndarray, n_parts: int,
                metadata: dict[str, Any] | None = None) -> npt.NDArray[np.int64]:
    """Write ``table`` as an Arrow IPC file of ``n_parts`` record batches, row i in batch ``dest[i]``.

    Rows keep their order within a batch. ``metadata`` (JSON) goes into the schema. Written in place: callers
    write to a temporary name. Returns the row count of each batch.
    """
    counts = np.bincount(dest, minlength=n_parts).astype(np.int64) if len(dest) else np.zeros(n_parts, np.int64)
    grouped = len(dest) < 2 or bool(np.all(dest[1:] >= dest[:-1]))
    ordered = table if grouped else table.take(pa.array(group_order(dest, n_parts)))
    ordered = ordered.combine_chunks()
    schema = table.schema.with_metadata({b"curate": json.dumps(metadata or {}).encode()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        start = 0
        for c in counts.tolist():
            w.write_batch(_one_batch(ordered.slice(start, c), schema))
            start += c
    return counts


def group_order(dest: np.ndarray, n: int) -> npt.NDArray[np.intp]:
    """The stable order that groups rows by ``dest`` (< n): a radix sort of small integers."""
    if n <= 1:
        return np.arange(len(dest))
    small = np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.int64
    return np.argsort(dest.astype(small, copy=False), kind="stable")


def _one_batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    cols = [c.combine_chunks() if c.num_chunks != 1 else c.chunk(0) for c in table.columns]
    if not table.num_rows:
        cols = [pa.array([], f.type) for f in schema]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def read_part(paths: Sequence[str | os.PathLike[str]], part: int, schema: pa.Schema | None = None) -> pa.Table:
    """Record batch ``part`` of each of the files ``paths`` (written by :func:`write_parts`), concatenated."""
    batches = []
    for p in paths:
        with pa.memory_map(str(p), "r") as src:  # the batch's buffers keep the map open while in use
            reader = pa.ipc.open_file(src)
            schema = schema or reader.schema.remove_metadata()
            b = reader.get_batch(part)
            if b.num_rows:
                batches.append(b.replace_schema_metadata(None))
    if schema is None:
        raise ValueError("read_part needs a schema when no file is given")
    return pa.Table.from_batches(batches, schema.remove_metadata()) if batches else schema.empty_table()


def part_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata :func:`write_parts` stored (the footer only is read)."""
    with pa.OSFile(str(path), "rb") as src:
        raw = (pa.ipc.open_file(src).schema.metadata or {}).get(b"curate", b"{}")
    return json.loads(raw)


# --- the pool store --------------------------------------------------------------------------------------
def index_bits(n: int, bucket_rows: int) -> int:
    """Bits of the bucket number: the fewest for buckets of at most ``bucket_rows`` rows on average."""
    bits = 0
    while (n >> bits) > bucket_rows and bits < 24:
        bits += 1
    return bits


def bucket_of(keys: npt.NDArray[np.uint64], bits: int) -> npt.NDArray[np.int64]:
    """The index bucket of each key (its top ``bits`` bits)."""
    if bits == 0:
        return np.zeros(len(keys), np.int64)
    return (keys >> np.uint64(64 - bits)).astype(np.int64)


@dataclass
class PoolStore:
    """The pool of a run on disk; pool rows are read a range at a time, the uid index a bucket at a time."""

    path: Path  # pool.arrow (a temporary file until ``commit`` when built by this round)
    index_path: Path
    size: int
    digest: str
    source: str
    fingerprint: str
    bits: int
    width: int | None = None  # the common byte length of the uids (None: several lengths)
    temps: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, final) files to commit
    index_job: Future[None] | None = field(default=None, repr=False)  # the index being sorted (a fresh pool)

    def __len__(self) -> int:
        return self.size

    @property
    def buckets(self) -> int:
        return 1 << self.bits

    @property
    def fresh(self) -> bool:
        """Built by this call: ``commit`` publishes it."""
        return bool(self.temps)

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
        """The pool rows ``[start, stop)`` as tables of the POOL_CHUNK-row chunks (start: a multiple of it)."""
        stop = self.size if stop is None else min(stop, self.size)
        if start % POOL_CHUNK:
            raise ValueError(f"pool ranges start at multiples of {POOL_CHUNK}, not {start}")
        first, end = start // POOL_CHUNK, -(-stop // POOL_CHUNK)
        for g in range(first, end, _MAP_CHUNKS):
            # memory-mapped, without copies; a new map every few chunks, so that the pages of the ones already
            # used leave this process's memory once their tables are dropped
            reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
            for i in range(g, min(end, g + _MAP_CHUNKS)):
                yield pa.Table.from_batches([reader.get_batch(i).replace_schema_metadata(None)])
            del reader

    def rows(self, start: int, stop: int) -> pa.Table:
        """The pool rows ``[start, stop)`` (``start`` a multiple of POOL_CHUNK) as one table."""
        tables = list(self.chunks(start, stop))
        t = pa.concat_tables(tables) if tables else POOL_SCHEMA.empty_table()
        return t.slice(0, max(0, min(stop, self.size) - start))

    def bucket(self, b: int) -> pa.Table:
        """Bucket ``b`` of the uid index: ``key, row, uid`` sorted by (key, row)."""
        return read_part([self.index_path], b, index_schema(self.width))

    def ready(self) -> None:
        """Wait for the uid index of a fresh pool, and raise what its build found (duplicate uids, an
        ``--init`` manifest of samples that are not embedded). The pool rows are readable before."""
        job, self.index_job = self.index_job, None
        if job is not None:
            try:
                job.result()
            except BaseException:
                for tmp, _ in self.temps:  # the caller has stopped reading the rows: nothing of this pool stays
                    tmp.unlink(missing_ok=True)
                self.temps = []
                raise

    def commit(self) -> None:
        """Publish a freshly built pool cache and index (rename the temporary files)."""
        self.ready()
        for tmp, final in self.temps:
            os.replace(tmp, final)
        self.temps = []
        self.path, self.index_path = self.path.parent / "pool.arrow", self.index_path.parent / "pool-index.arrow"

    def discard(self) -> None:
        """Remove the temporary files of a pool built by a round that failed."""
        with contextlib.suppress(BaseException):
            self.ready()
        for tmp, _ in self.temps:
            tmp.unlink(missing_ok=True)
        self.temps = []


def _schema_meta(path: Path, key: bytes) -> dict[str, Any] | None:
    """The JSON under ``key`` in an Arrow IPC file's schema metadata; None when absent or unreadable."""
    try:
        with pa.OSFile(str(path), "rb") as src:
            md = pa.ipc.open_file(src).schema.metadata or {}
        return json.loads(md[key]) if key in md else None
    except (pa.ArrowInvalid, OSError, ValueError):
        return None


def cached_store(run: RunDir, source: str, fp: str) -> PoolStore | None:
    """The cached pool of a run when it was built from inputs with fingerprint ``fp``, else None.

    The index's metadata describes both files (written last, it vouches for the pool file beside it).
    """
    cache, index = pool_cache_path(run), pool_index_path(run)
    if not (cache.exists() and index.exists()):
        return None
    meta = _schema_meta(index, _INDEX_META)
    if meta is None or meta.get("format") != INDEX_FORMAT or meta.get("key_version") != KEY_VERSION:
        return None
    pool = meta.get("pool") or {}
    if pool.get("fingerprint") != fp or pool.get("bytes") != cache.stat().st_size:
        return None
    return PoolStore(cache, index, int(pool["size"]), pool["digest"], source, fp, int(meta["bits"]), pool.get("width"))


def open_pool_store(run_root: str | os.PathLike[str], init: str | None = None, *,
                    bucket_rows: int = PARTITION_ROWS) -> PoolStore:
    """The pool of a run from its cache, or built from the inputs (then ``fresh``: the caller commits it).

    Raises the errors of ``load_round_pool`` (no embeddings, an empty pool, duplicate uids, an ``--init``
    manifest of samples that are not embedded) before anything is published.
    """
    run = RunDir(run_root)
    files, source = pool_inputs(run, init)
    fp = inputs_fingerprint(files, source)
    store = cached_store(run, source, fp)
    if store is not None:
        return store
    if init is None:
        n = sum(_parquet_rows(f) for f in files)
        return _build(run, source, fp, lambda: _embedding_tables(files), n, bucket_rows, init=None)
    return _build(run, source, fp, lambda: _manifest_tables(files[0]), _parquet_rows(files[0]), bucket_rows,
                  init=files[0])


def _parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None


class _Restart(Exception):
    """The inputs are not one shard per file in order: read them the general way."""


def _prefetched(files: Sequence[Path]) -> Iterator[tuple[str, pa.Table, bool]]:
    """``read_one_pool_table`` of each file in order, a few files read ahead by threads."""
    with ThreadPoolExecutor(max_workers=min(_PREFETCH, 2 * (os.cpu_count() or 1))) as ex:
        window: deque[Future[tuple[str, pa.Table, bool]]] = deque()
        it = iter(files)
        try:
            for f in it:
                window.append(ex.submit(read_one_pool_table, f))
                if len(window) >= _PREFETCH:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for fut in window:
                fut.cancel()


def _embedding_tables(files: list[Path]) -> Iterator[pa.Table]:
    """The embedding files' pool columns in canonical order, one file at a time.

    Files named by their shard (``curate embed``'s layout) are read in name order; each must hold one shard,
    in increasing shard order (a file out of position order is sorted alone, as the general sort would).
    Anything else raises ``_Restart`` before the first table, or mid-way (the caller starts over with the
    general, in-memory sort).
    """
    named = sorted(files, key=lambda f: f.stem.encode())
    last: bytes | None = None
    for shard, t, ok in _prefetched(named):
        if t.num_rows == 0:
            continue
        if not ok:
            if pc.count_distinct(t.column("shard")).as_py() != 1:
                raise _Restart
            t = t.sort_by([("position", "ascending")])  # stable, as the general sort
        key = shard.encode()
        if last is not None and key <= last:
            raise _Restart
        last = key
        yield t


def _manifest_tables(path: Path) -> Iterator[pa.Table]:
    """An ``--init`` manifest's pool columns a row group at a time; ``_Restart`` when not in canonical order."""
    try:
        pf = pq.ParquetFile(path)
        if not set(ID_COLUMNS) <= set(pf.schema_arrow.names):
            read_parquet(path, ID_COLUMNS)  # raises the usual error
        last: tuple[bytes, int] | None = None
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=ID_COLUMNS).select(ID_COLUMNS).cast(POOL_SCHEMA)
            if t.num_rows == 0:
                continue
            if not _in_order(t, last):
                raise _Restart
            last = (t.column("shard")[-1].as_py().encode(), int(t.column("position")[-1].as_py()))
            yield t
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None


def _in_order(t: pa.Table, last: tuple[bytes, int] | None) -> bool:
    """Rows sorted by (shard bytes, position) strictly, and after ``last``."""
    shard = t.column("shard").combine_chunks()
    pos = t.column("position").to_numpy()
    n = len(pos)
    if last is not None and (shard[0].as_py().encode(), int(pos[0])) <= last:
        return False
    if n < 2:
        return True
    a, b = shard.slice(0, n - 1), shard.slice(1)
    same = pc.equal(a, b).to_numpy(zero_copy_only=False)
    less = pc.less(a.cast(pa.binary()), b.cast(pa.binary())).to_numpy(zero_copy_only=False)
    return bool(np.all(less | (same & (pos[1:] > pos[:-1]))))


class _Chunker:
    """Re-cut a stream of tables into tables of exactly ``size`` rows (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held: list[pa.Table] = []
        self._n = 0

    def feed(self, table: pa.Table) -> Iterator[pa.Table]:
        self._held.append(table)
        self._n += table.num_rows
        while self._n >= self.size:
            yield self._take(self.size)

    def _take(self, n: int) -> pa.Table:
        t = pa.concat_tables(self._held) if len(self._held) != 1 else self._held[0]
        out, rest = t.slice(0, n), t.slice(n)
        self._held, self._n = ([rest] if rest.num_rows else []), rest.num_rows
        return out.combine_chunks()

    def flush(self) -> Iterator[pa.Table]:
        if self._n:
            yield self._take(self._n)


def _build(run: RunDir, source: str, fp: str, tables: Callable[[], Iterable[pa.Table]], n_expected: int,
           bucket_rows: int, *, init: Path | None) -> PoolStore:
    """Stream the pool into temporary ``pool.arrow`` and ``pool-index.arrow`` files (``commit`` publishes them).

    The pool rows are written here; the index's buckets are sorted (and an ``--init`` manifest checked) by a
    thread, so that a round can write its manifest meanwhile (``PoolStore.ready`` waits for it).
    """
    bdir = run.bootstrap_dir
    bdir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    remove_dead_temps(bdir, ".pool-spill.")
    bits = index_bits(n_expected, bucket_rows)
    spill = Path(tempfile.mkdtemp(prefix=f".pool-spill.{pid}-", dir=bdir))
    pool_tmp = make_temp_file(bdir, f".pool.arrow.{pid}-", ".tmp")
    index_tmp = make_temp_file(bdir, f".pool-index.arrow.{pid}-", ".tmp")

    def drop() -> None:
        pool_tmp.unlink(missing_ok=True)
        index_tmp.unlink(missing_ok=True)
        shutil.rmtree(spill, ignore_errors=True)

    try:
        try:
            n, digest, width, groups = _stream_pool(tables(), pool_tmp, spill / "a", bits, bucket_rows)
        except _Restart:  # not one shard per file in order: the general sort, in memory
            table = read_sorted_pool(embedding_files(run.root) if init is None else [init])
            n, digest, width, groups = _stream_pool([table], pool_tmp, spill / "b", bits, bucket_rows)
        if n == 0:
            raise InputError(f"the pool of {run.root} ({source}) is empty")
    except BaseException:
        drop()
        raise
    meta = {"digest": digest, "bits": bits, "format": INDEX_FORMAT, "key_version": KEY_VERSION,
            "pool": {"fingerprint": fp, "digest": digest, "source": source, "size": n, "width": width,
                     "format": POOL_FORMAT, "bytes": pool_tmp.stat().st_size}}

    def index() -> None:
        try:
            _write_index(index_tmp, groups, bits, meta, f"the pool of {run.root} ({source})")
            if init is not None:
                _check_embedded(run, pool_tmp, init, n)
        except BaseException:
            # the round may still be reading the pool rows: PoolStore.ready removes them when it raises this
            index_tmp.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(spill, ignore_errors=True)

    ex = ThreadPoolExecutor(max_workers=1)
    job = ex.submit(index)
    ex.shutdown(wait=False)  # the thread ends with the job
    temps = [(pool_tmp, pool_cache_path(run)), (index_tmp, pool_index_path(run))]
    return PoolStore(pool_tmp, index_tmp, n, digest, source, fp, bits, width, temps, job)


def _stream_pool(tables: Iterable[pa.Table], pool_tmp: Path, spill: Path, bits: int,
                 group_rows: int) -> tuple[int, str, int | None, list[Path]]:
    """Write the pool chunks and spill the index rows by bucket; returns (rows, digest, uid width, spills).

    A group of uids of the first chunk's width is spilled as fixed-size binary (numpy moves its rows), any
    other group as strings.
    """
    spill.mkdir(parents=True, exist_ok=True)
    hasher = StringHasher()
    chunker = _Chunker(POOL_CHUNK)
    groups: list[Path] = []
    held: list[pa.Array] = []
    held_rows, row = 0, 0
    widths: set[int | None] = set()
    buckets = 1 << bits
    first_width: list[int | None] = []

    def spill_group() -> None:
        nonlocal held, held_rows
        if not held_rows:
            return
        uids = pa.concat_arrays(held)
        rows = np.arange(row - held_rows, row, dtype=np.int64)
        w = first_width[0]
        words = uid_words(uids, w) if w else None
        keys = mix(words) if words is not None else uid_keys(uids)
        dest = bucket_of(keys, bits)
        order = group_order(dest, buckets)
        col = fixed_binary(np.take(word_items(words), order), w) if words is not None and w else \
            uids.take(pa.array(order))
        t = pa.table({"key": keys[order], "row": rows[order], "uid": col},
                     schema=index_schema(w if words is not None else None))
        path = spill / f"g{len(groups):07d}.arrow"
        write_parts(path, t, dest[order], buckets)
        groups.append(path)
        held, held_rows = [], 0

    with pa.OSFile(str(pool_tmp), "wb") as sink, pa.ipc.new_file(sink, POOL_SCHEMA) as writer:
        for table in itertools.chain(tables, [None]):
            pieces = chunker.flush() if table is None else chunker.feed(table.select(ID_COLUMNS).cast(POOL_SCHEMA))
            for chunk in pieces:
                writer.write_batch(_one_batch(chunk, POOL_SCHEMA))
                uids = chunk.column("uid").chunk(0)
                hasher.update(uids)
                w = fixed_width(uids)
                widths.add(w)
                if not first_width:
                    first_width.append(w)
                held.append(uids)
                held_rows += chunk.num_rows
                row += chunk.num_rows
                if held_rows >= group_rows:
                    spill_group()
        spill_group()
    width = next(iter(widths)) if len(widths) == 1 else None
    return row, hasher.hexdigest(), width, groups


def _write_index(path: Path, groups: list[Path], bits: int, meta: dict[str, Any], what: str) -> None:
    """Each bucket of the spilled index rows sorted by (key, row), as one record batch; duplicate uids are an
    error (equal keys with different uids are kept: lookups compare the uids)."""
    width = meta["pool"]["width"]
    schema = index_schema(width).with_metadata({_INDEX_META: json.dumps(meta).encode()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for b in range(1 << bits):
            parts = [read_part([g], b) for g in groups]
            if not width:  # several widths: strings everywhere
                parts = [t.set_column(2, "uid", t.column("uid").cast(pa.binary()).cast(pa.string()))
                         if not pa.types.is_string(t.schema.field("uid").type) else t for t in parts]
            t = pa.concat_tables(parts) if parts else schema.empty_table()
            keys, rows = t.column("key").to_numpy(), t.column("row").to_numpy()
            order = _key_row_order(keys, rows)
            keys = keys[order]
            i, j = _same_key_pairs(keys)
            if width:
                words = fixed_words(t.column("uid"), width)
                col: pa.Array = fixed_binary(np.take(word_items(words), order), width)
                dup = bool(np.any(np.all(words[order[i]] == words[order[j]], axis=1)))
            else:
                col = t.column("uid").combine_chunks().take(pa.array(order))
                dup = len(i) > 0 and bool(pc.any(pc.equal(col.take(pa.array(i)), col.take(pa.array(j)))).as_py())
            if dup:
                raise InputError(f"{what} has duplicate uids; re-embed or fix the selection")
            w.write_batch(pa.RecordBatch.from_arrays([pa.array(keys), pa.array(rows[order]), col], schema=schema))


def _key_row_order(keys: np.ndarray, rows: np.ndarray) -> npt.NDArray[np.intp]:
    """The order by (key, row): a sort by key, then the rare runs of equal keys by row."""
    order = np.argsort(keys)
    k = keys[order]
    same = np.flatnonzero(k[1:] == k[:-1])
    if len(same):
        sel = np.union1d(same, same + 1)
        sub = np.lexsort((rows[order[sel]], k[sel]))
        order[sel] = order[sel][sub]
    return order


def _same_key_pairs(keys: np.ndarray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Every pair (i < j) of positions with equal keys (``keys`` sorted; such pairs are rare)."""
    if not bool(np.any(keys[1:] == keys[:-1])):
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    pairs = [np.triu_indices(n, 1) for n in lengths[lengths > 1].tolist()]
    offsets = starts[lengths > 1].tolist()
    return (np.concatenate([p[0] + o for p, o in zip(pairs, offsets, strict=True)]),
            np.concatenate([p[1] + o for p, o in zip(pairs, offsets, strict=True)]))


def fixed_binary(items: np.ndarray, width: int) -> pa.Array:
    """Rows of ``width`` bytes (void items of whole words, zero-padded) as a fixed-size binary array."""
    if len(items) == 0:
        return pa.array([], pa.binary(width))
    raw = np.ascontiguousarray(items).view(np.uint8).reshape(len(items), -1)
    data = raw.reshape(-1) if raw.shape[1] == width else np.ascontiguousarray(raw[:, :width]).reshape(-1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(items), [None, pa.py_buffer(data)])


def fixed_words(col: pa.ChunkedArray | pa.Array, width: int) -> npt.NDArray[np.uint64]:
    """A fixed-size binary column as ``(n, ceil(width / 8))`` little-endian words (zero-padded)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n, w = len(arr), -(-width // 8)
    if n == 0:
        return np.zeros((0, w), "<u8")
    data = np.frombuffer(arr.buffers()[1], np.uint8, count=n * width, offset=arr.offset * width)
    if width % 8 == 0:
        return data.view("<u8").reshape(n, w)
    padded = np.zeros((n, w * 8), np.uint8)
    padded[:, :width] = data.reshape(n, width)
    return padded.view("<u8")


def _check_embedded(run: RunDir, pool: Path, manifest: Path, n: int) -> None:
    """An ``--init`` manifest must hold samples of this run: each uid in some embedding file.

    Each shard's uids are looked up in that shard's embedding file; those not found there (none, normally)
    are looked up in every embedding file.
    """
    emb = embedding_files(run.root)
    if not emb:
        raise InputError(f"no embeddings in {run.root}; run 'curate embed SHARDS --run {run.root}' first")
    stray: list[pa.Array] = []
    cached: tuple[str, pa.Array] | None = None
    store = PoolStore(pool, pool, n, "", "", "", 0)
    for chunk in store.chunks():
        shard = chunk.column("shard").combine_chunks()
        uids = chunk.column("uid").combine_chunks()
        starts = np.r_[0, np.flatnonzero(pc.not_equal(shard.slice(1), shard.slice(0, len(shard) - 1))
                                         .to_numpy(zero_copy_only=False)) + 1, len(shard)]
        for a, b in itertools.pairwise(starts.tolist()):
            name = shard[a].as_py()
            if cached is None or cached[0] != name:
                f = run.embedding_file(name)
                known = (read_parquet(f, ["uid"], memory_map=True).column("uid").combine_chunks() if f.exists()
                         else pa.array([], pa.string()))
                cached = (name, known)
            part = uids.slice(a, b - a)
            found = pc.is_in(part, value_set=cached[1])
            if found.false_count:
                stray.append(part.filter(pc.invert(found)))
    if not stray:
        return
    left = pa.concat_arrays(stray)
    for f in emb:
        if not len(left):
            break
        seen = read_parquet(f, ["uid"], memory_map=True).column("uid").combine_chunks()
        left = left.filter(pc.invert(pc.is_in(left, value_set=seen)))
    if len(left):
        raise InputError(
            f"--init {manifest}: {len(left)} of {n} samples are not embedded in {run.root} "
            "(a manifest of another run?)"
        )
