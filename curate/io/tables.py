"""Reading and writing Parquet tables of the run folder (their schemas: ``curate.schemas``)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError
from curate.fs import atomic_path
from curate.schemas import EMBEDDINGS_META_KEY, embedding_schema

__all__ = ["embedding_schema", "fixed_list", "read_parquet", "table_metadata", "to_numpy_matrix", "write_table"]

def fixed_list(arr: np.ndarray, dtype: pa.DataType = pa.float16()) -> pa.FixedSizeListArray:
    """An (n, d) numpy array as a fixed-size-list Arrow array without a Python loop."""
    arr = np.ascontiguousarray(arr)
    d = arr.shape[1]
    values = pa.array(arr.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(values, d)


def to_numpy_matrix(col: pa.ChunkedArray | pa.Array, dtype: Any = np.float32) -> np.ndarray:
    """A fixed-size-list column (no nulls) as an (n, d) numpy array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if col.null_count:
        raise InputError("embedding column has nulls; filter them first")
    d = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, d).astype(dtype, copy=False)


def write_table(path: str | os.PathLike[str], table: pa.Table, **kwargs: Any) -> None:
    """Write a Parquet file atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def release_arrow_memory() -> None:
    """Hand Arrow's freed memory back to the system: its allocator keeps what a Parquet decode or write
    freed (~0.4 GB after a block of 512-d rows), which numpy's allocations cannot reuse. On glibc the
    C heap's free pages go back too (``malloc_trim``), so that Arrow's next allocations find them."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


#: Vector columns of the embedding tables: float16 values that neither repeat nor compress, so a
#: dictionary attempt and Snappy only slow their decoding (5× on 512-d halves: BENCHMARKS §4).
VECTOR_COLUMNS = ("image_emb", "text_emb")
#: Rows per row group of an embedding table. Arrow decodes a list column's chunk of a row group whole,
#: even when asked for batches, so the row group is what a reader holds: 16k rows are 16 MB per 512-d
#: float16 column (a 100k-row group held ~200 MB: BENCHMARKS §4).
EMBEDDING_GROUP_ROWS = 1 << 14


def write_embedding_table(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write an embedding table atomically: vector columns plain and uncompressed, the others as usual,
    in row groups of :data:`EMBEDDING_GROUP_ROWS` rows."""
    names = table.schema.names
    write_table(path, table, row_group_size=EMBEDDING_GROUP_ROWS,
                use_dictionary=[n for n in names if n not in VECTOR_COLUMNS],
                compression={n: "none" if n in VECTOR_COLUMNS else "snappy" for n in names})


def read_parquet(path: str | os.PathLike[str], columns: Sequence[str] | None = None, *,
                 memory_map: bool = False) -> pa.Table:
    """Read one Parquet file, with a one-line error on a missing or corrupt file.

    ``memory_map``: read through ``ParquetFile`` on a memory map, skipping the dataset layer: no copy of the
    file into memory, and at 10M rows a fraction of the time and fresh memory (bootstrap's large tables).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        if memory_map:
            pf = pq.ParquetFile(path, memory_map=True)
            if columns is None or set(columns) <= set(pf.schema_arrow.names):  # else: the error below
                return pf.read(columns=list(columns) if columns is not None else None)
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None


def table_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """curate's JSON metadata stored in a Parquet file's schema."""
    try:
        md = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None
    raw = md.get(EMBEDDINGS_META_KEY)
    return json.loads(raw) if raw else {}


def embedding_files(run_root: str | os.PathLike[str]) -> list[Path]:
    """Finished per-shard embedding tables of a run, sorted by shard name."""
    d = Path(run_root) / "embeddings"
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))


def read_embeddings(run_root: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """All embedding tables of a run, concatenated in shard order."""
    files = embedding_files(run_root)
    if not files:
        raise InputError(f"no embeddings in {run_root}; run 'curate embed SHARDS --run {run_root}' first")
    tables = [read_parquet(f, columns) for f in files]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


#: Rows per row group of ``pyarrow.parquet.write_table`` (its default; ``RowGroupWriter`` cuts the same groups).
ROW_GROUP_ROWS = 1 << 20


class RowGroupWriter:
    """Write a Parquet file from tables that arrive in pieces, with the bytes ``write_table`` gives their
    concatenation: the same row groups of :data:`ROW_GROUP_ROWS` rows, each written in one call.

    At most one row group is held. ``combine``: ``True`` joins each row group's chunks into one (the layout of a
    table built from whole arrays), or the names of the columns to join; other columns keep the pieces' chunks.
    Writes to ``path`` as given, a path or a file object (callers pass a temporary path; see
    :func:`curate.fs.atomic_path`).
    """

    def __init__(self, path: str | os.PathLike[str] | Any, schema: pa.Schema, *,
                 combine: bool | Sequence[str] = True, **kwargs: Any) -> None:
        self.schema = schema
        self._combine = set(schema.names) if combine is True else set(combine or ())
        where = os.fspath(path) if isinstance(path, str | os.PathLike) else path  # a path or a writable file
        self._writer = pq.ParquetWriter(where, schema, **kwargs)
        self._pending: list[pa.Table] = []
        self._held = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (the schema's columns, in order)."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._held += table.num_rows
        self.rows += table.num_rows
        while self._held >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        held = pa.concat_tables(self._pending) if len(self._pending) != 1 else self._pending[0]
        group, rest = held.slice(0, n), held.slice(n)
        if self._combine:
            cols = [c.combine_chunks() if name in self._combine and c.num_chunks != 1 else c
                    for name, c in zip(group.column_names, group.columns, strict=True)]
            group = pa.Table.from_arrays(cols, schema=group.schema)
        self._writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
        self._pending, self._held = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        """Write the last row group and the footer (no rows: one empty row group, as ``write_table`` writes)."""
        if self._held:
            self._flush(self._held)
        elif self.rows == 0:
            self._writer.write_table(self.schema.empty_table())
        self._writer.close()

    def abort(self) -> None:
        """Close without the rows still held (the caller removes the file)."""
        self._pending, self._held = [], 0
        with contextlib.suppress(Exception):
            self._writer.close()
