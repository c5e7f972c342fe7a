"""Reading and writing Parquet tables of the run folder (their schemas: ``curate.schemas``)."""

from __future__ import annotations

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


def read_parquet(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read one Parquet file, with a one-line error on a missing or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
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
