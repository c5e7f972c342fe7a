"""SCAN's within-batch candidate rule (spec §1.3), vectorised across batches.

Every function works on flat per-sample arrays (one row per recorded loss) with a ``batch`` id. Rows are
put in a canonical order (batch, tiebreak) once; ranking within batches is then one stable integer
argsort of a packed ``(group << 32) | loss_key`` uint64, where ``loss_key`` is the order-preserving
uint32 image of the float32 loss (losses are stored as float32). No Python loop over samples or
batches, and no multi-key ``np.lexsort`` (several times slower at 10M rows).

Ties are broken by ``tiebreak`` (the sample's pool index), so results do not depend on row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Fraction of the per-direction count that the two-direction intersection must reach (spec §1.3).
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
    """``map_ind`` of §1.3 for every batch at once.

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
    batch = np.asarray(batch, np.int64)
    tiebreak = np.arange(n, dtype=np.int64) if tiebreak is None else np.asarray(tiebreak, np.int64)
    # canonical order: (batch, tiebreak); all work below happens in it, results are mapped back
    if n and tiebreak.min() >= 0 and (batch.max() - batch.min() + 1) * (tiebreak.max() + 1) < 2**62:
        canon = np.argsort((batch - batch.min()) * (tiebreak.max() + 1) + tiebreak)
    else:
        canon = np.lexsort((tiebreak, batch))
    gid = _sorted_groups(batch[canon])
    groups = Groups(gid, np.bincount(gid, minlength=int(gid.max(initial=-1)) + 1).astype(np.int64))
    la = np.asarray(loss_a)[canon]
    ra = rank_desc(groups, la)
    rb = ra if loss_b is None else rank_desc(groups, np.asarray(loss_b)[canon])
    size = groups.size[gid]
    k_hi, k_lo = quota(groups, rho_max), quota(groups, rho_min)
    u_red = rng.integers(0, 2**32, n, dtype=np.uint64)
    u_ill = rng.integers(0, 2**32, n, dtype=np.uint64)
    lo_a, lo_b = ra >= size - k_lo[gid], rb >= size - k_lo[gid]
    hi_a, hi_b = ra < k_hi[gid], rb < k_hi[gid]
    red = _top_up(groups, lo_a, lo_b, k_lo, u_red)
    ill = _top_up(groups, hi_a, hi_b, k_hi, u_ill)
    denom = np.maximum(size - 1, 1).astype(np.float64)
    pct = np.where(size > 1, 1.0 - (ra + rb) / (2.0 * denom), 0.5).astype(np.float32)
    out_red, out_ill, out_pct = np.empty(n, bool), np.empty(n, bool), np.empty(n, np.float32)
    out_red[canon], out_ill[canon], out_pct[canon] = red, ill, pct
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
