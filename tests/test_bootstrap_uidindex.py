"""The fixed-width uid index gives exactly ``pyarrow.compute.index_in``'s answer, collisions included."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.bootstrap import uidindex
from curate.bootstrap.uidindex import UidIndex, fixed_width, uid_words


def _hex(rng: np.random.Generator, n: int, width: int = 32) -> list[str]:
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)[rng.integers(0, 16, (n, width))]
    return [bytes(r).decode() for r in digits]


def _expected(pool: pa.Array, query: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.index_in(query, value_set=pool).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _check(pool_values: list[str], query_values: list[str], chunks: int = 1) -> np.ndarray:
    pool = pa.array(pool_values, pa.string())
    idx = UidIndex.build(pool)
    assert idx is not None
    bounds = np.linspace(0, len(query_values), chunks + 1).astype(int)
    query = pa.chunked_array([pa.array(query_values[a:b], pa.string()) for a, b in itertools.pairwise(bounds)],
                             pa.string())
    got = idx.lookup(uid_words(pool, idx.width), query)
    assert got is not None
    np.testing.assert_array_equal(got, _expected(pool, query))
    return got


@pytest.mark.parametrize("width", [32, 12, 1])
def test_lookup_matches_index_in(width: int) -> None:
    rng = np.random.default_rng(width)
    pool = _hex(rng, 3000, width) if width > 4 else [chr(c) for c in range(33, 127)]
    pool = list(dict.fromkeys(pool))  # distinct
    known = [pool[i] for i in rng.permutation(len(pool))[: len(pool) // 2]]
    foreign = [u for u in _hex(rng, 200, width) if u not in set(pool)] if width > 4 else []
    query = known + foreign + known[:5]  # repeats are looked up too (duplicate checks are the caller's)
    got = _check(pool, [query[i] for i in rng.permutation(len(query))], chunks=3)
    assert (got >= 0).sum() == len(known) + 5


def test_structured_uids_and_sliced_arrays() -> None:
    pool = [f"{i:032x}" for i in range(5000)]  # the tests' uids: identical first 24 characters
    _check(pool, [f"{i:032x}" for i in range(4990, 5010)])
    arr = pa.array(pool).slice(100, 50)  # a slice: offsets do not start at 0
    idx = UidIndex.build(arr)
    assert idx is not None and len(idx) == 50
    got = idx.lookup(uid_words(arr, 32), pa.array(pool[140:160]))
    np.testing.assert_array_equal(got, list(range(40, 50)) + [-1] * 10)


def test_other_widths_and_duplicates_are_refused() -> None:
    assert fixed_width(pa.array(["ab", "abc"])) is None
    assert UidIndex.build(pa.array(["ab", "abc"])) is None
    assert UidIndex.build(pa.array(["ab", "cd", "ab"])) is None  # duplicate uids: no index
    idx = UidIndex.build(pa.array(["ab", "cd"]))
    assert idx is not None
    assert idx.lookup(uid_words(pa.array(["ab", "cd"]), 2), pa.array(["ab", "abc"])) is None  # caller falls back
    assert uid_words(pa.array(["ab", None]), 2) is None


def test_key_collisions_fall_back_to_exact_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weak key (few distinct prefixes, colliding keys) must still give exact rows."""
    rng = np.random.default_rng(5)
    pool = list(dict.fromkeys(_hex(rng, 2000)))
    real_mix = uidindex.mix
    # keys with 3 significant bits in the prefix and many equal prefixes: exercises the by-key retry
    monkeypatch.setattr(uidindex, "mix", lambda w: real_mix(w) & np.uint64(0xE0000000000FFFFF))
    query = pool[::3] + _hex(rng, 300)
    _check(pool, [query[i] for i in rng.permutation(len(query))], chunks=4)
    # colliding keys for distinct pool uids: no index (Arrow decides)
    monkeypatch.setattr(uidindex, "mix", lambda w: real_mix(w) & np.uint64(0xFF))
    assert UidIndex.build(pa.array(pool)) is None
