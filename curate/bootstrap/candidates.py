"""SCAN's within-batch candidate rule (spec §1.3), vectorised across batches.

Every function works on flat per-sample arrays (one row per recorded loss) with a ``batch`` id; rows are
grouped by sorting on (batch, loss) with ``np.lexsort`` and per-batch offsets, never by a Python loop
over samples or batches.

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


def make_groups(batch: np.ndarray) -> Groups:
    """Dense group ids (in ascending batch order) for a batch-id column."""
    uniq, gid = np.unique(np.asarray(batch), return_inverse=True)
    size = np.bincount(gid, minlength=len(uniq)).astype(np.int64)
    return Groups(gid.astype(np.int64).reshape(-1), size)


def _pos_in_group(gid_sorted: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    n = len(gid_sorted)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, gid_sorted[1:] != gid_sorted[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def rank_desc(groups: Groups, loss: np.ndarray, tiebreak: np.ndarray) -> npt.NDArray[np.int64]:
    """Each row's rank within its batch by descending loss (0 = highest); ties by ``tiebreak``."""
    order = np.lexsort((tiebreak, -np.asarray(loss, np.float64), groups.gid))
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
    random (by the random keys ``u``) from the rows extreme in only one direction.
    """
    both = s1 & s2
    n_both = np.bincount(groups.gid[both], minlength=groups.n_groups)
    need = np.where(n_both < TOP_UP_FACTOR * k, k - n_both, 0)
    pool = np.flatnonzero((s1 ^ s2) & (need[groups.gid] > 0))
    if len(pool):
        order = pool[np.lexsort((u[pool], groups.gid[pool]))]
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
    For one global ranking pass a constant ``batch``.
    """
    n = len(loss_a)
    tiebreak = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    groups = make_groups(batch)
    ra = rank_desc(groups, loss_a, tiebreak)
    rb = ra if loss_b is None else rank_desc(groups, loss_b, tiebreak)
    size = groups.size[groups.gid]
    k_hi, k_lo = quota(groups, rho_max), quota(groups, rho_min)
    # Random keys in a canonical row order (batch, tiebreak), so the draw ignores input row order.
    canon = np.lexsort((tiebreak, groups.gid))
    u_red, u_ill = np.empty(n), np.empty(n)
    u_red[canon] = rng.random(n)
    u_ill[canon] = rng.random(n)
    lo_a, lo_b = ra >= size - k_lo[groups.gid], rb >= size - k_lo[groups.gid]
    hi_a, hi_b = ra < k_hi[groups.gid], rb < k_hi[groups.gid]
    red = _top_up(groups, lo_a, lo_b, k_lo, u_red)
    ill = _top_up(groups, hi_a, hi_b, k_hi, u_ill)
    denom = np.maximum(size - 1, 1).astype(np.float64)
    pct = 1.0 - (ra + rb) / (2.0 * denom)
    pct = np.where(size > 1, pct, 0.5)
    return Candidates(red, ill, pct.astype(np.float32))


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
