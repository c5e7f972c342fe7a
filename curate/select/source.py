"""The selection pool as a row space that is read block by block, never whole.

The pool is every row of the run's embedding tables, in *pool order*: the tables sorted by shard
name, rows in table order (which is the shards' sample order). A row is addressed by its global
index in that order. Work over rows is cut into blocks of :data:`BLOCK_ROWS` consecutive rows, and
every per-row product is computed block by block, so that any engine and any memory budget does the
same arithmetic on the same blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError
from curate.io.tables import embedding_files, release_arrow_memory, table_metadata
from curate.schemas import (
    EMBEDDINGS_FORMAT_VERSION,
    EMBEDDINGS_META_KEY,
    ID_COLUMNS,
    POOL_SCHEMA,
    check_table,
    check_version,
)
from curate.select.base import Pool
from curate.select.pool import embedding_mask, embedding_matrix

BLOCK_ROWS = 1 << 16  # rows per block: the unit of per-row arithmetic, of pass-1 tasks and of table writes
READ_BATCH_ROWS = 1 << 14  # rows decoded at a time when reading a row group of the embedding tables
READ_BUFFER = 1 << 20  # bytes of a Parquet file read at a time (pages stream; no whole column chunk in memory)

_PART_COLUMNS = {"image": ("image_emb",), "text": ("text_emb",), "clip_score": ("clip_score",)}


@dataclass
class PoolSource:
    """The run's embedding tables as one row space (only Parquet footers are read when opening)."""

    run_root: Path
    files: list[Path]
    offsets: np.ndarray  # global row where each file starts; offsets[-1] = rows in the pool
    row_groups: list[np.ndarray]  # per file: local row where each row group starts (+ its row count)
    meta: dict[str, Any] = field(default_factory=dict)
    columns: frozenset[str] = frozenset()
    dim: int = 0
    block_rows: int = BLOCK_ROWS  # fixed when the pool is opened: tasks elsewhere cut the same blocks

    @classmethod
    def open(cls, run_root: str | os.PathLike[str]) -> PoolSource:
        """Read the footers of ``RUN/embeddings/*.parquet``; a clear error when there are none."""
        run_root = Path(run_root)
        files = embedding_files(run_root)
        if not files:
            raise InputError(f"no embeddings in {run_root}; run 'curate embed SHARDS --run {run_root}' first")
        return cls.from_files(run_root, files)

    @classmethod
    def from_files(cls, run_root: Path, files: list[Path]) -> PoolSource:
        """The rows of embedding tables ``files`` in that order (e.g. one table given by the user)."""
        counts, groups, columns = [], [], None
        dim = 0
        for f in files:
            try:
                md = pq.read_metadata(f)
                schema = pq.read_schema(f)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"corrupt Parquet file {f}: {str(exc).splitlines()[0]}") from None
            check_table("embeddings", POOL_SCHEMA, schema, f)  # the id columns
            raw = (schema.metadata or {}).get(EMBEDDINGS_META_KEY)
            meta = json.loads(raw) if raw else {}
            if "format_version" in meta:
                check_version("embeddings table", meta, f, EMBEDDINGS_FORMAT_VERSION)
            names = frozenset(schema.names)
            columns = names if columns is None else columns & names
            if "image_emb" in names and pa.types.is_fixed_size_list(schema.field("image_emb").type):
                dim = dim or schema.field("image_emb").type.list_size
            counts.append(md.num_rows)
            sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            groups.append(np.cumsum([0, *sizes]).astype(np.int64))
        offsets = np.cumsum([0, *counts]).astype(np.int64)
        if offsets[-1] == 0:
            raise InputError(f"no samples in {run_root}/embeddings; check the embed step's stats")
        return cls(run_root, files, offsets, groups, table_metadata(files[0]), columns or frozenset(), dim,
                   BLOCK_ROWS)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def blocks(self, rows: int | None = None) -> list[tuple[int, int]]:
        """``[start, stop)`` of every block of ``rows`` rows (default: the pool's blocks), in pool order."""
        n = len(self)
        rows = rows or self.block_rows
        return [(s, min(n, s + rows)) for s in range(0, n, rows)]

    def fingerprint(self) -> str:
        """A digest of the tables that make up the pool (names, sizes, modification times)."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:24]

    def uid_digest(self) -> str:
        """sha256 of the pool's uids in pool order (``hash_strings``), read one table's uid column at a time."""
        from curate.bootstrap.data import StringHasher

        h = StringHasher()
        for f in self.files:
            try:
                h.update(pq.ParquetFile(f).read(columns=["uid"]).column(0))  # no dataset layer: ~2x faster
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"corrupt Parquet file {f}: {str(exc).splitlines()[0]}") from None
        return h.hexdigest()

    def require(self, parts: Iterable[str], ids: bool = True) -> list[str]:
        """The table columns that ``parts`` need (and the id columns); an error when the tables lack one."""
        cols = (list(ID_COLUMNS) if ids else []) + [c for p in parts for c in _PART_COLUMNS[p]]
        missing = sorted(set(cols) - self.columns)
        if missing:
            raise InputError(f"embedding tables in {self.run_root} lack columns {missing}; re-run 'curate embed'")
        return cols

    def read(self, start: int, stop: int, columns: Sequence[str]) -> pa.Table:
        """Rows ``[start, stop)`` of the pool (only the row groups that hold them are read)."""
        parts = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for i in range(max(first, 0), len(self.files)):
            f0, f1 = int(self.offsets[i]), int(self.offsets[i + 1])
            if f0 >= stop:
                break
            lo, hi = max(start, f0) - f0, min(stop, f1) - f0
            if hi <= lo:
                continue
            g = self.row_groups[i]
            g0 = int(np.searchsorted(g, lo, side="right")) - 1
            g1 = int(np.searchsorted(g, hi, side="left"))
            for j in range(g0, g1):
                t = self._row_group(i, j, tuple(columns))
                a, b = max(lo, int(g[j])), min(hi, int(g[j + 1]))
                parts.append(t.slice(a - int(g[j]), b - a))
        if not parts:
            raise ValueError(f"rows {start}:{stop} are outside the pool of {len(self)}")
        return pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]

    def _row_group(self, i: int, j: int, columns: tuple[str, ...]) -> pa.Table:
        """Row group ``j`` of file ``i``; the last one read is kept, since consecutive blocks share the
        row group on their edge (a row group is decoded whole: a block that starts inside it would
        otherwise decode it again)."""
        key = (i, j, columns)
        cached = self.__dict__.get("_last_group")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__["_last_group"] = None  # drop the old one before decoding the next
        try:  # pages streamed and decoded a batch at a time: memory is the decoded rows, not 3-5× them
            f = pq.ParquetFile(self.files[i], buffer_size=READ_BUFFER, pre_buffer=False)
            batches = list(f.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[j], columns=list(columns)))
            t = pa.Table.from_batches(batches, schema=f.schema_arrow.empty_table().select(list(columns)).schema)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"corrupt Parquet file {self.files[i]}: {str(exc).splitlines()[0]}") from None
        t = t.replace_schema_metadata(None)
        release_arrow_memory()  # the decode's scratch
        self.__dict__["_last_group"] = (key, t)
        return t

    def release(self) -> None:
        """Drop the cached row group (after a scan)."""
        self.__dict__.pop("_last_group", None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for tasks without the cached row group."""
        return {k: v for k, v in self.__dict__.items() if k != "_last_group"}

    def chunk(self, start: int, stop: int, parts: Iterable[str], ids: bool = True,
              by_rows: Iterable[str] = ()) -> Pool:
        """Rows ``[start, stop)`` as a :class:`Pool`: ids (unless ``ids`` is False), and the normalised
        matrices ``parts`` asks for (only the valid masks of those in ``by_rows``: see :meth:`Pool.rows`)."""
        parts = set(parts)
        cols = self.require(parts, ids)
        if not cols:  # nothing to read (a method that needs only the row numbers)
            return Pool(ids=None, meta=dict(self.meta), n_rows=stop - start)
        table = self.read(start, stop, cols)
        return pool_from_table(table, parts, self.meta, ids, frozenset(by_rows))


def pool_from_table(table: pa.Table, parts: set[str], meta: dict[str, Any] | None = None,
                    ids: bool = True, by_rows: frozenset[str] = frozenset()) -> Pool:
    """A :class:`Pool` from rows of an embedding table (matrices L2-normalised, with validity masks).

    The float16 columns stay as read (a chunk per row group, never combined into a copy); parts in
    ``by_rows`` get their masks only, and are read through :meth:`Pool.rows`."""
    pool = Pool(ids=table.select(list(ID_COLUMNS)) if ids else None, meta=dict(meta or {}),
                n_rows=None if ids else table.num_rows)
    for col in ("image_emb", "text_emb"):
        if col in table.column_names:
            c = table.column(col)
            pool.raw[col] = c.chunk(0) if c.num_chunks == 1 else c
    for part in ("image", "text"):
        if part in parts:
            col = pool.raw[f"{part}_emb"]
            if part in by_rows:
                setattr(pool, f"{part}_ok", embedding_mask(col))
            else:
                mat, ok = embedding_matrix(col)
                setattr(pool, part, mat)
                setattr(pool, f"{part}_ok", ok)
    if "text" in parts:
        pool.text_present = table.column("text_emb").is_valid().to_numpy(zero_copy_only=False)
    if "clip_score" in parts:
        pool.clip_score = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32)
    return pool


def gather_rows(source: PoolSource, parts: set[str], rows: np.ndarray | None,
                valid: Any) -> np.ndarray:
    """The ``image`` matrix (float32, normalised) of the pool rows ``rows`` (all rows when None) for
    which ``valid(chunk)`` is True, in pool order, read block by block (a k-means training sample).

    Memory: the result, one block and one decoded row group; the result is filled in place (no list of
    pieces and their concatenation, which would hold it twice)."""
    d = source.dim
    out = np.empty((len(rows) if rows is not None else len(source), d), np.float32)
    n = 0
    for s, e in source.blocks():
        if rows is not None:
            a, b = np.searchsorted(rows, [s, e])
            if a == b:
                continue
            take = rows[a:b] - s
        else:
            take = None
        table = source.read(s, e, source.require(parts))
        if take is not None:  # only the sampled rows are converted (validity and normalising are per row)
            table = table.take(pa.array(take))
        chunk = pool_from_table(table, parts, source.meta)
        ok = valid(chunk)
        assert chunk.image is not None
        got = chunk.image[ok]
        out[n : n + len(got)] = got
        n += len(got)
        del table, chunk, got
    source.release()
    release_arrow_memory()
    return out[:n] if n < len(out) else out


def read_rows(path: str | os.PathLike[str], start: int, stop: int, columns: Sequence[str]) -> pa.Table:
    """Rows ``[start, stop)`` of one Parquet file (only the row groups that hold them are read)."""
    try:
        f = pq.ParquetFile(path)
        md = f.metadata
        edges = np.cumsum([0, *[md.row_group(i).num_rows for i in range(md.num_row_groups)]])
        g0 = int(np.searchsorted(edges, start, side="right")) - 1
        g1 = int(np.searchsorted(edges, stop, side="left"))
        t = f.read_row_groups(list(range(max(g0, 0), g1)), columns=list(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None
    return t.slice(start - int(edges[max(g0, 0)]), stop - start)
