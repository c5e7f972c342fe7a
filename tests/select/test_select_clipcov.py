"""ClipCov: known answers, the update schedule, and agreement with a brute-force reference-notebook loop."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MakeRun, normalise, read_scores
from oracle import load_round_pool, prepare, select_greedy, select_reference

from curate.errors import InputError
from curate.select import run_selection
from curate.select.clipcov import UPDATE_PERIOD

# --------------------------------------------------------------------------------------------------
# An independent, straightforward implementation of the reference notebook (docs/select.md), with
# explicit n_k × n_k matrices per class, float64 throughout, and the notebook's argsort bookkeeping.
# --------------------------------------------------------------------------------------------------


def brute_terms(img: np.ndarray, txt: np.ndarray, labels: np.ndarray, class_text: np.ndarray) -> dict:
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    n = len(img)
    members = {k: np.flatnonzero(labels == k) for k in np.unique(labels)}
    mplus, local = {}, np.zeros(n, int)
    r = np.zeros(n)
    for k, v in members.items():
        m = img[v] @ txt[v].T  # M_k[a, b] = cos(image_a, caption_b)
        mplus[k] = m * (m > 0)
        local[v] = np.arange(len(v))
        r[v] = (mplus[k].sum(axis=0) + mplus[k].sum(axis=1)) / len(v)  # Σ_i M⁺[i,j] + Σ_i M⁺[j,i]
    e = np.array([img[j] @ txt[j] for j in range(n)])
    ell = np.array([txt[j] @ class_text[labels[j]] for j in range(n)])
    tmean, imean = txt.mean(0), img.mean(0)
    a = img @ (tmean / np.linalg.norm(tmean))
    b = txt @ (imean / np.linalg.norm(imean))
    u = r + 2 * e + ell / 2 - (a + b)
    return {"members": members, "mplus": mplus, "local": local, "r": r, "ell": ell, "u": u, "e": e}


def brute_reference(terms: dict, labels: np.ndarray, budget: int, period: int = 200) -> tuple[list[int], list]:
    members, mplus, local, r, ell = (terms[k] for k in ("members", "mplus", "local", "r", "ell"))
    score = terms["u"].copy()
    ranking = np.argsort(score, kind="stable")  # ascending; the notebook takes from the end
    pos = len(ranking) - 1
    subset: list[int] = []
    count = {k: 0 for k in members}
    sel = {k: [] for k in members}
    new = {k: [] for k in members}
    updates = []
    while len(subset) < budget:
        j = int(ranking[pos])
        pos -= 1
        k = labels[j]
        subset.append(j)
        sel[k].append(j)
        new[k].append(j)
        count[k] += 1
        if (count[k] + 1) % period == 0:
            updates.append((k, count[k]))
            v, nk = members[k], len(members[k])
            lj = local[new[k]]
            for a_local, i in enumerate(v):  # per-candidate redundancy deduction
                score[i] -= (mplus[k][a_local, lj].sum() + mplus[k][lj, a_local].sum()) / nk
            score[v] -= sum(r[x] for x in sel[k]) / nk  # class-wide shift 1 (all selections so far)
            score[v] -= sum(ell[x] / 2 for x in new[k]) / nk  # class-wide shift 2 (new selections)
            new[k] = []
            score[subset] = -np.inf
            ranking = np.argsort(score, kind="stable")[len(subset) :]
            pos = len(ranking) - 1
    return subset, updates


def brute_greedy(terms: dict, labels: np.ndarray, budget: int) -> list[int]:
    """Exact greedy: every pick j of class k deducts (M⁺[i,j] + M⁺[j,i] + r_j + ℓ_j/2)/n_k from class k."""
    members, mplus, local, r, ell = (terms[k] for k in ("members", "mplus", "local", "r", "ell"))
    gain = terms["u"].copy()
    taken = np.zeros(len(gain), bool)
    out = []
    for _ in range(budget):
        j = int(np.argmax(np.where(taken, -np.inf, gain)))
        out.append(j)
        taken[j] = True
        k = labels[j]
        v, lj = members[k], local[j]
        gain[v] -= (mplus[k][:, lj] + mplus[k][lj, :] + r[j] + ell[j] / 2) / len(v)
    return out


def clustered(n: int, d: int, sizes: list[float], seed: int, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    """Image/text embeddings around class centres (class shares ``sizes``); returns img, txt, centres."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(len(sizes), d)))
    lab = rng.choice(len(sizes), size=n, p=np.asarray(sizes) / np.sum(sizes))
    img = normalise(centres[lab] + noise * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    txt = normalise(centres[lab] + noise * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    return img, txt, centres


@pytest.fixture(scope="module")
def small_world() -> tuple[np.ndarray, ...]:
    return clustered(3000, 32, [0.5, 0.3, 0.2], seed=1)


def _pool_arrays(run) -> tuple[np.ndarray, np.ndarray]:
    pool = load_round_pool(run, {"image", "text"})
    return pool.image, pool.text


def test_reference_matches_brute_force(make_run: MakeRun, small_world: tuple[np.ndarray, ...]) -> None:
    img, txt, centres = small_world
    run = make_run(img, txt)
    pimg, ptxt = _pool_arrays(run)
    labels = np.argmax(pimg @ centres.T, axis=1)
    budget = 1500
    terms = brute_terms(pimg, ptxt, labels, centres)
    want, want_updates = brute_reference(terms, labels, budget)
    # the schedule fires after the 199th, 399th, ... pick of a class, and several times here
    assert len(want_updates) >= 4 and all(c % UPDATE_PERIOD == UPDATE_PERIOD - 1 for _, c in want_updates)

    res = run_selection(run, "clipcov", count=budget, class_text=centres, options={"dtype": "float64"})
    scores = read_scores(res.path)
    got = np.flatnonzero(scores["selected"])
    assert set(got) == set(want)
    np.testing.assert_allclose(scores["score"], terms["u"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(scores["partition"], labels)
    assert res.info["class_updates"] == len(want_updates)
    # pick order: the brute force's order, rank by rank
    order = got[np.argsort(scores["rank"][got])]
    np.testing.assert_array_equal(order, want)

    # the default float32 blocks pick (almost) the same set: only near-ties may swap
    res32 = run_selection(run, "clipcov", count=budget, class_text=centres, name="f32")
    s32 = pq.read_table(res32.path / "scores.parquet", columns=["selected"]).column(0).to_numpy()
    assert len(set(np.flatnonzero(s32)) & set(want)) >= 0.99 * budget


def test_update_schedule_fires_after_199th_and_399th_pick(small_world: tuple[np.ndarray, ...]) -> None:
    img, txt, centres = small_world
    labels = np.argmax(img @ centres.T, axis=1)
    st = prepare(img, txt, labels, centres, dtype="float64")
    trace: list[dict] = []
    order, _, log = select_reference(st, 1500, trace=trace)
    for k, c_k, picks_so_far in log:
        rows = order[:picks_so_far]
        assert (st.cls[rows] == k).sum() == c_k  # the update came right after that class's c_k-th pick
        assert st.cls[order[picks_so_far - 1]] == k
    per_class = {}
    for k, c_k, _ in log:
        per_class.setdefault(int(k), []).append(int(c_k))
    assert all(cs == [199, 399, 599, 799][: len(cs)] for cs in per_class.values())
    assert any(len(cs) >= 2 for cs in per_class.values())
    # new_k holds exactly the picks since the class's previous update
    assert [len(t["new"]) for t in trace if t["class"] == trace[0]["class"]][:2] == [199, 200]
    # with a huge period nothing updates and the pick order is the unary ranking
    o2, _, log2 = select_reference(st, 1500, period=10**9)
    assert len(log2) == 0
    np.testing.assert_array_equal(o2, np.argsort(-st.unary, kind="stable")[:1500])


def test_greedy_matches_brute_force(small_world: tuple[np.ndarray, ...]) -> None:
    img, txt, centres = small_world
    img, txt = img[:1200], txt[:1200]
    labels = np.argmax(img @ centres.T, axis=1)
    st = prepare(img, txt, labels, centres, dtype="float64")
    rows, gains = select_greedy(st, 600)
    got = st.perm[rows]
    want = brute_greedy(brute_terms(img, txt, labels, centres), labels, 600)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(gains[0], st.unary.max())
    assert len(set(got)) == 600


def test_ill_matched_pair_has_low_easiness_and_is_not_picked(make_run: MakeRun) -> None:
    img, txt, centres = clustered(600, 32, [0.5, 0.5], seed=3, noise=0.5)
    bad = [7, 123, 400]
    rng = np.random.default_rng(0)
    for j in bad:  # caption of a different class plus noise: an ill-matched image-caption pair
        txt[j] = normalise((-img[j] + 0.3 * rng.normal(size=32))[None])[0]
    run = make_run(img, txt)
    for variant in ("reference", "greedy"):
        opts = {"variant": variant}
        res = run_selection(run, "clipcov", fraction=0.5, class_text=centres, name=variant, options=opts)
        t = read_scores(res.path)
        good = np.setdiff1d(np.arange(600), bad)
        assert (t["easiness"][bad] < 0).all()
        assert (t["easiness"][bad] < t["easiness"][good].min()).all()
        assert not t["selected"][bad].any()
        assert (t["score"][bad] < np.quantile(t["score"][good], 0.05)).all()


def test_near_duplicates_penalised_by_redundancy_term() -> None:
    """Orthogonal samples share no similarity, so after the first update only a duplicate loses more."""
    d, n_orig = 512, 300
    img = np.eye(d, dtype=np.float32)[:n_orig].copy()
    txt = img.copy()
    dup_of = np.arange(5)  # samples 0..4 are among the first picks; give them near-duplicates
    dups = normalise(img[dup_of] + 0.02 * np.eye(d, dtype=np.float32)[400:405])
    img = np.vstack([img, dups])
    txt = np.vstack([txt, dups])
    class_text = normalise(np.ones((1, d), np.float32))
    labels = np.zeros(len(img), int)
    st = prepare(img, txt, labels, class_text, dtype="float64")
    st.unary[:n_orig] += np.linspace(0.01, 0, n_orig)  # distinct scores; originals 0..4 first
    st.unary[np.isin(st.perm, dup_of)] += 1.0
    st.unary[st.perm >= n_orig] -= 0.5  # duplicates rank below every original
    trace: list[dict] = []
    select_reference(st, 250, trace=trace)
    t = trace[0]
    assert len(t["new"]) == 199 and set(st.perm[t["new"]]) >= set(dup_of)
    drop = t["before"] - t["after"]
    is_dup = st.perm[t["members"]] >= n_orig
    nk = len(img)
    # every candidate pays the same class-wide shifts; a near-duplicate of a pick pays ~2/n_k more
    np.testing.assert_allclose(drop[~is_dup], drop[~is_dup][0], rtol=0, atol=1e-12)
    extra = drop[is_dup] - drop[~is_dup][0]
    cos = np.einsum("ij,ij->i", dups.astype(np.float64), img[dup_of].astype(np.float64))
    np.testing.assert_allclose(extra, 2 * cos / nk, rtol=1e-6)


def test_greedy_avoids_near_duplicate() -> None:
    """With exact gains, the second pick is a distinct sample, not the near-copy of the first."""
    e = np.eye(16, dtype=np.float32)
    a = normalise((e[0] + 0.3 * e[1])[None])[0]
    near_copy = normalise((a + 0.01 * e[5])[None])[0]
    others = normalise(np.vstack([e[0] + 0.7 * e[2], e[0] - 0.7 * e[2]]))
    img = np.vstack([a, near_copy, others])
    txt = img.copy()
    labels = np.zeros(len(img), int)
    st = prepare(img, txt, labels, e[:1], dtype="float64")
    ref_top2 = set(np.argsort(-st.unary, kind="stable")[:2])
    assert ref_top2 == {0, 1}  # by unary alone, the original and its near-copy would both be kept
    rows, _ = select_greedy(st, 2)
    assert list(st.perm[rows]) == [0, 2]
    # and the reference loop, whose first update comes after 199 picks, keeps both here
    ref_rows, _, _ = select_reference(st, 2)
    assert set(st.perm[ref_rows]) == {0, 1}


def test_null_text_and_bad_embeddings_are_dropped_with_reasons(make_run: MakeRun) -> None:
    img, txt, centres = clustered(400, 16, [1, 1], seed=5)
    img[3] = 0.0  # zero-norm image
    img[4, 2] = np.nan  # NaN image
    null = np.zeros(400, bool)
    null[[10, 11, 12]] = True
    run = make_run(img, txt, text_null=null)
    res = run_selection(run, "clipcov", count=390, class_text=centres)
    t = read_scores(res.path)
    assert res.pruned_by_reason == {"bad_image_emb": 2, "null_text": 3, "budget": 5}
    assert set(t["reason"][[3, 4]]) == {"bad_image_emb"} and set(t["reason"][[10, 11, 12]]) == {"null_text"}
    assert not t["selected"][[3, 4, 10, 11, 12]].any()
    assert np.isnan(t["score"][[3, 4]]).all()
    with pytest.raises(InputError, match="clipcov can rank 395"):
        run_selection(run, "clipcov", count=396, class_text=centres, name="toomany")


def test_kmeans_partition_and_determinism(make_run: MakeRun) -> None:
    img, txt, _ = clustered(800, 16, [3, 2, 1], seed=7)
    run = make_run(img, txt)
    opts = {"partition": "kmeans:3"}
    a = run_selection(run, "clipcov", fraction=0.25, options=opts, seed=3, name="a")
    b = run_selection(run, "clipcov", fraction=0.25, options=opts, seed=3, name="b")
    assert a.manifest.header["content_hash"] == b.manifest.header["content_hash"]
    ta = pq.read_table(a.path / "scores.parquet")
    assert ta.equals(pq.read_table(b.path / "scores.parquet"))
    part = ta.column("partition").to_numpy()
    assert set(part) == {0, 1, 2}


def test_small_blocks_give_the_same_result(
    monkeypatch: pytest.MonkeyPatch, small_world: tuple[np.ndarray, ...]
) -> None:
    """Block size is a memory knob only: tiny blocks (and no numpy shortcut) select the same samples."""
    import curate.select.clipcov as cc

    img, txt, centres = (a[:1500] if a.shape[0] == 3000 else a for a in small_world)
    labels = np.argmax(img @ centres.T, axis=1)
    st = prepare(img, txt, labels, centres, dtype="float64")
    ref = select_reference(st, 700)[0]
    gr = select_greedy(st, 300)[0]
    monkeypatch.setattr(cc, "BLOCK_ELEMENTS", 5000)  # blocks of a few rows: n_k × n_k never held
    monkeypatch.setattr(cc, "SUM_ELEMENTS", 1200)  # and each block summed a row or two at a time
    monkeypatch.setattr(cc, "_SMALL", 0)
    st2 = prepare(img, txt, labels, centres, dtype="float64")
    np.testing.assert_allclose(st2.cross, st.cross, rtol=1e-12)
    np.testing.assert_array_equal(select_reference(st2, 700)[0], ref)
    np.testing.assert_array_equal(select_greedy(st2, 300)[0], gr)


@pytest.mark.parametrize("sum_elements", [1 << 18, 700, 1])
def test_cross_terms_in_tiles_blocks_chunks_and_slices_equal_the_brute_force(
        monkeypatch: pytest.MonkeyPatch, sum_elements: int) -> None:
    """r_j by caption tiles, row blocks, chunks and summed slices of every size (down to one row) is the
    float64 brute force's; held and lazily normalised float16 rows give the same bits at each size."""
    import curate.select.clipcov as cc

    monkeypatch.setattr(cc, "CROSS_TILE", 300)
    monkeypatch.setattr(cc, "BLOCK_ELEMENTS", 3000)  # blocks of 10 rows
    monkeypatch.setattr(cc, "CROSS_CHUNK_ELEMENTS", 40_000)  # several chunks
    monkeypatch.setattr(cc, "SUM_ELEMENTS", sum_elements)
    rng = np.random.default_rng(8)
    n, d = 700, 24
    raw_i = (rng.normal(size=(n, d)) + 0.3).astype(np.float16)
    raw_t = (rng.normal(size=(n, d)) + 0.3).astype(np.float16)
    img, txt = (r / np.linalg.norm(r, axis=1, keepdims=True) for r in (raw_i.astype(float), raw_t.astype(float)))
    assert len(cc.cross_chunks(n)) > 1 and len(cc.cross_tiles(n)) > 1
    m = np.maximum(img @ txt.T, 0.0)
    want = (m.sum(1) + m.sum(0)) / n
    np.testing.assert_allclose(cc.Blocks(img, txt, "cpu", "float64").cross(0, n), want, rtol=1e-12)
    from curate.select.pool import normalise_rows

    held = cc.Blocks(normalise_rows(raw_i), normalise_rows(raw_t), "cpu", "float32").cross(0, n)
    lazy = cc.Blocks.lazy(raw_i, raw_t, "cpu", "float32").cross(0, n)
    assert np.array_equal(held.view(np.uint64), lazy.view(np.uint64))
    np.testing.assert_allclose(held, want, rtol=1e-5)


def test_cross_sample_estimates_the_cross_term_from_seeded_members(make_run: MakeRun) -> None:
    """--cross-sample M: r_j is the mean of the thresholded products over M seeded members of the class
    (checked against a brute force on the same members); classes of at most M members stay exact; the
    estimate is unbiased (its mean over many seeds approaches the exact term)."""
    img, txt, centres = clustered(700, 12, [0.8, 0.2], seed=9)
    run = make_run(img, txt)
    pimg, ptxt = _pool_arrays(run)
    labels = np.argmax(pimg @ centres.T, axis=1)
    exact = brute_terms(pimg, ptxt, labels, centres)["r"]
    big = int(np.argmax(np.bincount(labels)))
    m = 200
    assert np.bincount(labels)[big] > m >= np.bincount(labels).min()
    res = run_selection(run, "clipcov", count=100, class_text=centres, seed=4, name="s",
                        options={"dtype": "float64", "cross_sample": m})
    got = read_scores(res.path)["cross"]
    members = np.flatnonzero(labels == big)
    rng = np.random.default_rng([4, big, 0x6363])
    sample = members[np.sort(rng.choice(len(members), size=m, replace=False))]
    mp = lambda a, b: np.maximum(a.astype(np.float64) @ b.astype(np.float64).T, 0.0)  # noqa: E731
    want = (mp(pimg[sample], ptxt[members]).sum(0) + mp(pimg[members], ptxt[sample]).sum(1)) / m
    np.testing.assert_allclose(got[members], want, rtol=0, atol=1e-12)
    small = np.flatnonzero(labels != big)  # a class of at most M members: the exact term
    np.testing.assert_allclose(got[small], exact[small], rtol=0, atol=1e-12)
    # unbiased: the mean estimate over 60 seeds is close to the exact mean term of the class
    est = []
    for s in range(60):
        rng = np.random.default_rng([s, big, 0x6363])
        smp = members[rng.choice(len(members), size=m, replace=False)]
        est.append((mp(pimg[smp], ptxt[members]).sum(0) + mp(pimg[members], ptxt[smp]).sum(1)) / m)
    assert abs(np.mean(est) - exact[members].mean()) < 0.01 * abs(exact[members].mean())


def test_sums_carried_across_row_slices_equal_one_reduction() -> None:
    """Pass 1's pool sums and k-means class sums, carried across slices of rows, have the bits of one
    reduction over the whole block. Values spread over 30 binary orders of magnitude, so that float64
    sums of float32 rows round and the order of the additions shows (a slice's own sum added to the
    carry would differ)."""
    from curate.select.clipcov import _add_class_rows, _add_rows

    rng = np.random.default_rng(11)
    n, d, k = 3000, 16, 7
    x = (rng.normal(size=(n, d)) * 2.0 ** rng.integers(-30, 8, size=(n, d))).astype(np.float32)
    mask = rng.random(n) > 0.2
    labels = rng.integers(0, k, size=n)
    whole = np.add.reduce(x, axis=0, dtype=np.float64, where=mask[:, None])
    whole_cls = np.zeros((k, d))
    for i in np.flatnonzero(mask):  # the definition: each row onto its class's sum, in row order
        whole_cls[labels[i]] += x[i].astype(np.float64)
    acc, per = np.zeros(d), np.zeros((k, d))
    naive = np.zeros(d)
    for a in range(0, n, 97):
        sl = slice(a, a + 97)
        acc = _add_rows(acc, x[sl], mask[sl])
        naive = naive + np.add.reduce(x[sl], axis=0, dtype=np.float64, where=mask[sl, None])
        _add_class_rows(per, x[sl][mask[sl]], labels[sl][mask[sl]])
    assert np.array_equal(acc.view(np.uint64), whole.view(np.uint64))
    assert np.array_equal(per.view(np.uint64), whole_cls.view(np.uint64))
    assert not np.array_equal(naive, whole)  # the data is one where the order of additions matters


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_products_do_not_depend_on_their_block_size(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Row dot products (pairs, and one row against all: a mean, a class) give the same bits with blocks
    of a few rows as with the default blocks. The redundancy sums' blocks depend on the shapes only (a
    matrix product's last bits may depend on its row count), and give the brute force's values."""
    import torch

    import curate.select.clipcov as cc

    rng = np.random.default_rng(5)
    n, d = 2100, 40
    img, txt = normalise(rng.normal(size=(n, d))), normalise(rng.normal(size=(n, d)))
    blocks = cc.Blocks(img, txt, "cpu", dtype)
    mean = torch.from_numpy(normalise(rng.normal(size=(1, d)))).to(blocks.dtype)
    zero = torch.zeros(n, dtype=torch.int64)
    cand, picked = np.arange(0, n, 2), rng.choice(n, 150, replace=False)

    def run() -> list[np.ndarray]:
        return [blocks.rowdot(blocks.img, blocks.txt), blocks.rowdot(blocks.txt, mean, zero),
                blocks.rowdot(blocks.img, blocks.txt, torch.from_numpy(np.arange(n)[::-1].copy())),
                blocks.redundancy(cand, picked)]

    default = run()
    monkeypatch.setattr(cc, "ROWDOT_ROWS", 7)
    monkeypatch.setattr(cc, "GATHER_ELEMENTS", 300)
    monkeypatch.setattr(cc, "_SMALL", 0)
    small = run()
    for a, b in zip(default[:3], small[:3], strict=True):
        assert np.array_equal(a.view(np.uint64), b.view(np.uint64))
    np.testing.assert_allclose(small[3], default[3], rtol=1e-6)
    # and what they are
    np.testing.assert_allclose(default[0], (img * txt).sum(1), rtol=1e-5, atol=1e-6)
    m = mean.double().numpy()[0]
    np.testing.assert_allclose(default[1], txt @ m, rtol=1e-5, atol=1e-6)
    want = np.maximum(img[cand] @ txt[picked].T, 0).sum(1) + np.maximum(txt[cand] @ img[picked].T, 0).sum(1)
    np.testing.assert_allclose(default[3], want, rtol=1e-5, atol=1e-5)


def test_reference_cursor_takes_the_picks_asked_for() -> None:
    """take(m) returns the class's next m picks (fewer only when the class runs out), so pass 2 computes
    a class's sequence only as far as the merge asks; taken in pieces (a first request, then extensions,
    across a saved and restored state) it is the same sequence as taken whole."""
    from curate.select.clipcov import Blocks, ClassReference

    rng = np.random.default_rng(6)
    n, d = 1300, 16
    img, txt = normalise(rng.normal(size=(n, d))), normalise(rng.normal(size=(n, d)))
    blocks = Blocks(img, txt, "cpu", "float64")
    unary = rng.normal(size=n)
    cross, label = rng.random(n), rng.random(n)
    whole = ClassReference(blocks, unary, cross, label).take(n + 5)
    assert len(whole[0]) == n and sorted(whole[0]) == list(range(n))
    c = ClassReference(blocks, unary, cross, label)
    parts = [c.take(m) for m in (1, 198, 1, 350)]
    assert [len(p[0]) for p in parts] == [1, 198, 1, 350]
    c = ClassReference.restore(blocks, c.state())
    parts += [c.take(10**6)]
    for i, dt in enumerate((np.int64, np.float64, bool)):
        got = np.concatenate([p[i] for p in parts]).astype(dt)
        assert np.array_equal(got, whole[i])
    assert np.flatnonzero(whole[2]).tolist() == [198, 398, 598, 798, 998, 1198]  # refreshes after the 199th, …


def test_reference_sequences_are_computed_whole_in_pass_2() -> None:
    """The reference variant asks pass 2 for each class's whole pick sequence (its picks are far from
    proportional to class size; extending short sequences is serial, in the merge); greedy asks for
    about twice each class's share; per-partition quotas are exact."""
    from curate.select.clipcov import ClipCov, ClipCovConfig
    from curate.select.pipeline import SEQ_MIN, _first_requests

    sizes = np.array([500, 0, 30, 2000])
    ref = ClipCov(ClipCovConfig()).rule(100, {})
    greedy = ClipCov(ClipCovConfig(variant="greedy")).rule(100, {})
    assert ref.whole and not greedy.whole
    assert _first_requests(sizes, ref) == {0: 500, 2: 30, 3: 2000}
    assert _first_requests(sizes, greedy) == {0: 40, 2: SEQ_MIN, 3: 159}  # ⌈2 · 100 · n / 2530⌉
    assert _first_requests(sizes, ref, np.array([7, 0, 3, 90])) == {0: 7, 2: 3, 3: 90}
