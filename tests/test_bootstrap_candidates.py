"""SCAN's within-batch candidate rule (docs/bootstrap.md) against hand-computed batches."""

from __future__ import annotations

import numpy as np
import pytest

from curate.bootstrap.candidates import epoch_loss, find_candidates, make_groups, quota


def _cands(batch, a, b, rho_max=0.3, rho_min=0.3, seed=0, tiebreak=None):
    return find_candidates(
        np.asarray(batch), np.asarray(a, float), None if b is None else np.asarray(b, float),
        rho_max=rho_max, rho_min=rho_min, rng=np.random.default_rng(seed), tiebreak=tiebreak,
    )


def test_agreeing_directions_select_exact_extremes() -> None:
    a = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], float)  # row 0 highest loss
    c = _cands(np.zeros(10), a, a)
    assert np.flatnonzero(c.ill_matched).tolist() == [0, 1, 2]  # int(10 * 0.3) = 3 highest
    assert np.flatnonzero(c.redundant).tolist() == [7, 8, 9]  # 3 lowest
    assert c.loss_rank[0] == pytest.approx(1.0) and c.loss_rank[9] == pytest.approx(0.0)


def test_both_directions_intersection_then_random_top_up() -> None:
    a = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], float)  # top-3 by a: {0, 1, 2}
    b = np.array([9, 8, 0.5, 7, 5, 4, 3, 2, 1, 0.2], float)  # top-3 by b: {0, 1, 3}
    seen = set()
    for seed in range(20):
        ill = np.flatnonzero(_cands(np.zeros(10), a, b, seed=seed).ill_matched).tolist()
        # |both| = 2 < 0.9 * 3 -> topped up to exactly 3 from the symmetric difference {2, 3}
        assert len(ill) == 3 and {0, 1} <= set(ill) <= {0, 1, 2, 3}
        seen.add(tuple(ill))
    assert seen == {(0, 1, 2), (0, 1, 3)}  # the top-up is random, both outcomes occur
    # low end: bottom-3 by a = {7, 8, 9}; by b = {2, 8, 9} -> both {8, 9}, topped up from {2, 7}
    red = np.flatnonzero(_cands(np.zeros(10), a, b).redundant).tolist()
    assert len(red) == 3 and {8, 9} <= set(red) <= {2, 7, 8, 9}


def test_intersection_of_at_least_ninety_percent_is_not_topped_up() -> None:
    n, k = 40, 10  # rho 0.25 -> int(40 * 0.25) = 10 per direction
    a = np.arange(n, 0, -1, dtype=float)  # rows 0..9 highest by a
    b = a.copy()
    b[9], b[10] = a[10], a[9]  # direction b swaps rows 9 and 10: both = rows 0..8 (9 >= 0.9 * 10)
    c = _cands(np.zeros(n), a, b, rho_max=0.25, rho_min=0.0)
    assert np.flatnonzero(c.ill_matched).tolist() == list(range(9))
    b[8], b[11] = a[11], a[8]  # now both = 8 rows < 9 -> topped up to exactly k
    c = _cands(np.zeros(n), a, b, rho_max=0.25, rho_min=0.0)
    assert c.ill_matched.sum() == k and c.ill_matched[:8].all()
    assert not c.redundant.any()  # rho_min = 0


def test_zero_quota_selects_nothing() -> None:
    # int(3 * 0.3) = 0: the reference's order[-0:] would select the whole batch; we select nothing
    c = _cands(np.zeros(3), [3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert not c.redundant.any() and not c.ill_matched.any()
    assert quota(make_groups(np.zeros(3)), 0.3).tolist() == [0]


def test_batches_are_ranked_separately_and_rows_may_be_interleaved() -> None:
    rng = np.random.default_rng(1)
    batch = np.repeat([5, 2, 9], [10, 20, 7])
    a, b = rng.random(37), rng.random(37)
    perm = rng.permutation(37)
    whole = _cands(batch[perm], a[perm], b[perm], tiebreak=perm)  # shuffled rows, tie-break by identity
    for bid in (5, 2, 9):
        rows = np.flatnonzero(batch[perm] == bid)
        n = len(rows)
        k = int(n * 0.3)
        assert whole.ill_matched[rows].sum() in range(int(np.ceil(0.9 * k)), k + 1)
        assert whole.redundant[rows].sum() in range(int(np.ceil(0.9 * k)), k + 1)
        hi_a = set(rows[np.argsort(-a[perm][rows])[:k]])
        hi_b = set(rows[np.argsort(-b[perm][rows])[:k]])
        sel = set(np.flatnonzero(whole.ill_matched & (batch[perm] == bid)))
        assert hi_a & hi_b <= sel <= hi_a | hi_b


def test_result_does_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(2)
    batch = np.repeat(np.arange(5), 20)
    a, b = rng.random(100), rng.random(100)
    ident = np.arange(100)
    ref = _cands(batch, a, b, seed=7, tiebreak=ident)
    perm = rng.permutation(100)
    got = _cands(batch[perm], a[perm], b[perm], seed=7, tiebreak=ident[perm])
    assert np.array_equal(got.ill_matched, ref.ill_matched[perm])
    assert np.array_equal(got.redundant, ref.redundant[perm])


def test_single_direction_losses() -> None:
    a = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    c = _cands(np.zeros(10), a, None, rho_max=0.2, rho_min=0.2)
    assert np.flatnonzero(c.ill_matched).tolist() == [1, 6]
    assert np.flatnonzero(c.redundant).tolist() == [0, 9]


def test_epoch_loss_is_sum_of_batch_means() -> None:
    batch = np.array([0, 1, 1, 1])
    a = np.array([1.0, 2.0, 4.0, 6.0])
    b = np.array([3.0, 2.0, 4.0, 6.0])
    assert epoch_loss(batch, a, b) == pytest.approx(2.0 + 4.0)
    assert epoch_loss(batch, a, None) == pytest.approx(1.0 + 4.0)
