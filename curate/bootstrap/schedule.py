"""SCAN's round schedule: warm-up plateau rule and the cosine ramp (docs/bootstrap.md)."""

from __future__ import annotations

import math
from fractions import Fraction

WARMUP, PREPARE, MUTATE, FULL, PRUNE = "warmup", "prepare", "mutate", "full", "prune"

#: ``loss_pre`` before the first warm-up epoch, as in the reference (so round 0 never triggers).
LOSS_PRE_INIT = 1e8


def rho_cur(e: int, t_cos: int, eta_min: float = 0.0, rho_init: float = 1.0) -> float:
    """Fraction of the candidate set dropped ``e`` rounds after warm-up (``CosineAnnealing``).

    With ``t_cos=3``: e mod 4 = 0 → 0.0 (preparation), 1 → 0.25, 2 → 0.75, 3 → 1.0.
    """
    if t_cos < 1:
        raise ValueError("t_cos must be >= 1")
    k = e % (t_cos + 1)
    return eta_min + rho_init * 0.5 * (1.0 + math.cos(math.pi * (t_cos - k) / t_cos))


def phase_of(round_: int, warmup_end: int | None, t_cos: int) -> str:
    """``warmup`` before ``warmup_end`` (the first post-warm-up round), then prepare/mutate cycles."""
    if warmup_end is None or round_ < warmup_end:
        return WARMUP
    return PREPARE if (round_ - warmup_end) % (t_cos + 1) == 0 else MUTATE


def plateau(loss_pre: float, loss_cur: float, prune_td: float) -> tuple[bool, float]:
    """The reference's warm-up test: (relative improvement < prune_td, relative improvement)."""
    rel = (loss_pre - loss_cur) / (loss_pre + 1e-8)
    return rel < prune_td, rel


def infobatch_prune_rounds(delta: float, total_rounds: int) -> int:
    """How many rounds InfoBatch prunes: rounds ``0 .. k-1`` prune, rounds ``k ..`` train on full data.

    ``k = floor(delta * total_rounds)``, as in InfoBatch's code, where epoch ``e`` (from 0) prunes while
    ``e + 1 <= delta * num_epochs``. ``delta`` is taken as the decimal it prints as, so that 0.29 × 100
    is 29 and not the 28.999… of float arithmetic.
    """
    return math.floor(Fraction(repr(float(delta))) * int(total_rounds))
