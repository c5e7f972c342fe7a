"""Embedding columns to normalised float32 matrices: chunk by chunk, with the bits of the whole column at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate.io.tables import fixed_list
from curate.select import pool
from curate.select.pool import embedding_matrix


def _column(rng: np.random.Generator, sizes: list[int], d: int) -> tuple[pa.ChunkedArray, np.ndarray, np.ndarray]:
    """A chunked float16 column with nulls, NaN, inf, zero and tiny rows; its values and validity."""
    n = sum(sizes)
    raw = rng.normal(size=(n, d)).astype(np.float16)
    raw[3] = np.nan
    raw[10, 2] = np.inf
    raw[11] = 0
    raw[12] = np.float16(1e-5)
    null = np.zeros(n, bool)
    null[[5, 30]] = True
    chunks, a = [], 0
    for m in sizes:
        c = fixed_list(raw[a : a + m])
        c = pa.FixedSizeListArray.from_arrays(c.values, d, mask=pa.array(null[a : a + m]))
        chunks.append(c)
        a += m
    return pa.chunked_array(chunks), raw, ~null


def test_chunked_conversion_has_the_bits_of_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    col, raw, not_null = _column(rng, [5, 20, 0, 13, 9], 16)
    whole, whole_ok = pool._normalise(raw.astype(np.float32), not_null)  # the whole column in one go
    monkeypatch.setattr(pool, "NORMALISE_ROWS", 7)  # row slices that cut across the chunks
    mat, ok = embedding_matrix(col)
    assert mat.dtype == np.float32 and mat.shape == raw.shape
    assert np.array_equal(ok, whole_ok) and np.array_equal(mat.view(np.uint32), whole.view(np.uint32))
    # and what the values are: unit rows where valid, zero rows where not
    bad = {3, 5, 10, 11, 12, 30}
    assert set(np.flatnonzero(~ok)) == bad
    assert np.allclose(np.linalg.norm(mat[ok], axis=1), 1.0, atol=1e-6)
    assert not mat[~ok].any()
    ref = raw[ok].astype(np.float64)
    assert np.allclose(mat[ok], ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)


def test_a_plain_array_and_an_empty_column() -> None:
    rng = np.random.default_rng(8)
    col, raw, not_null = _column(rng, [40], 4)
    mat, ok = embedding_matrix(col.chunk(0))
    whole, whole_ok = pool._normalise(raw.astype(np.float32), not_null)
    assert np.array_equal(mat.view(np.uint32), whole.view(np.uint32)) and np.array_equal(ok, whole_ok)
    empty, eok = embedding_matrix(pa.chunked_array([], type=col.type))
    assert empty.shape == (0, 4) and eok.shape == (0,)


def test_mask_alone_and_rows_by_slices_have_the_bits_of_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block read by rows (``by_rows``): its valid mask without the matrix, and any slice of rows
    normalised on demand, equal the whole matrix's mask and rows bit for bit."""
    from curate.select.base import Pool
    from curate.select.pool import embedding_mask

    rng = np.random.default_rng(9)
    col, _, _ = _column(rng, [11, 20, 0, 13, 9], 8)
    whole, whole_ok = embedding_matrix(col)
    monkeypatch.setattr(pool, "NORMALISE_ROWS", 5)
    assert np.array_equal(embedding_mask(col), whole_ok)
    p = Pool(ids=None, n_rows=len(col), raw={"image_emb": col})
    for a, b in [(0, 53), (0, 7), (7, 31), (30, 53), (52, 53), (9, 9)]:
        got = p.rows("image", a, b)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), whole[a:b].view(np.uint32))
    p.image = whole  # held: a slice of it
    assert p.rows("image", 4, 9).base is whole


def test_normalise_rows_in_slices_has_the_bits_of_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition's float32 copy (``normalise_rows``) is built a few rows at a time: the same bits as the
    whole matrix normalised at once, NaN, inf, zero and tiny rows zeroed."""
    rng = np.random.default_rng(9)
    _, raw, _ = _column(rng, [40], 16)
    whole, whole_ok = pool._normalise(raw.astype(np.float32), None)
    monkeypatch.setattr(pool, "NORMALISE_ROWS", 7)
    got = pool.normalise_rows(raw)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), whole.view(np.uint32))
    assert not got[[3, 10, 11, 12]].any() and set(np.flatnonzero(~whole_ok)) == {3, 10, 11, 12}
