"""Plans of the synthetic world: which class and which defect every sample of a split gets.

A :class:`Plan` holds one split's per-sample decisions as arrays: the class (Zipf-sized over classes
in the training split, balanced in the test split), the sample's own seed, its role (clean or one
injected defect), the original a duplicate copies, and the class its caption describes. Plans are
drawn from generators keyed by the world's seed and a stream per split, so the splits are independent.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from curate.world.scenes import WorldConfig

__all__ = ["Plan", "Role", "plan_test_split", "plan_train_split", "world_rng", "zipf_counts", "zipf_ranks"]

_WORLD_STREAM = 0
_SPLIT_STREAM = {"train": 1, "test": 2}


class Role(enum.IntEnum):
    """What a training sample is: clean, or exactly one injected defect (``name.lower()`` is its summary key)."""

    CLEAN = 0
    MISMATCHED = 1
    UNINFORMATIVE = 2
    EXACT_DUPLICATE = 3
    NEAR_DUPLICATE = 4


@dataclass(frozen=True)
class Plan:
    """Per-sample decisions of one split, as arrays indexed by position in the split."""

    split: str
    class_ids: np.ndarray
    seeds: np.ndarray
    roles: np.ndarray
    originals: np.ndarray  # index of the original for duplicates, else -1
    caption_classes: np.ndarray  # class the caption describes (mismatched), else the true class

    def defect_counts(self) -> dict[str, int]:
        """Samples per role, keyed ``clean``, ``mismatched``, ... in :class:`Role` order."""
        return {role.name.lower(): int(np.sum(self.roles == role)) for role in Role}


def world_rng(*keys: int) -> np.random.Generator:
    """The generator of stream ``keys`` (the world's seed first)."""
    return np.random.Generator(np.random.PCG64(list(keys)))


def zipf_ranks(cfg: WorldConfig) -> np.ndarray:
    """Zipf rank of every class (0 = most frequent), a random permutation drawn from the world's seed."""
    order = world_rng(cfg.seed, _WORLD_STREAM).permutation(cfg.n_classes)  # order[r] = class of Zipf rank r
    ranks = np.empty(cfg.n_classes, dtype=np.int64)
    ranks[order] = np.arange(cfg.n_classes)
    return ranks


def zipf_counts(n: int, ranks: np.ndarray, exponent: float) -> np.ndarray:
    """Exact per-class counts summing to ``n`` (largest remainder), proportional to (rank+1)^-exponent."""
    weights = 1.0 / (ranks.astype(np.float64) + 1.0) ** exponent
    quota = n * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    remainder = quota - counts
    order = np.lexsort((ranks, -remainder))  # largest remainder first, ties by rank
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _role_counts(n: int, rates: Mapping[Role, float]) -> dict[Role, int]:
    counts = {role: round(rate * n) for role, rate in rates.items()}
    if sum(counts.values()) > n:
        raise ValueError("defect rates add up to more than the whole training split")
    return counts


def plan_train_split(cfg: WorldConfig, n: int, ranks: np.ndarray, exponent: float, rates: Mapping[Role, float]) -> Plan:
    """The long-tailed training split with defects at ``rates`` (fractions of ``n``, met exactly after rounding).

    The order of ``rates`` is part of the plan: the same rates in another order place the defects elsewhere.
    Duplicates copy a clean original of their own class (any clean sample when the class has none).
    """
    rng = world_rng(cfg.seed, _SPLIT_STREAM["train"])
    counts = zipf_counts(n, ranks, exponent)
    class_ids = rng.permutation(np.repeat(np.arange(cfg.n_classes, dtype=np.int64), counts))
    role_counts = _role_counts(n, rates)
    roles = np.full(n, Role.CLEAN, dtype=np.int64)
    roles[: sum(role_counts.values())] = np.repeat(list(role_counts), list(role_counts.values()))
    roles = rng.permutation(roles)
    seeds = rng.integers(0, 2**63, size=n, dtype=np.int64)
    offsets = rng.integers(1, max(cfg.n_classes, 2), size=n)
    caption_classes = np.where(roles == Role.MISMATCHED, (class_ids + offsets) % cfg.n_classes, class_ids)

    clean = np.flatnonzero(roles == Role.CLEAN)
    dups = np.flatnonzero((roles == Role.EXACT_DUPLICATE) | (roles == Role.NEAR_DUPLICATE))
    if len(dups) and not len(clean):
        raise ValueError("no clean training sample left to duplicate; lower the defect rates or raise n_train")
    clean_by_class = {c: clean[class_ids[clean] == c] for c in range(cfg.n_classes)}
    originals = np.full(n, -1, dtype=np.int64)
    for i in dups:  # ascending order: deterministic
        pool = clean_by_class[int(class_ids[i])]
        if not len(pool):  # a class too rare to have a clean sample: copy any clean one
            pool = clean
        originals[i] = pool[int(rng.integers(len(pool)))]
    class_ids = np.where(originals >= 0, class_ids[np.maximum(originals, 0)], class_ids)
    caption_classes = np.where(originals >= 0, class_ids, caption_classes)
    return Plan("train", class_ids, seeds, roles, originals, caption_classes)


def plan_test_split(cfg: WorldConfig, n: int) -> Plan:
    """The clean, class-balanced test split."""
    rng = world_rng(cfg.seed, _SPLIT_STREAM["test"])
    class_ids = rng.permutation(np.arange(n, dtype=np.int64) % cfg.n_classes)
    seeds = rng.integers(0, 2**63, size=n, dtype=np.int64)
    return Plan("test", class_ids, seeds, np.full(n, Role.CLEAN, dtype=np.int64), np.full(n, -1), class_ids.copy())
