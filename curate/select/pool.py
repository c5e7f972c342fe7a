"""Load a run's embeddings as the selection pool (numpy, normalised, with validity masks)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError
from curate.io.tables import embedding_files, read_embeddings, table_metadata
from curate.select.base import Pool

ID_COLUMNS = ("uid", "shard", "key", "position")
_MIN_NORM = 1e-3  # float16 embeddings of unit norm never come close; zero/garbage rows do


def embedding_matrix(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size-list column as ``(float32 (n, d) L2-normalised matrix, valid mask)``.

    Rows that are null, contain NaN/inf, or have (near) zero norm are invalid and set to zero.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else None
    return _normalise(raw_matrix(col).astype(np.float32), valid)


def raw_matrix(col: pa.FixedSizeListArray) -> np.ndarray:
    """The values of a fixed-size-list column as an ``(n, d)`` array of their own dtype (no copy)."""
    n, d = len(col), col.type.list_size
    return col.values.slice(col.offset * d, n * d).to_numpy(zero_copy_only=False).reshape(n, d)


def _normalise(mat: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(mat).all(axis=1)
    if valid is not None:
        ok &= valid
    mat[~ok] = 0.0
    norms = np.linalg.norm(mat, axis=1)
    ok &= norms > _MIN_NORM
    mat[~ok] = 0.0
    np.divide(mat, norms[:, None], out=mat, where=ok[:, None])
    return mat, ok


def normalise_rows(raw: np.ndarray) -> np.ndarray:
    """Rows (float16 or other floats) as float32, L2-normalised, zero where invalid: per row the same
    values as :func:`embedding_matrix`."""
    return _normalise(np.asarray(raw).astype(np.float32), None)[0]


def load_pool(run_root: str | os.PathLike[str], parts: Iterable[str] = ()) -> Pool:
    """Read the run's embedding tables: ids always, plus ``image``/``text``/``clip_score`` as asked."""
    parts = set(parts)
    cols = list(ID_COLUMNS)
    cols += [c for p, c in (("image", "image_emb"), ("text", "text_emb"), ("clip_score", "clip_score")) if p in parts]
    table = read_embeddings(run_root, cols)
    missing = set(cols) - set(table.column_names)
    if missing:
        raise InputError(f"embedding tables in {run_root} lack columns {sorted(missing)}; re-run 'curate embed'")
    if table.num_rows == 0:
        raise InputError(f"no samples in {run_root}/embeddings; check the embed step's stats")
    files = embedding_files(run_root)
    pool = Pool(ids=table.select(list(ID_COLUMNS)), meta=table_metadata(files[0]) if files else {})
    if pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise InputError(f"duplicate uids in {run_root}/embeddings; re-run 'curate embed' into a fresh run")
    if "image" in parts:
        pool.image, pool.image_ok = embedding_matrix(table.column("image_emb"))
    if "text" in parts:
        pool.text, pool.text_ok = embedding_matrix(table.column("text_emb"))
        pool.text_present = table.column("text_emb").is_valid().to_numpy(zero_copy_only=False)
    if "clip_score" in parts:
        pool.clip_score = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32)
    return pool
