"""SCAN's within-batch candidate rule (the reference code's ``PrePrune``; docs/bootstrap.md), vectorised across batches.

Every function works on flat per-sample arrays (one row per recorded loss) with a ``batch`` id. Rows are
put in a canonical order (batch, tiebreak) once; ranking within batches is then one numpy sort of a
packed ``group | loss_key | position-in-group`` uint64, where ``loss_key`` is the order-preserving
uint32 image of the float32 loss (losses are stored as float32). The keys are distinct, so the plain
(SIMD) sort gives exactly the order of a stable argsort of ``(group, loss_key)`` at a fraction of its
cost, and the position bits say where each sorted entry came from. No Python loop over samples or
batches, and no multi-key ``np.lexsort`` (several times slower at 10M rows). When the packed key would
not fit in 64 bits (billions of groups), the stable-argsort path is used.

Ties are broken by ``tiebreak`` (the sample's pool index), so results do not depend on row order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Fraction of the per-direction count that the two-direction intersection must reach (as in the reference code).
TOP_UP_FACTOR = 0.9


@dataclass(frozen=True)
class Groups:
    """Row → batch-group mapping: ``gid[i]`` is row i's group, ``size[g]`` the group's row count."""

    gid: npt.NDArray[np.int64]
    size: npt.NDArray[np.int64]

    @property
    def n_groups(self) -> int:
        return len(self.size)


def _sorted_groups(b_sorted: np.ndarray) -> npt.NDArray[np.int64]:
    """Dense group ids of an already sorted key column."""
    gid = np.zeros(len(b_sorted), np.int64)
    if len(b_sorted) > 1:
        np.cumsum(b_sorted[1:] != b_sorted[:-1], out=gid[1:])
    return gid


def make_groups(batch: np.ndarray) -> Groups:
    """Dense group ids (in ascending batch order) for a batch-id column."""
    batch = np.asarray(batch)
    order = np.argsort(batch, kind="stable")
    gid = np.empty(len(batch), np.int64)
    gid[order] = _sorted_groups(batch[order])
    size = np.bincount(gid, minlength=int(gid.max(initial=-1)) + 1).astype(np.int64)
    return Groups(gid, size)


def _pos_in_group(gid_sorted: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    n = len(gid_sorted)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, gid_sorted[1:] != gid_sorted[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def loss_key(loss: np.ndarray) -> npt.NDArray[np.uint64]:
    """Order-preserving uint32 image of ``loss`` as float32 (as uint64, ready to pack)."""
    bits = np.ascontiguousarray(loss, dtype=np.float32).view(np.uint32)
    flip = np.where(bits & np.uint32(0x80000000), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (bits ^ flip).astype(np.uint64)


def _grouped_order(gid: np.ndarray, key32: np.ndarray) -> np.ndarray:
    """Stable order by (gid, key32) for rows in canonical order (ties keep canonical order)."""
    return np.argsort((gid.astype(np.uint64) << np.uint64(32)) | key32, kind="stable")


def rank_desc(groups: Groups, loss: np.ndarray) -> npt.NDArray[np.int64]:
    """Each row's rank within its batch by descending loss (0 = highest); rows must be in canonical order."""
    order = _grouped_order(groups.gid, np.uint64(0xFFFFFFFF) - loss_key(loss))
    rank = np.empty(len(order), np.int64)
    rank[order] = _pos_in_group(groups.gid[order])
    return rank


def quota(groups: Groups, rho: float) -> npt.NDArray[np.int64]:
    """Per-batch count ``int(n * rho)`` (truncation as in the reference; 0 selects nothing)."""
    return np.floor(groups.size.astype(np.float64) * float(rho)).astype(np.int64)


def _top_up(
    groups: Groups, s1: np.ndarray, s2: np.ndarray, k: np.ndarray, u: np.ndarray
) -> npt.NDArray[np.bool_]:
    """The reference code's ``map_ind`` top-up, for every batch at once.

    ``s1``/``s2``: rows extreme in direction a/b (exactly ``k[g]`` each per batch). Keeps the
    intersection; where it holds fewer than 0.9·k rows, adds ``k - |both|`` rows chosen uniformly at
    random (by the random uint32 keys ``u``) from the rows extreme in only one direction.
    """
    both = s1 & s2
    n_both = np.bincount(groups.gid[both], minlength=groups.n_groups)
    need = np.where(n_both < TOP_UP_FACTOR * k, k - n_both, 0)
    pool = np.flatnonzero((s1 ^ s2) & (need[groups.gid] > 0))
    if len(pool):
        order = pool[_grouped_order(groups.gid[pool], u[pool])]
        pos = _pos_in_group(groups.gid[order])
        both[order[pos < need[groups.gid[order]]]] = True
    return both


@dataclass(frozen=True)
class Candidates:
    """Per-row outcome of the candidate rule."""

    redundant: npt.NDArray[np.bool_]  # low loss in both directions (after top-up)
    ill_matched: npt.NDArray[np.bool_]  # high loss in both directions (after top-up)
    loss_rank: npt.NDArray[np.float32]  # mean over directions of the within-batch percentile, 1 = highest


def _bits(x: int) -> int:
    return int(x).bit_length()


def _key32(loss: np.ndarray, descending: bool) -> npt.NDArray[np.uint32]:
    """``loss_key`` as uint32, bitwise inverted for a descending order (``~k == 0xFFFFFFFF - k``)."""
    bits = np.ascontiguousarray(loss, dtype=np.float32).view(np.uint32)
    key = np.right_shift(bits, np.uint32(31))  # sign bit
    key *= np.uint32(0x7FFFFFFF)
    key |= np.uint32(0x80000000)  # flip: 0xFFFFFFFF for negatives, 0x80000000 otherwise
    key ^= bits
    if descending:
        np.invert(key, out=key)
    return key


def _distinct(values: npt.NDArray[np.int64], vmax: int) -> bool:
    """Whether non-negative ``values`` (all <= vmax) are pairwise distinct."""
    if vmax < 8 * len(values) + (1 << 20):
        seen = np.zeros(vmax + 1, np.uint8)
        seen[values] = 1
        return int(np.count_nonzero(seen)) == len(values)
    return len(np.unique(values)) == len(values)


def _canonical_order(batch: npt.NDArray[np.int64], tiebreak: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Row permutation into (batch, tiebreak) order by argsort (the general path)."""
    n = len(batch)
    if n == 0:
        return np.zeros(0, np.intp)
    bmin, tmin, tmax = int(batch.min()), int(tiebreak.min()), int(tiebreak.max())
    if tmin >= 0 and (int(batch.max()) - bmin + 1) * (tmax + 1) < 2**62:
        return np.argsort((batch - bmin) * (tmax + 1) + tiebreak)
    return np.lexsort((tiebreak, batch))


def _canonical(
    batch: npt.NDArray[np.int64], tiebreak: npt.NDArray[np.int64], distinct: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """(rows in canonical (batch, tiebreak) order, their ``batch - batch.min()`` ascending).

    With distinct non-negative tie-breaks (pool rows; ``distinct=True`` says the caller checked) and when
    ``batch | tiebreak | row`` fits in 63 bits: one numpy sort of the packed keys, whose low bits give the
    row and whose high bits give the batch. Otherwise ``_canonical_order``. Same order either way.
    """
    n = len(batch)
    if n == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.int64)
    bmin, tmin, tmax = int(batch.min()), int(tiebreak.min()), int(tiebreak.max())
    tb, ib = _bits(tmax), _bits(n - 1)
    if tmin >= 0 and _bits(int(batch.max()) - bmin) + tb + ib <= 63 and (distinct or _distinct(tiebreak, tmax)):
        key = batch - bmin
        key <<= tb
        key |= tiebreak
        key <<= ib
        key |= np.arange(n, dtype=np.int64)
        key.sort()
        canon = (key & ((1 << ib) - 1)).astype(np.intp, copy=False)
        key >>= tb + ib
        return canon, key
    canon = _canonical_order(batch, tiebreak)
    b = batch[canon]
    b -= bmin
    return canon, b


def _dense_groups(b_sorted: npt.NDArray[np.int64]) -> Groups:
    """``Groups`` of a sorted, non-negative batch column (a lookup table instead of a cumulative sum)."""
    n = len(b_sorted)
    span = int(b_sorted[-1]) + 1 if n else 0
    if not n or span > 4 * n + (1 << 20):
        gid = _sorted_groups(b_sorted)
        return Groups(gid, np.bincount(gid, minlength=int(gid.max(initial=-1)) + 1).astype(np.int64))
    counts = np.bincount(b_sorted, minlength=span)
    present = counts > 0
    if present.all():  # consecutive batch ids (the usual case): the offsets are the group ids
        return Groups(b_sorted, counts.astype(np.int64))
    remap = np.cumsum(present) - 1
    return Groups(remap[b_sorted], counts[present].astype(np.int64))


@dataclass(frozen=True)
class _Layout:
    """Rows in canonical order, grouped: each row's group start and position within its group and, when
    (group, 32-bit key, position) fits in a non-negative int64, ``(group << (32 + pos_bits)) | pos``.
    """

    groups: Groups
    start: npt.NDArray[np.int64]  # first row of the row's group
    pos: npt.NDArray[np.int64]  # row index - start
    pos_bits: int  # bits for a position within the largest group
    base: npt.NDArray[np.int64] | None

    @property
    def packs(self) -> bool:
        return self.base is not None

    @classmethod
    def of(cls, groups: Groups) -> _Layout:
        n = len(groups.gid)
        first = np.zeros(groups.n_groups, np.int64)
        np.cumsum(groups.size[:-1], out=first[1:])
        start = first[groups.gid]
        pos = np.arange(n, dtype=np.int64)
        pos -= start
        pb = _bits(int(groups.size.max(initial=1)) - 1)
        base = None
        if _bits(groups.n_groups - 1) + 32 + pb <= 63:
            base = np.left_shift(groups.gid, 32 + pb)
            base |= pos
        return cls(groups, start, pos, pb, base)

    def sorted_rows(self, rows: np.ndarray | None, key32: np.ndarray) -> npt.NDArray[np.int64]:
        """Rows (all, or the ascending subset ``rows``) in (group, key32, row) order via one numpy sort.

        ``key32``: one value < 2**32 per row of ``rows``. Needs ``packs``.
        """
        if self.base is None:
            raise ValueError("sorted_rows needs a layout that packs")
        pb = self.pos_bits
        packed = key32.astype(np.int64)
        packed <<= pb
        packed |= self.base if rows is None else self.base[rows]
        packed.sort()  # keys are distinct: the order is unique, that of a stable argsort of (group, key32)
        packed &= (1 << pb) - 1
        # sorting keeps every group in place, so the i-th sorted entry lies in the i-th entry's group
        packed += self.start if rows is None else self.start[rows]
        return packed


def _rank_desc(layout: _Layout, loss: np.ndarray) -> npt.NDArray[np.int64] | npt.NDArray[np.int32]:
    """``rank_desc`` through ``_Layout.sorted_rows`` (one numpy sort instead of a stable argsort; int32)."""
    if not layout.packs:
        return rank_desc(layout.groups, loss)
    rank = np.empty(len(loss), np.int32)  # packs: positions fit in 31 bits
    rank[layout.sorted_rows(None, _key32(loss, descending=True))] = layout.pos
    return rank


def _top_up_packed(
    layout: _Layout, s1: np.ndarray, s2: np.ndarray, k: np.ndarray, u: np.ndarray
) -> npt.NDArray[np.bool_]:
    """``_top_up`` through ``_Layout.sorted_rows``; same result."""
    groups = layout.groups
    if not layout.packs:
        return _top_up(groups, s1, s2, k, u)
    both = s1 & s2
    n_both = np.bincount(groups.gid[both], minlength=groups.n_groups)
    need = np.where(n_both < TOP_UP_FACTOR * k, k - n_both, 0)
    pool = np.flatnonzero((s1 ^ s2) & (need > 0)[groups.gid])
    if len(pool):
        order = layout.sorted_rows(pool, u[pool])
        g = groups.gid[pool]  # == gid[order]: same group ranges
        per_group = np.bincount(g, minlength=groups.n_groups)
        first = np.cumsum(per_group) - per_group
        pos = np.arange(len(pool), dtype=np.int64)
        pos -= first[g]  # position among the group's pool rows, in sorted order
        both[order[pos < need[g]]] = True
    return both


def _loss_rank(groups: Groups, ra: np.ndarray, rb: np.ndarray) -> npt.NDArray[np.float32]:
    """``1 - (ra + rb) / (2 (size - 1))`` (0.5 in batches of one) as float32, computed in float64 in blocks."""
    n = len(ra)
    den2 = 2.0 * np.maximum(groups.size - 1, 1).astype(np.float64)
    single = groups.size <= 1
    out = np.empty(n, np.float32)
    block = 1 << 20
    for s in range(0, n, block):
        g = groups.gid[s : s + block]
        x = np.add(ra[s : s + block], rb[s : s + block], dtype=np.int64)
        x = np.divide(x, den2[g])
        np.subtract(1.0, x, out=x)
        x[single[g]] = 0.5
        out[s : s + block] = x
    return out


def canonical_candidates(
    batch: np.ndarray,
    loss_a: np.ndarray,
    loss_b: np.ndarray | None,
    *,
    rho_max: float,
    rho_min: float,
    rng: np.random.Generator | None = None,
    tiebreak: np.ndarray | None = None,
    distinct: bool = False,
    draws: Callable[[int], npt.NDArray[np.uint64]] | None = None,
) -> tuple[npt.NDArray[np.intp], Candidates]:
    """``find_candidates`` in canonical (batch, tiebreak) order: (canon, candidates of rows ``canon``).

    ``distinct=True``: the caller guarantees distinct tie-breaks (pool rows). The random keys of the two
    top-ups are ``rng.integers(0, 2**32, n, dtype=np.uint64)`` twice, or ``draws(0)`` and ``draws(1)``: a
    range of batches ranked alone takes the slices of those two draws at its rows' canonical positions
    (see :func:`uint32_slice`), and so marks the rows the whole table would.
    """
    if draws is None:
        if rng is None:
            raise ValueError("canonical_candidates needs rng or draws")
        first = rng.integers(0, 2**32, len(loss_a), dtype=np.uint64)
        draws = lambda k: first if k == 0 else rng.integers(0, 2**32, len(loss_a), dtype=np.uint64)  # noqa: E731
    n = len(loss_a)
    batch = np.asarray(batch, np.int64)
    if tiebreak is None:
        tiebreak, distinct = np.arange(n, dtype=np.int64), True
    canon, b_sorted = _canonical(batch, np.asarray(tiebreak, np.int64), distinct)
    groups = _dense_groups(b_sorted)
    del b_sorted
    gid = groups.gid
    layout = _Layout.of(groups)
    # losses are compared as float32: convert, then gather 4-byte values
    ra = _rank_desc(layout, np.ascontiguousarray(loss_a, dtype=np.float32)[canon])
    rb = ra if loss_b is None else _rank_desc(layout, np.ascontiguousarray(loss_b, dtype=np.float32)[canon])
    k_hi, k_lo = quota(groups, rho_max), quota(groups, rho_min)
    thr = (groups.size - k_lo).astype(ra.dtype)[gid]  # rank >= size - k_lo: redundant
    u = draws(0)  # the first draw: top-up of the redundant sets
    red = _top_up_packed(layout, ra >= thr, rb >= thr, k_lo, u)
    thr = k_hi.astype(ra.dtype)[gid]  # rank < k_hi: ill-matched
    u = draws(1)  # the second draw: top-up of the ill-matched sets
    ill = _top_up_packed(layout, ra < thr, rb < thr, k_hi, u)
    del thr, u, layout
    return canon, Candidates(red, ill, _loss_rank(groups, ra, rb))


def uint32_slice(make_rng: Callable[[], np.random.Generator], start: int, count: int) -> npt.NDArray[np.uint64]:
    """Values ``start .. start + count - 1`` of the sequence that ``rng.integers(0, 2**32, k, dtype=np.uint64)``
    calls draw from a fresh ``make_rng()``, one call after another, without drawing the values before them.

    numpy draws such values as 32-bit halves of PCG64's 64-bit outputs (low half first, the high half kept
    for the next value), so value ``i`` is a half of output ``i // 2``: advance the generator by
    ``start // 2`` outputs and, for an odd ``start``, drop one value.
    """
    rng = make_rng()
    if not isinstance(rng.bit_generator, np.random.PCG64):
        raise TypeError("uint32_slice needs a PCG64 generator (numpy's default_rng)")
    rng.bit_generator.advance(start // 2)
    if start % 2:
        rng.integers(0, 2**32, 1, dtype=np.uint64)
    return rng.integers(0, 2**32, count, dtype=np.uint64)


def find_candidates(
    batch: np.ndarray,
    loss_a: np.ndarray,
    loss_b: np.ndarray | None,
    *,
    rho_max: float,
    rho_min: float,
    rng: np.random.Generator,
    tiebreak: np.ndarray | None = None,
) -> Candidates:
    """Mark redundant (lowest-loss ρ_min) and ill-matched (highest-loss ρ_max) rows of every batch.

    A row is a candidate when it is extreme in both directions; per batch the intersection is topped up
    at random from the rows extreme in one direction only until it holds at least 0.9·int(n·ρ) rows
    (exactly int(n·ρ) after a top-up). ``loss_b=None`` (single-direction losses) uses ``loss_a`` twice.
    For one global ranking pass a constant ``batch``. Losses are compared as float32.
    """
    n = len(loss_a)
    canon, c = canonical_candidates(batch, loss_a, loss_b, rho_max=rho_max, rho_min=rho_min, rng=rng,
                                     tiebreak=tiebreak)
    out_red, out_ill, out_pct = np.empty(n, bool), np.empty(n, bool), np.empty(n, np.float32)
    out_red[canon], out_ill[canon], out_pct[canon] = c.redundant, c.ill_matched, c.loss_rank
    return Candidates(out_red, out_ill, out_pct)


def epoch_loss(batch: np.ndarray, loss_a: np.ndarray, loss_b: np.ndarray | None) -> float:
    """The reference's epoch loss: sum over batches of the batch-mean training loss ((a+b)/2)."""
    if len(loss_a) == 0:
        return float("nan")
    loss = np.asarray(loss_a, np.float64)
    if loss_b is not None:
        loss = (loss + np.asarray(loss_b, np.float64)) / 2.0
    groups = make_groups(batch)
    sums = np.bincount(groups.gid, weights=loss, minlength=groups.n_groups)
    return float(np.sum(sums / groups.size))


def by_row(rows: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(order, rows[order]) for distinct non-negative ``rows`` ascending (a numpy sort, no argsort)."""
    n = len(rows)
    ib = int(n - 1).bit_length() if n else 0
    if n and rows.min() >= 0 and int(rows.max()).bit_length() + ib <= 63:
        key = rows << ib
        key |= np.arange(n, dtype=np.int64)
        key.sort()
        order = key & ((1 << ib) - 1)
        key >>= ib
        return order, key
    order = np.argsort(rows, kind="stable")
    return order, rows[order]
