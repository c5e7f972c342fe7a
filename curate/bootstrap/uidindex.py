"""Uid → pool-row lookup for fixed-width uids (DataComp's 32-hex uids) without hashing strings in Arrow.

When every pool uid has the same byte length L, a uid's bytes are read straight from the Arrow string
buffer as ``ceil(L / 8)`` little-endian 64-bit words and mixed into one 64-bit key. The index is the
pool's keys, sorted, with the pool row of each (cached beside the pool in ``RUN/bootstrap``). A lookup
sorts the query keys once (a numpy sort of ``key prefix | query position``: no argsort), merges them into
the index with a binary search over sorted keys, and verifies every match byte for byte against the pool's
uid; a failed check retries with the full key. The result is exactly ``pyarrow.compute.index_in``'s
(pool row, -1 where absent) for any input: key collisions cost a retry, never a wrong row. Uids that are
not all of the pool's width make :meth:`UidIndex.lookup` return None (the caller falls back to Arrow).

:func:`uid_keys` gives the same keys for uids of one width and extends them to strings of any length; the
partitioned rounds bucket and join loss uids by them (``store.py``, ``tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

#: Version of the key function; stored with a cached index so that a change invalidates old caches.
KEY_VERSION = 1

_U64 = np.uint64
_M0, _M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_VERIFY_BLOCK = 1 << 20  # rows compared per step (bounds the temporaries of the byte check)


def _bits(x: int) -> int:
    return int(x).bit_length()


def _one_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def fixed_width(col: pa.Array | pa.ChunkedArray) -> int | None:
    """The common byte length of the values of a string column (no nulls, at least 1 byte), else None."""
    arr = _one_array(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or arr.null_count or not len(arr):
        return None
    offs = _offsets(arr)
    width = int(offs[1] - offs[0])
    if width < 1 or not np.all(np.diff(offs) == width):
        return None
    return width


def _offsets(arr: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset : arr.offset + len(arr) + 1]


def uid_words(col: pa.Array | pa.ChunkedArray, width: int) -> npt.NDArray[np.uint64] | None:
    """The uids as an ``(n, ceil(width / 8))`` little-endian uint64 matrix (zero-copy when width % 8 == 0).

    None when a value is null or not ``width`` bytes long.
    """
    arr = _one_array(col)
    n = len(arr)
    w = -(-width // 8)
    if n == 0:
        return np.zeros((0, w), "<u8")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or arr.null_count:
        return None
    offs = _offsets(arr)
    if int(offs[-1] - offs[0]) != n * width or not np.all(np.diff(offs) == width):
        return None
    data = np.frombuffer(arr.buffers()[2], np.uint8, count=n * width, offset=int(offs[0]))
    if width % 8 == 0:
        return data.view("<u8").reshape(n, w)
    padded = np.zeros((n, w * 8), np.uint8)
    padded[:, :width] = data.reshape(n, width)
    return padded.view("<u8")


def _finalise(k: npt.NDArray[np.uint64], tmp: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser on ``k``, in place (``tmp``: scratch of the same length)."""
    for shift, mult in ((30, _M1), (27, _M2)):
        np.right_shift(k, _U64(shift), out=tmp)
        np.bitwise_xor(k, tmp, out=k)
        np.multiply(k, mult, out=k)
    np.right_shift(k, _U64(31), out=tmp)
    np.bitwise_xor(k, tmp, out=k)
    return k


def mix(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """A 64-bit key per row of ``words`` (multiply-xorshift per word, splitmix64 finaliser)."""
    n, w = words.shape
    k = np.full(n, w, _U64)
    tmp = np.empty(n, _U64)
    for j in range(w):
        np.bitwise_xor(k, words[:, j], out=k)
        np.multiply(k, _M0, out=k)
        np.right_shift(k, _U64(31), out=tmp)
        np.bitwise_xor(k, tmp, out=k)
    return _finalise(k, tmp)


def _prefix_sort(keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp], int]:
    """Sort ``keys`` (in place: they are overwritten) by their top bits: one numpy sort of ``prefix | position``.

    Returns (the sorted prefixes with the low bits cleared, positions in that order, number of low bits).
    Positions with equal prefixes come out in position order, not key order.
    """
    n = len(keys)
    b = _bits(n - 1)
    low = _U64((1 << b) - 1)
    packed = keys
    packed &= ~low
    packed |= np.arange(n, dtype=_U64)
    packed.sort()
    pos = (packed & low).astype(np.intp)
    packed &= ~low
    return packed, pos, b


def _rows_match(pool: np.ndarray, rows: np.ndarray, words: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Per row: ``rows[i] < 0`` or the pool uid ``rows[i]`` has the bytes ``words[i]``.

    ``pool``: the pool's words as one void item per uid (``np.take`` of those is a plain memcpy per row).
    """
    out = np.empty(len(rows), bool)
    w = words.shape[1]
    for s in range(0, len(rows), _VERIFY_BLOCK):
        r = rows[s : s + _VERIFY_BLOCK]
        got = np.take(pool, np.maximum(r, 0)).view("<u8").reshape(-1, w)
        want = words[s : s + _VERIFY_BLOCK]
        diff = got[:, 0] ^ want[:, 0]
        for j in range(1, w):
            diff |= got[:, j] ^ want[:, j]
        np.logical_or(r < 0, diff == 0, out=out[s : s + _VERIFY_BLOCK])
    return out


def word_items(words: npt.NDArray[np.uint64]) -> np.ndarray:
    """Rows of a C-contiguous word matrix as single void items (a view)."""
    return np.ascontiguousarray(words).view(f"V{8 * words.shape[1]}").reshape(len(words))


@dataclass(frozen=True)
class UidIndex:
    """The pool's uid keys, sorted and unique, with the pool row of each."""

    width: int  # byte length of every pool uid
    key: npt.NDArray[np.uint64]  # ascending, unique
    row: npt.NDArray[np.int64]  # pool row of key[i]

    @classmethod
    def build(cls, uids: pa.Array | pa.ChunkedArray) -> UidIndex | None:
        """Index the pool uids; None if they are not all of one width or two of them share a key.

        A built index therefore also proves that the uids are distinct.
        """
        width = fixed_width(uids)
        words = uid_words(uids, width) if width else None
        if words is None:
            return None
        packed, row, _ = _prefix_sort(mix(words))
        key = mix(words)[row]
        # equal prefixes come out in row order, not key order: sort those (few, short) runs by key
        eq = np.flatnonzero(packed[1:] == packed[:-1])
        if len(eq):
            sel = np.union1d(eq, eq + 1)
            order = np.lexsort((key[sel], packed[sel]))
            key[sel], row[sel] = key[sel][order], row[sel][order]
        del packed
        if np.any(key[1:] <= key[:-1]):
            return None  # duplicate uids, or a key collision: use Arrow's hash join
        return cls(width, key, row.astype(np.int64))

    def __len__(self) -> int:
        return len(self.key)

    def lookup(self, pool_words: npt.NDArray[np.uint64], query: pa.Array | pa.ChunkedArray
               ) -> npt.NDArray[np.int64] | None:
        """Pool row of every query uid (-1 where absent); None if a query uid is not ``width`` bytes long.

        ``pool_words``: ``uid_words`` of the pool's uids in pool-row order (for the byte check).
        """
        parts = []  # the query's words per chunk (zero-copy views of the Arrow buffers)
        for chunk in query.chunks if isinstance(query, pa.ChunkedArray) else [query]:
            words = uid_words(chunk, self.width)
            if words is None:
                return None
            parts.append(words)
        m, n = sum(len(p) for p in parts), len(self.key)
        out = np.full(m, -1, np.int64)
        if m == 0 or n == 0:
            return out
        packed, qpos, b = _prefix_sort(np.concatenate([mix(p) for p in parts]) if len(parts) != 1 else mix(parts[0]))
        low = _U64((1 << b) - 1)
        at = np.searchsorted(self.key, packed)  # the first pool key with a prefix >= the query's
        np.minimum(at, n - 1, out=at)
        hit = self.key[at]
        hit &= ~low
        hit = hit == packed  # the same prefix
        del packed
        out[qpos[hit]] = self.row[at[hit]]
        del at, hit, qpos
        # byte check, chunk by chunk in query order; a failed one retries with the full key
        pool = word_items(pool_words)
        offsets = np.cumsum([0] + [len(p) for p in parts])
        retry = []
        for off, words in zip(offsets, parts, strict=False):
            seg = out[off : off + len(words)]
            bad = np.flatnonzero(~_rows_match(pool, seg, words))
            seg[bad] = -1
            retry.append(bad + off)
        todo = np.concatenate(retry)
        if len(todo):  # the first pool key with the same prefix belonged to another uid
            part = np.searchsorted(offsets, todo, side="right") - 1
            words = np.concatenate([parts[k][todo[part == k] - offsets[k]] for k in range(len(parts))])
            kq = mix(words)
            at = np.minimum(np.searchsorted(self.key, kq), n - 1)
            rows = np.where(self.key[at] == kq, self.row[at], -1)
            ok = _rows_match(pool, rows, words) & (rows >= 0)
            out[todo[ok]] = rows[ok]
        return out


_KEY_BLOCK = 1 << 16  # rows keyed per step when the uids are of several lengths (bounds the padded copy)


def uid_keys(col: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.uint64]:
    """A 64-bit key per string of any length: :func:`mix` of its bytes as little-endian words, the last one
    zero-padded, with the word count as the seed. Equal strings have equal keys in any array; for uids of one
    width the keys are ``mix(uid_words(col, width))`` (those of :class:`UidIndex`). Nulls key as empty strings.
    """
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = [_keys_of(c) for c in chunks if len(c)]
    if not parts:
        return np.zeros(0, _U64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _keys_of(arr: pa.Array) -> npt.NDArray[np.uint64]:
    if pa.types.is_large_string(arr.type) or pa.types.is_string(arr.type):
        width = fixed_width(arr)
        if width is not None:
            words = uid_words(arr, width)
            if words is not None:
                return mix(words)
    else:
        arr = arr.cast(pa.string())
    if arr.null_count:
        arr = arr.fill_null("")
    return np.concatenate([_ragged_keys(arr.slice(s, _KEY_BLOCK)) for s in range(0, len(arr), _KEY_BLOCK)])


def _ragged_keys(arr: pa.Array) -> npt.NDArray[np.uint64]:
    """``uid_keys`` of strings of several lengths: each row padded to the longest in whole words."""
    n = len(arr)
    offs = _offsets(arr).astype(np.int64)
    lengths = np.diff(offs)
    nw = (lengths + 7) // 8
    w = int(nw.max(initial=0))
    padded = np.zeros((n, max(w, 1) * 8), np.uint8)
    total = int(offs[-1] - offs[0])
    if total:
        data = np.frombuffer(arr.buffers()[2], np.uint8, count=total, offset=int(offs[0]))
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(total, dtype=np.int64) - np.repeat(offs[:-1] - offs[0], lengths)
        padded[rows, cols] = data
    words = padded.view("<u8")
    k = nw.astype(_U64)
    tmp = np.empty(n, _U64)
    for j in range(w):  # mix's word loop, only for the rows that have word j
        act = nw > j
        nk = k ^ words[:, j]
        np.multiply(nk, _M0, out=nk)
        np.right_shift(nk, _U64(31), out=tmp)
        np.bitwise_xor(nk, tmp, out=nk)
        k = np.where(act, nk, k)
    return _finalise(k, tmp)
