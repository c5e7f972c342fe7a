"""Baselines (random, clip-score, semdedup) and set algebra against brute force on small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MakeRun, fail_on_call, hex_uid, normalise, read_scores

from curate.errors import InputError, UsageError
from curate.fs import read_json
from curate.io.manifest import read_manifest
from curate.select import SelectionResult, run_selection
from curate.select.baselines import max_prior_similarity


def _random_world(n: int = 500, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return normalise(rng.normal(size=(n, d))), normalise(rng.normal(size=(n, d)))


def _kept(res: SelectionResult) -> set[int]:
    return set(np.flatnonzero(read_scores(res.path)["selected"]))


# --- random ---------------------------------------------------------------------------------------


def test_random_is_seeded_uniform_and_exact(make_run: MakeRun) -> None:
    img, txt = _random_world()
    run = make_run(img, txt)
    a = run_selection(run, "random", fraction=0.2, seed=7, name="a")
    b = run_selection(run, "random", fraction=0.2, seed=7, name="b")
    c = run_selection(run, "random", fraction=0.2, seed=8, name="c")
    assert a.kept == 100 and _kept(a) == _kept(b) != _kept(c)
    want = np.argsort(-np.random.default_rng(7).random(500), kind="stable")[:100]  # brute force
    assert _kept(a) == set(want)
    assert a.pruned_by_reason == {"budget": 400}
    # inclusion frequency over seeds ≈ the fraction for every sample
    freq = np.zeros(500)
    for s in range(60):
        freq[list(_kept(run_selection(run, "random", count=250, seed=s, name="r", force=True)))] += 1
    assert abs(freq.mean() / 60 - 0.5) < 1e-9 and freq.min() > 10 and freq.max() < 50


def test_random_within_draws_evenly_among_an_earlier_selection(make_run: MakeRun,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--within A: the budget rows with the largest default_rng(seed) values among A's kept rows (brute
    force), the others pruned as not_in:A; A is the manifest's parent; blocks and task processes do not
    change a byte."""
    from curate.select import source as source_mod

    img, txt = _random_world(700)
    run = make_run(img, txt)
    a = run_selection(run, "clip-score", fraction=0.6, name="A")
    inside = read_scores(a.path)["selected"]
    res = run_selection(run, "random", fraction=0.3, seed=3, options={"within": "A"})
    assert res.name == "random-in-A-s3-f0.3" and res.kept == 210
    u = np.random.default_rng(3).random(700)
    cand = np.flatnonzero(inside)
    want = cand[np.argsort(-u[cand], kind="stable")[:210]]  # brute force
    got = read_scores(res.path)
    assert _kept(res) == set(want)
    assert res.pruned_by_reason == {"not_in:A": 700 - 420, "budget": 420 - 210}
    np.testing.assert_array_equal(got["score"][inside], u[inside])  # the plain draw's values, inside A only
    assert np.isnan(got["score"][~inside]).all()
    man = read_manifest(res.path / "manifest.parquet")
    assert [p["name"] for p in man.header["parents"]] == ["A"]
    assert man.header["parents"][0]["content_hash"] == a.manifest.header["content_hash"]
    assert man.header["params"]["within"] == "A"
    plain = set(np.argsort(-u, kind="stable")[:210])
    assert _kept(res) != plain  # --within changes the draw
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 96)  # 8 blocks, 2 task processes: the same bytes
    two = run_selection(run, "random", fraction=0.3, seed=3, options={"within": "A"}, name="two",
                        engine="local", engine_options={"workers": 2})
    assert pq.read_table(two.path / "scores.parquet").equals(pq.read_table(res.path / "scores.parquet"))
    assert two.header["content_hash"] == res.header["content_hash"]


def test_random_within_refuses_what_it_cannot_draw(make_run: MakeRun, tmp_path: Path) -> None:
    img, txt = _random_world(300)
    run = make_run(img, txt)
    run_selection(run, "clip-score", count=100, name="A")
    with pytest.raises(InputError, match=r"random can rank 100 samples \(not_in:A: 200\) but the budget is 150"):
        run_selection(run, "random", count=150, options={"within": "A"})
    with pytest.raises(InputError, match="--within: no selection 'nope'"):
        run_selection(run, "random", count=10, options={"within": "nope"})
    with pytest.raises(UsageError, match="bad selection name"):
        run_selection(run, "random", count=10, options={"within": "../A"})
    with pytest.raises(UsageError, match="--within does not apply to --method clip-score"):
        run_selection(run, "clip-score", count=10, options={"within": "A"})
    other = make_run(*_random_world(200, seed=1))
    import shutil

    shutil.copytree(run / "selections" / "A", other / "selections" / "A")
    with pytest.raises(InputError, match="made on a pool of 300 samples, the run has 200"):
        run_selection(other, "random", count=10, options={"within": "A"})
    assert not (run / "selections" / "random-in-A-n150").exists()
    scores = run / "selections" / "A" / "scores.parquet"  # the same size, other samples (rows reordered)
    t = pq.read_table(scores)
    pq.write_table(t.set_column(0, "uid", t.column("uid").take(list(range(299, -1, -1)))), scores)
    with pytest.raises(InputError, match="selection 'A' holds uids that are not in this run's embeddings"):
        run_selection(run, "random", count=10, options={"within": "A"})


def test_random_within_resumes_after_a_failure_with_the_same_bytes(make_run: MakeRun,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A draw that fails in pass 1 leaves its finished blocks and the earlier selection as they were; the
    rerun finishes with the bytes of an undisturbed run."""
    from curate.select import source as source_mod
    from curate.select.baselines import RandomSelector

    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 64)  # 5 blocks
    run = make_run(*_random_world(300))
    run_selection(run, "clip-score", count=200, name="A")
    kw = {"count": 90, "seed": 4, "options": {"within": "A"}, "name": "draw", "force": True}
    want = {p.name: p.read_bytes() for p in run_selection(run, "random", **kw).path.iterdir()
            if p.suffix == ".parquet"}
    parent = (run / "selections" / "A" / "scores.parquet").read_bytes()
    calls = fail_on_call(monkeypatch, RandomSelector, "scan", 3)
    with pytest.raises(RuntimeError, match="injected"):
        run_selection(run, "random", **kw)
    assert (run / "selections" / ".work-draw").is_dir()
    assert (run / "selections" / "A" / "scores.parquet").read_bytes() == parent
    calls["n"] = -100
    again = run_selection(run, "random", **kw)
    assert {p.name: p.read_bytes() for p in again.path.iterdir() if p.suffix == ".parquet"} == want
    assert -100 < calls["n"] < -100 + 5  # the blocks finished before the failure were not scanned again
    assert not (run / "selections" / ".work-draw").exists()


def test_replacing_a_selection_others_were_made_from_warns(make_run: MakeRun,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """--force over a selection that a draw (or set operation) was made from replaces it and says which
    selections came from the old one; a rerun with the same options says nothing."""
    run = make_run(*_random_world(200))
    run_selection(run, "clip-score", count=100, name="A")
    run_selection(run, "random", count=50, options={"within": "A"}, name="D")
    with caplog.at_level("WARNING", logger="curate"):
        run_selection(run, "clip-score", count=100, name="A")
        assert not caplog.records
        run_selection(run, "clip-score", count=120, name="A", force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "selection 'A' was replaced; made from the old one (re-run them): selection 'D'"]


def test_methods_that_need_no_ids_do_not_read_them_before_the_output(make_run: MakeRun,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 1 of random reads no column and clip-score only its column; the id columns are read once,
    by the table writers; a set operation, which checks uids, reads them in pass 1 too."""
    from curate.select.source import PoolSource

    reads: list[tuple[str, ...]] = []
    read = PoolSource.read

    def spy(self: PoolSource, start: int, stop: int, columns: list[str]) -> object:
        reads.append(tuple(columns))
        return read(self, start, stop, columns)

    monkeypatch.setattr(PoolSource, "read", spy)
    img, txt = _random_world()
    run = make_run(img, txt, clip_score=np.linspace(0, 1, 500, dtype=np.float32))
    ids = ("uid", "shard", "key", "position")
    a = run_selection(run, "random", fraction=0.2, seed=7, name="a")
    blocks = len(PoolSource.open(run).blocks())
    assert set(reads) == {ids} and len(reads) == blocks  # the writers' reads only: one per block
    reads.clear()
    b = run_selection(run, "clip-score", count=100, name="b")
    assert set(reads) == {ids, ("clip_score",)} and reads.count(ids) == reads.count(("clip_score",))
    assert _kept(b) == set(range(400, 500))
    reads.clear()
    both = run_selection(run, "intersect", options={"of": ("a", "b")}, name="ab")
    assert any(c[: len(ids)] == ids for c in reads[: len(reads) // 2])  # pass 1 reads the uids
    assert _kept(both) == _kept(a) & _kept(b)


def test_column_methods_scan_in_this_process_and_the_others_in_task_processes(
        make_run: MakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """random and clip-score read no embedding: their blocks take less than a task process takes to start,
    so --workers 2 scans them here, with the tables of --workers 1; semdedup's blocks go to the processes."""
    from curate.engines import devices

    calls: list[str] = []
    real = devices.process_map

    def spy(fn: object, *a: object, **k: object) -> object:
        calls.append(getattr(fn, "__name__", "?"))
        return real(fn, *a, **k)

    monkeypatch.setattr(devices, "process_map", spy)
    img, txt = _random_world(300)
    run = make_run(img, txt, clip_score=np.linspace(0, 1, 300, dtype=np.float32))
    two = {"engine": "local", "engine_options": {"workers": 2}}
    for method in ("random", "clip-score"):
        a = run_selection(run, method, count=90, seed=3, name=f"{method}-1")
        b = run_selection(run, method, count=90, seed=3, name=f"{method}-2", **two)
        assert (a.path / "scores.parquet").read_bytes() == (b.path / "scores.parquet").read_bytes()
    assert calls == []
    run_selection(run, "semdedup", count=200, name="sd", **two)
    assert "_pass1_task" in calls


# --- clip-score -----------------------------------------------------------------------------------


def test_clip_score_top_count_and_threshold(make_run: MakeRun) -> None:
    img, txt = _random_world(400)
    cs = np.round(np.random.default_rng(1).uniform(0.1, 0.4, 400), 3).astype(np.float32)
    null = np.zeros(400, bool)
    null[[5, 6]] = True
    run = make_run(img, txt, clip_score=cs, text_null=null)
    valid = [i for i in range(400) if not null[i]]
    res = run_selection(run, "clip-score", count=50)
    brute = sorted(valid, key=lambda i: (-cs[i], i))[:50]
    assert _kept(res) == set(brute)
    assert res.pruned_by_reason == {"budget": 348, "no_clip_score": 2}
    t = 0.3
    res_t = run_selection(run, "clip-score", options={"threshold": t})
    assert res_t.name == "clip-score-t0.3"
    assert _kept(res_t) == {i for i in valid if cs[i] >= np.float32(t)}  # DataComp: keep clip_score >= t
    assert set(res_t.pruned_by_reason) == {"below_threshold", "no_clip_score"}
    with pytest.raises(UsageError, match="exactly one"):
        run_selection(run, "clip-score", count=5, options={"threshold": 0.2}, name="x")
    with pytest.raises(UsageError, match="exactly one"):
        run_selection(run, "clip-score", name="x")


# --- semdedup -------------------------------------------------------------------------------------


def _dup_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """60 distinct points, 40 of them with 1-3 near-copies (cos > 0.999)."""
    rng = np.random.default_rng(seed)
    base = normalise(rng.normal(size=(60, 32)))
    rows, group = [base], list(range(60))
    for g in range(40):
        copies = int(rng.integers(1, 4))
        rows.append(normalise(base[g] + 1e-3 * rng.normal(size=(copies, 32))))
        group += [g] * copies
    img = np.vstack(rows)
    perm = rng.permutation(len(img))
    return img[perm], np.asarray(group)[perm], 60


def brute_semdedup(img: np.ndarray, part: np.ndarray, pref: np.ndarray, eps: float) -> set[int]:
    """Within each cluster, in preference order, drop j if any earlier i has cos(i, j) > 1 - eps."""
    keep = set()
    for c in np.unique(part):
        members = [int(i) for i in np.flatnonzero(part == c)]
        members.sort(key=lambda i: (pref[i], i))
        sims = img[members].astype(np.float64) @ img[members].astype(np.float64).T
        for pos, j in enumerate(members):
            if pos == 0 or sims[pos, :pos].max() <= 1 - eps:
                keep.add(j)
    return keep


@pytest.mark.parametrize("keep", ["farthest", "closest", "random"])
def test_semdedup_keeps_one_per_duplicate_group(make_run: MakeRun, keep: str) -> None:
    img, group, n_groups = _dup_world()
    run = make_run(img)
    res = run_selection(run, "semdedup", options={"eps": 0.01, "keep": keep, "clusters": 6}, seed=1)
    kept = _kept(res)
    assert len(kept) == n_groups and len(set(group[list(kept)])) == n_groups
    t = read_scores(res.path)
    pimg = load_image(run)
    if keep == "farthest":
        pref = t["centroid_sim"]
    elif keep == "closest":
        pref = -t["centroid_sim"]
    else:
        pref = None
    if pref is not None:
        assert kept == brute_semdedup(pimg, t["partition"], pref, 0.01)
        # inside each duplicate group the survivor is the farthest from (closest to) the centroid
        for g in range(n_groups):
            members = np.flatnonzero(group == g)
            if len(members) > 1 and len(set(t["partition"][members])) == 1:
                best = members[np.argmin(pref[members])]
                assert best in kept
    assert res.pruned_by_reason == {"duplicate": len(img) - n_groups}


def test_semdedup_budget_equals_eps_rule(make_run: MakeRun) -> None:
    img, txt = _random_world(600, 8, seed=3)
    run = make_run(img, txt)
    res = run_selection(run, "semdedup", count=450, options={"clusters": 4})
    assert res.kept == 450
    eps = res.info["effective_eps"]
    t = read_scores(res.path)
    assert (t["score"][t["selected"]] >= eps).all() and (t["score"][~t["selected"]] <= eps).all()
    brute = brute_semdedup(load_image(run), t["partition"], t["centroid_sim"], eps=float(np.nextafter(eps, -1)))
    assert _kept(res) <= brute and len(brute) - 450 <= 2  # equal up to ties at the boundary


def test_semdedup_budget_prunes_duplicates_as_duplicate_and_the_rest_as_budget(make_run: MakeRun) -> None:
    img, group, n_groups = _dup_world()  # 60 distinct points; every other sample is a near-copy of one
    run = make_run(img)
    copies = len(img) - n_groups
    # budget = the distinct points: exactly the near-copies are pruned, all of them as duplicates
    res = run_selection(run, "semdedup", count=n_groups, options={"clusters": 6}, name="groups")
    assert len(set(group[list(_kept(res))])) == n_groups
    assert res.pruned_by_reason == {"duplicate": copies}
    # budget below the 6 clusters: the effective eps is 2 (cluster heads tie); the 2 heads pruned are
    # no one's duplicate, every other member has an earlier cluster mate (cosine > -1 = 1 - 2)
    t = read_scores(run_selection(run, "semdedup", count=4, options={"clusters": 6}, name="heads").path)
    heads = t["score"] == 2.0
    assert heads.sum() == 6 and t["selected"].sum() == 4 and heads[t["selected"]].all()
    assert list(t["reason"][heads & ~t["selected"]]) == ["budget", "budget"]
    assert set(t["reason"][~heads]) == {"duplicate"}


@pytest.mark.parametrize("count", [5, 40, 100, 130])
def test_semdedup_budget_reasons_agree_with_the_effective_eps(make_run: MakeRun, count: int) -> None:
    img, _, _ = _dup_world(seed=2)
    run = make_run(img)
    res = run_selection(run, "semdedup", count=count, options={"clusters": 6}, name="b")
    t = read_scores(res.path)
    eps = res.info["effective_eps"]
    by_eps = read_scores(run_selection(run, "semdedup", options={"eps": eps, "clusters": 6}, name="e").path)
    # 'duplicate' = pruned by --eps at the effective eps too; 'budget' = kept there, pruned by the count
    assert set(np.flatnonzero(by_eps["selected"])) == set(np.flatnonzero(t["selected"] | (t["reason"] == "budget")))
    assert ((t["reason"] == "duplicate") == (~by_eps["selected"])).all()
    assert ((t["reason"] == "duplicate") == (t["score"] < eps)).all()
    assert set(t["reason"]) <= {"kept", "duplicate", "budget"}


def load_image(run: Path) -> np.ndarray:
    from oracle import load_round_pool

    return load_round_pool(run, {"image"}).image


def test_rowdot_in_chunks_of_gathered_rows_has_the_bits_of_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from curate.select import baselines

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(100, 33)).astype(np.float32), rng.normal(size=(9, 33)).astype(np.float32)
    idx, lab = np.flatnonzero(rng.random(100) < 0.7), rng.integers(0, 9, 100)
    whole = (torch.from_numpy(a[idx]) * torch.from_numpy(b[lab[idx]])).sum(1, dtype=torch.float64).numpy()
    monkeypatch.setattr(baselines, "ROWDOT_ROWS", 7)
    got = baselines.rowdot(a, b, idx, lab[idx])
    assert np.array_equal(got.view(np.uint64), whole.view(np.uint64))
    assert np.allclose(got, np.einsum("ij,ij->i", a[idx].astype(np.float64), b[lab[idx]].astype(np.float64)))
    assert np.array_equal(baselines.rowdot(a[:9], b), baselines.rowdot(a, b, np.arange(9), np.arange(9)))


def test_max_prior_similarity_blockwise_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    x = normalise(np.random.default_rng(4).normal(size=(300, 8)))
    dense = x @ x.T
    want = np.array([-np.inf] + [dense[j, :j].max() for j in range(1, 300)])
    monkeypatch.setattr("curate.select.baselines._BLOCK_ELEMENTS", 1000)  # many small blocks
    np.testing.assert_allclose(max_prior_similarity(x), want, rtol=1e-6)


# --- set algebra ----------------------------------------------------------------------------------


def test_set_algebra_matches_python_sets_with_provenance(make_run: MakeRun) -> None:
    img, txt = _random_world(300)
    run = make_run(img, txt)
    a = run_selection(run, "random", count=120, seed=1, name="A")
    b = run_selection(run, "clip-score", count=90, name="B")
    sa, sb = _kept(a), _kept(b)
    for op, want in (("intersect", sa & sb), ("union", sa | sb), ("difference", sa - sb)):
        res = run_selection(run, op, options={"of": ("A", "B")})
        assert res.name == f"A-{op}-B"
        assert _kept(res) == want
        man = read_manifest(res.path / "manifest.parquet")
        assert set(man.uids) == {hex_uid(i) for i in want}
        parents = man.header["parents"]
        assert [p["name"] for p in parents] == ["A", "B"]
        assert parents[0]["content_hash"] == a.manifest.header["content_hash"]
        assert parents[1]["content_hash"] == b.manifest.header["content_hash"]
        assert man.header["counts"]["pruned"] == 300 - len(want)
    assert run_selection(run, "difference", options={"of": ("A", "B")}, name="d").pruned_by_reason == {
        "not_in:A": 180,
        "in:B": len(sa & sb),
    }
    with pytest.raises(InputError, match="no selection 'nope'"):
        run_selection(run, "union", options={"of": ("A", "nope")})
    with pytest.raises(UsageError, match="takes no"):
        run_selection(run, "union", count=3, options={"of": ("A", "B")})


def test_set_algebra_of_many_selections(make_run: MakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    """--of A B C: intersection and union of all, difference A − (B ∪ C); the comma form gives the same."""
    import json

    from curate.cli.app import main

    img, txt = _random_world(300)
    run = make_run(img, txt)
    sel = [run_selection(run, "random", count=120, seed=1, name="A"),
           run_selection(run, "clip-score", count=90, name="B"),
           run_selection(run, "random", count=150, seed=5, name="C")]
    sa, sb, sc = map(_kept, sel)
    want = {"intersect": sa & sb & sc, "union": sa | sb | sc, "difference": sa - sb - sc}
    reasons = {"intersect": {"not_in:A": 180, "not_in:B": len(sa - sb), "not_in:C": len((sa & sb) - sc)},
               "union": {"in_neither": 300 - len(sa | sb | sc)},
               "difference": {"not_in:A": 180, "in:B": len(sa & sb), "in:C": len((sa - sb) & sc)}}
    for op in want:
        res = run_selection(run, op, options={"of": ("A", "B", "C")})
        assert res.name == f"A-{op}-B-{op}-C"
        assert _kept(res) == want[op]
        assert res.pruned_by_reason == {k: v for k, v in reasons[op].items() if v}
        scores = read_scores(res.path)
        assert [scores[c].sum() for c in ("in_a", "in_b", "in_c")] == [120, 90, 150]
        man = read_manifest(res.path / "manifest.parquet")
        assert [p["name"] for p in man.header["parents"]] == ["A", "B", "C"]
        assert man.header["params"]["of"] == ["A", "B", "C"]
        comma = run_selection(run, op, options={"of": "A,B,C"}, name=f"{op}-comma")
        assert comma.manifest.header["content_hash"] == res.manifest.header["content_hash"]
    hashes = set()
    for of in (["--of", "A", "B", "C"], ["--of", "A,B,C"], ["--of", "A", "--of", "B,C"]):
        capsys.readouterr()
        assert main(["select", "--run", str(run), "--method", "difference", *of, "--name", "d", "--force",
                     "--json"]) == 0
        hashes.add(json.loads(capsys.readouterr().out)["content_hash"])
    assert len(hashes) == 1
    with pytest.raises(UsageError, match="two or more"):
        run_selection(run, "union", options={"of": ("A",)})
    with pytest.raises(InputError, match="is empty"):
        run_selection(run, "difference", options={"of": ("A", "A-union-B-union-C")})


# --- driver ---------------------------------------------------------------------------------------


def test_outputs_idempotent_atomic_and_recorded(make_run: MakeRun) -> None:
    img, txt = _random_world(200)
    run = make_run(img, txt)
    res = run_selection(run, "random", fraction=0.5, seed=3)
    first = {p.name: p.read_bytes() for p in res.path.iterdir()}
    again = run_selection(run, "random", fraction=0.5, seed=3)
    assert {p.name: p.read_bytes() for p in again.path.iterdir()} == first
    assert sorted(first) == ["manifest.json", "manifest.parquet", "scores.parquet"]
    assert not [p for p in (run / "selections").iterdir() if p.name.startswith(".")]  # no temp left
    man = read_manifest(res.path / "manifest.parquet")
    h = man.header
    assert h["method"] == "random" and h["seed"] == 3 and h["params"]["fraction"] == 0.5
    assert h["counts"] == {"pool": 200, "kept": 100, "pruned": 100, "pruned_by_reason": {"budget": 100}}
    shards = man.table.column("shard").to_pylist()
    assert shards == sorted(shards)
    assert res.name == "random-s3-f0.5"  # the seed changes the result, so it is in the default name
    rec = read_json(run / "run.json")["selections"]["random-s3-f0.5"]
    assert rec["content_hash"] == h["content_hash"] and rec["kept"] == 100
    with pytest.raises(UsageError, match="exists with other parameters"):
        run_selection(run, "random", fraction=0.5, seed=4, name="random-s3-f0.5")
    assert run_selection(run, "random", fraction=0.5, seed=4, name="random-s3-f0.5", force=True).kept == 100


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fraction": 0.0}, "--fraction must be in"),
        ({"fraction": 1.5}, "--fraction must be in"),
        ({"fraction": -0.1}, "--fraction must be in"),
        ({"count": 0}, "--count must be a positive"),
        ({"count": 201}, "exceeds the pool"),
        ({"fraction": 0.1, "count": 3}, "either --fraction or --count"),
        ({}, "needs --fraction"),
        ({"fraction": 0.1, "name": "../x"}, "bad selection name"),
        ({"fraction": 0.1, "options": {"eps": 0.1}}, "--eps does not apply to --method random"),
    ],
)
def test_bad_budget_and_options(make_run: MakeRun, kw: dict, match: str) -> None:
    img, txt = _random_world(200)
    run = make_run(img, txt)
    with pytest.raises(UsageError, match=match):
        run_selection(run, "random", **kw)
    assert not (run / "selections").exists()


def test_unknown_method_and_missing_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a curate run"):
        run_selection(tmp_path / "nope", "random", fraction=0.1)
    img, txt = _random_world(50)
    from conftest import write_run

    run = write_run(tmp_path / "r", img, txt)
    with pytest.raises(UsageError, match=r"unknown method 'magic'; choose one of: .*clipcov"):
        run_selection(run, "magic", fraction=0.1)
