"""Embedding columns as float32 numpy matrices: L2-normalised, with a mask of the valid rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_MIN_NORM = 1e-3  # float16 embeddings of unit norm never come close; zero/garbage rows do
NORMALISE_ROWS = 1 << 13  # rows normalised at a time: the temporaries are this many rows, not the matrix


def embedding_matrix(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size-list column as ``(float32 (n, d) L2-normalised matrix, valid mask)``.

    Rows that are null, contain NaN/inf, or have (near) zero norm are invalid and set to zero. The
    column's chunks are converted one at a time into the result (never combined into a copy of the
    column), and every step is per row, so the values do not depend on how the rows are chunked.
    """
    mat = np.empty((len(col), col.type.list_size), np.float32)
    return mat, _convert(col, mat)


def embedding_mask(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The valid mask of :func:`embedding_matrix` without keeping the matrix (a few rows at a time)."""
    return _convert(col, None)


def _convert(col: pa.ChunkedArray | pa.Array, mat: np.ndarray | None) -> np.ndarray:
    """Normalise ``col``'s rows :data:`NORMALISE_ROWS` at a time, into ``mat`` when given; the mask."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    ok = np.empty(len(col), bool)
    scratch = None
    n = 0
    for c in chunks:
        m = len(c)
        if not m:
            continue
        raw = raw_matrix(c)
        valid = c.is_valid().to_numpy(zero_copy_only=False) if c.null_count else None
        for a in range(0, m, NORMALISE_ROWS):
            b = min(m, a + NORMALISE_ROWS)
            if mat is not None:
                out = mat[n + a : n + b]
            else:
                scratch = np.empty((NORMALISE_ROWS, raw.shape[1]), np.float32) if scratch is None else scratch
                out = scratch[: b - a]
            out[:] = raw[a:b]
            _, ok[n + a : n + b] = _normalise(out, None if valid is None else valid[a:b])
        n += m
    return ok


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
    values as :func:`embedding_matrix`. The temporaries are :data:`NORMALISE_ROWS` rows, not the matrix."""
    raw = np.asarray(raw)
    out = np.empty(raw.shape, np.float32)
    for a in range(0, len(raw), NORMALISE_ROWS):
        out[a : a + NORMALISE_ROWS] = raw[a : a + NORMALISE_ROWS]
        _normalise(out[a : a + NORMALISE_ROWS], None)
    return out
