"""Budgets per partition (--per-partition proportional | sqrt | cap:T) for any method."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MakeRun, normalise, read_scores
from test_select_clipcov import brute_reference, brute_terms

from curate.errors import InputError, UsageError
from curate.select import run_selection
from curate.select.partition import allocate_quotas


def test_quotas_sum_to_the_budget_and_respect_sizes() -> None:
    sizes = np.array([1000, 300, 40, 7, 0, 1])
    for mode in ("proportional", "sqrt"):
        for budget in (1, 50, 333, 1000, 1348):
            q = allocate_quotas(sizes, budget, mode)
            assert q.sum() == budget and (q <= sizes).all() and (q >= 0).all()
    q = allocate_quotas(sizes, 300, "proportional")
    np.testing.assert_array_equal(q, [222, 67, 9, 2, 0, 0])  # 300·n/1348, remainders to the largest fractions
    q = allocate_quotas(sizes, 400, "sqrt")  # sqrt shares; the partitions of 40, 7 and 1 are kept whole
    assert q[2] == 40 and q[3] == 7 and q[5] == 1
    w = np.sqrt(sizes[:2].astype(float))
    share = (400 - 48) * w / w.sum()  # the rest split by sqrt(n_k), rounded
    assert np.abs(q[:2] - share).max() < 1 and q.sum() == 400
    np.testing.assert_array_equal(allocate_quotas(sizes, None, "cap", 50), [50, 50, 40, 7, 0, 1])
    with pytest.raises(UsageError, match="splits a budget"):
        allocate_quotas(sizes, None, "sqrt")


def _world(n: int = 1500, d: int = 16, seed: int = 2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(4, d)))
    lab = rng.choice(4, size=n, p=[0.7, 0.2, 0.08, 0.02])
    img = normalise(centres[lab] + 0.8 * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    txt = normalise(centres[lab] + 0.8 * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    return img, txt, centres


@pytest.mark.parametrize("mode", ["proportional", "sqrt", "cap:100"])
def test_clip_score_per_partition_keeps_each_class_top(make_run: MakeRun, mode: str) -> None:
    img, txt, centres = _world()
    run = make_run(img, txt)
    labels = np.argmax(img.astype(np.float16).astype(np.float32) @ centres.T, axis=1)
    res = run_selection(run, "clip-score", fraction=0.2, per_partition=mode, class_text=centres,
                        options={"partition": "imagenet"})
    t = read_scores(res.path)
    np.testing.assert_array_equal(t["partition"], labels)
    sizes = np.bincount(labels, minlength=4)
    budget = 300
    quotas = allocate_quotas(sizes, budget, mode.split(":")[0], 100 if mode.startswith("cap") else None)
    want = np.zeros(len(labels), bool)
    for k in range(4):  # brute force: each class's best quota_k by CLIP score
        members = np.flatnonzero(labels == k)
        best = members[np.argsort(-t["score"][members], kind="stable")[: quotas[k]]]
        want[best] = True
    if mode.startswith("cap"):  # then the global best `budget` among those
        cand = np.flatnonzero(want)
        want[:] = False
        want[cand[np.argsort(-t["score"][cand], kind="stable")[:budget]]] = True
    np.testing.assert_array_equal(t["selected"], want)
    assert res.kept == budget
    assert set(t["reason"][~want]) == {"quota"}
    kept = np.bincount(labels[want], minlength=4)
    assert (kept > 0).all()  # every class is represented
    # the rank is the order of the scores among the kept
    order = np.flatnonzero(want)[np.argsort(t["rank"][want])]
    assert np.all(np.diff(t["score"][order]) <= 0)


@pytest.mark.parametrize("mode", ["proportional", "sqrt"])
def test_clipcov_per_partition_takes_each_class_prefix(make_run: MakeRun, mode: str) -> None:
    """With quotas, class k's picks are the first q_k of its own reference sequence (brute force on the class)."""
    img, txt, centres = _world(1200, 12, seed=5)
    run = make_run(img, txt)
    res = run_selection(run, "clipcov", count=450, per_partition=mode, class_text=centres,
                        options={"dtype": "float64"})
    t = read_scores(res.path)
    labels = t["partition"]
    sizes = np.bincount(labels, minlength=4)
    quotas = allocate_quotas(sizes, 450, mode)
    from oracle import load_round_pool

    pool = load_round_pool(run, {"image", "text"})
    for k in range(4):
        members = np.flatnonzero(labels == k)
        lab = np.zeros(len(members), int)
        terms = brute_terms(pool.image[members], pool.text[members], lab, centres[k : k + 1])
        # the class's own sequence, with the pool means of the whole pool (the centre terms): rebuild u
        terms["u"] = t["score"][members]
        want, _ = brute_reference(terms, lab, int(quotas[k]))
        got = members[np.flatnonzero(t["selected"][members])]
        assert set(got) == set(members[want]), k
    assert res.kept == 450 and res.info["per_partition"]["mode"] == mode


def test_semdedup_cap_and_budgets_are_the_same_at_any_memory(make_run: MakeRun) -> None:
    img, txt, _ = _world(900, 8, seed=7)
    run = make_run(img, txt)
    a = run_selection(run, "semdedup", fraction=0.5, per_partition="cap:100", options={"clusters": 6}, name="a")
    b = run_selection(run, "semdedup", fraction=0.5, per_partition="cap:100", options={"clusters": 6}, name="b",
                      memory=1 << 20)
    ta, tb = (pq.read_table(r.path / "scores.parquet") for r in (a, b))
    assert ta.equals(tb)
    t = read_scores(a.path)
    assert np.bincount(t["partition"][t["selected"]]).max() <= 100


def test_per_partition_bad_usage(make_run: MakeRun) -> None:
    img, txt, centres = _world(300, 8)
    run = make_run(img, txt)
    with pytest.raises(UsageError, match="bad --per-partition"):
        run_selection(run, "random", fraction=0.2, per_partition="even")
    with pytest.raises(UsageError, match="does not apply to --method union"):
        run_selection(run, "union", options={"of": ("a", "b")}, per_partition="sqrt")
    with pytest.raises(UsageError, match="splits a budget"):
        run_selection(run, "clip-score", options={"threshold": 0.1}, per_partition="sqrt", class_text=centres)
    with pytest.raises(InputError, match="caps leave 40 samples, fewer than the budget 60"):
        run_selection(run, "clip-score", fraction=0.2, per_partition="cap:10", class_text=centres)


def test_partitions_of_an_earlier_selection(make_run: MakeRun) -> None:
    """--partition selection:NAME: the budgets' partitions are that selection's partition column (here a
    k-means semdedup's clusters; metaclip's metadata entries work the same way), recorded as a parent."""
    from curate.select.manage import delete_selection

    img, txt, _ = _world(1200, 12, seed=7)
    run = make_run(img, txt)
    base = run_selection(run, "semdedup", options={"eps": 0.0001, "clusters": 5}, name="clusters")
    part = read_scores(base.path)["partition"]
    res = run_selection(run, "clip-score", fraction=0.25, per_partition="proportional",
                        options={"partition": "selection:clusters"})
    assert res.name == "clip-score-f0.25-pp-proportional-by-clusters"
    t = read_scores(res.path)
    np.testing.assert_array_equal(t["partition"], part)
    quotas = allocate_quotas(np.bincount(part, minlength=5), 300, "proportional")
    want = np.zeros(len(part), bool)
    for k in range(5):  # brute force: each cluster's best quota_k by CLIP score
        members = np.flatnonzero(part == k)
        want[members[np.argsort(-t["score"][members], kind="stable")[: quotas[k]]]] = True
    np.testing.assert_array_equal(t["selected"], want)
    assert res.header["info"]["per_partition"]["partition"] == "selection:clusters"
    assert {"name": "clusters", "role": "partitions"}.items() <= res.header["parents"][0].items()
    with pytest.raises(UsageError, match=r"is the source of selection 'clip-score-f0\.25"):
        delete_selection(run, "clusters")
    with pytest.raises(InputError, match="no selection 'absent'"):
        run_selection(run, "clip-score", fraction=0.25, per_partition="sqrt", options={"partition": "selection:absent"})
    run_selection(run, "random", fraction=0.5, name="plain")
    with pytest.raises(InputError, match="has no partition column"):
        run_selection(run, "clip-score", fraction=0.25, per_partition="sqrt", options={"partition": "selection:plain"})
    with pytest.raises(UsageError, match="per-partition only"):
        run_selection(run, "clipcov", fraction=0.25, options={"partition": "selection:clusters"})


def test_a_partition_larger_than_the_budget_is_ranked_from_pieces(make_run: MakeRun,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One class holds most of 8,000 rows: at --memory 1M its entries do not fit the per-partition groups'
    budget, so its best rows come from merging the spilled pieces; the tables are those of a large budget."""
    from curate.select import pipeline

    calls = []
    real = pipeline._large_partition_runs

    def spy(*a: object, **k: object) -> object:
        out = real(*a, **k)
        calls.append(len(out))
        return out

    monkeypatch.setattr(pipeline, "_large_partition_runs", spy)
    img, txt, centres = _world(8000, 8, seed=11)
    run = make_run(img, txt)
    kw = {"fraction": 0.3, "class_text": centres, "options": {"partition": "imagenet"}}
    for mode in ("sqrt", "cap:1000"):
        big = run_selection(run, "clip-score", per_partition=mode, name=f"big-{mode[:3]}", **kw)
        assert calls == []
        small = run_selection(run, "clip-score", per_partition=mode, name=f"small-{mode[:3]}", memory=1 << 20, **kw)
        assert calls and calls[-1] >= 1
        calls.clear()
        ta, tb = (pq.read_table(r.path / "scores.parquet") for r in (big, small))
        assert ta.equals(tb)
        t = read_scores(small.path)
        sizes = np.bincount(t["partition"], minlength=4)
        assert sizes.max() > 3640  # more entries than 1M / 4 holds (24 B each, times 3)
