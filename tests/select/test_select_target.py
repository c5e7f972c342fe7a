"""NormSim and DataComp's image-based filter against closed forms and float64 brute force; the target
(another run or a table, same model only); set algebra with clip-score; processes and a failed select."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MakeRun, fail_on_call, normalise, read_scores, write_run

from curate.cli.app import main
from curate.errors import InputError, UsageError
from curate.rundir import RunDir
from curate.select import run_selection
from curate.select import source as source_mod
from curate.select.target import ImageFilterSelector, NormSimSelector, default_clusters


def stored_image(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's image embeddings as the selectors see them (float16 → float32, normalised), float64."""
    from oracle import load_round_pool

    pool = load_round_pool(run, {"image"})
    return pool.image.astype(np.float64), pool.image_ok


def kept(path: Path) -> set[int]:
    return set(np.flatnonzero(read_scores(path)["selected"]))


# --- NormSim --------------------------------------------------------------------------------------


def test_normsim_closed_forms(make_run: MakeRun) -> None:
    """Target {e0, e1, −e2}: NormSim-∞ = max |cos| (so −e2 counts as a match), NormSim-2 = sqrt(Σ cos²)."""
    eye = np.eye(4, dtype=np.float32)
    target = make_run(np.stack([eye[0], eye[1], -eye[2]]))
    pool = np.stack([eye[0], eye[3], eye[2], eye[0] + eye[1], eye[0] + eye[3], eye[3] - eye[1]])
    run = make_run(normalise(pool))
    s = 1 / np.sqrt(2)
    inf = read_scores(run_selection(run, "normsim", count=2, options={"target": str(target)}).path)
    np.testing.assert_allclose(inf["score"], [1, 0, 1, s, s, s], atol=1e-3)  # float16 storage of 1/√2
    two = read_scores(run_selection(run, "normsim", count=2, options={"target": str(target), "norm": "2"}).path)
    np.testing.assert_allclose(two["score"], [1, 0, 1, 1, s, s], atol=1e-3)
    assert kept(run / "selections" / f"normsim-2-{target.name}-n2") == {0, 2}  # ties at 1: pool order


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pool of 8 clusters and a target drawn around 3 of them (plus a few strays and an invalid row)."""
    rng = np.random.default_rng(2)
    d = 16
    centres = normalise(rng.normal(size=(8, d)))
    lab = rng.integers(0, 8, 900)
    img = normalise(centres[lab] + 0.35 * rng.normal(size=(900, d)))
    img[5] = 0.0  # invalid image
    txt = normalise(img + 0.5 * rng.normal(size=(900, d)))
    root = tmp_path_factory.mktemp("target")
    pool = write_run(root / "pool", img, txt, n_shards=4)
    tl = rng.choice([1, 4, 6], 250)
    timg = normalise(centres[tl] + 0.35 * rng.normal(size=(250, d)))
    timg[7] = 0.0
    return pool, write_run(root / "tgt", timg, n_shards=2)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_normsim_matches_float64_brute_force_over_many_tiles(runs: tuple[Path, Path], norm: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.select.target as tg

    pool, target = runs
    monkeypatch.setattr(tg, "TARGET_TILE", 64)  # 4 target tiles
    monkeypatch.setattr(tg, "TILE_ELEMENTS", 64 * 100)  # pool rows in runs of 100
    res = run_selection(pool, "normsim", count=300, options={"target": str(target), "norm": norm}, name=f"bf{norm}")
    x, ok = stored_image(pool)
    t, tok = stored_image(target)
    sims = x @ t[tok].T
    want = np.abs(sims).max(1) if norm == "inf" else np.sqrt((sims**2).sum(1))
    want[~ok] = np.nan
    got = read_scores(res.path)["score"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    order = np.argsort(-np.nan_to_num(want, nan=-1), kind="stable")
    assert kept(res.path) == set(order[:300]) or len(kept(res.path) ^ set(order[:300])) <= 2  # float32 ties
    assert res.pruned_by_reason == {"budget": 599, "bad_image_emb": 1}
    assert res.info["target_rows"] == 250 and res.info["norm"] == norm


def test_target_as_a_table_or_a_run_gives_the_same_tables(runs: tuple[Path, Path]) -> None:
    pool, target = runs
    a = run_selection(pool, "normsim", fraction=0.2, options={"target": str(target)}, name="from-run")
    one = target.parent / "target.parquet"  # the target run's tables as one table
    pq.write_table(pa.concat_tables([pq.read_table(p) for p in sorted((target / "embeddings").glob("*.parquet"))]),
                   one)
    b = run_selection(pool, "normsim", fraction=0.2, options={"target": str(one)}, name="from-table")
    assert pq.read_table(a.path / "scores.parquet").equals(pq.read_table(b.path / "scores.parquet"))


def test_a_target_of_another_model_is_refused_in_one_line(runs: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pool, target = runs
    rng = np.random.default_rng(0)
    other = write_run(tmp_path / "other", normalise(rng.normal(size=(20, 16))))
    for f in (other / "embeddings").glob("*.parquet"):  # same dims, another model in the metadata
        t = pq.read_table(f)
        meta = {b"curate": json.dumps({"model": "ViT-B-32", "pretrained": "openai", "dim": 16}).encode()}
        pq.write_table(t.replace_schema_metadata(meta), f)
    for method in ("normsim", "image-filter"):
        with pytest.raises(InputError, match=r"embedded with ViT-B-32 \(pretrained=openai\), the run with test"):
            run_selection(pool, method, count=5 if method == "normsim" else None, options={"target": str(other)})
    before = (pool / "run.json").read_bytes()
    code = main(["select", "--run", str(pool), "--method", "normsim", "--count", "5", "--target", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("error: target ") and "model" in err[0]
    assert (pool / "run.json").read_bytes() == before
    with pytest.raises(InputError, match="target not found"):
        run_selection(pool, "normsim", count=5, options={"target": str(tmp_path / "nope")})
    with pytest.raises(InputError, match="holds no embeddings"):
        run_selection(pool, "normsim", count=5, options={"target": str(tmp_path)})
    with pytest.raises(UsageError, match="needs --target"):
        run_selection(pool, "normsim", count=5)
    with pytest.raises(UsageError, match="--norm must be 2 or inf"):
        run_selection(pool, "normsim", count=5, options={"target": str(target), "norm": "1"})


# --- DataComp's image-based filter ------------------------------------------------------------------


def test_image_filter_keeps_exactly_the_clusters_the_target_hits(make_run: MakeRun) -> None:
    """Four far-apart clusters, a target near two of them: K=4 keeps exactly those two clusters."""
    rng = np.random.default_rng(0)
    eye = np.eye(8, dtype=np.float32)
    lab = np.repeat(np.arange(4), 40)
    run = make_run(normalise(eye[lab] + 0.05 * rng.normal(size=(160, 8))))
    target = make_run(normalise(eye[[0, 2, 2, 0, 2]] + 0.05 * rng.normal(size=(5, 8))))
    res = run_selection(run, "image-filter", options={"target": str(target), "clusters": 4})
    assert res.name == f"image-filter-{target.name}-k4"  # every option that changes the result
    assert kept(res.path) == set(np.flatnonzero((lab == 0) | (lab == 2)))
    assert res.pruned_by_reason == {"not_target_cluster": 80}
    assert res.info["clusters"] == 4 and res.info["target_clusters"] == 2


def test_image_filter_matches_the_datacomp_rule_given_the_centroids(runs: tuple[Path, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DataComp's rule in float64 with the run's k-means centroids: a target image's cluster is the
    nearest centroid; keep the pool samples whose nearest centroid is one of those."""
    import curate.select.target as tg
    from curate.select.partition import train_kmeans

    pool, target = runs
    monkeypatch.setattr(tg, "CENTRE_TILE", 7)  # centroids in several tiles
    monkeypatch.setattr(tg, "TILE_ELEMENTS", 7 * 50)
    res = run_selection(pool, "image-filter", options={"target": str(target), "clusters": 30}, seed=4)
    x, ok = stored_image(pool)
    t, tok = stored_image(target)
    c = train_kmeans(x[ok].astype(np.float32), 30, 4).astype(np.float64)  # the pool (< 256·K rows): all valid rows
    hits = np.unique(np.argmax(t[tok] @ c.T, axis=1))
    label = np.argmax(x @ c.T, axis=1)
    want = ok & np.isin(label, hits)
    s = read_scores(res.path)
    np.testing.assert_array_equal(s["partition"][ok], label[ok])
    np.testing.assert_array_equal(s["selected"], want)
    assert res.info["target_clusters"] == len(hits) and 0 < res.kept < 899


def test_image_filter_intersect_clip_score_is_the_set_intersection(runs: tuple[Path, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """DataComp's best image-based baseline, image-based ∩ CLIP score (top 30%), by set algebra."""
    pool, target = runs
    assert main(["select", "--run", str(pool), "--method", "image-filter", "--target", str(target),
                 "--clusters", "30", "--force", "--json"]) == 0
    name = json.loads(capsys.readouterr().out)["name"]
    assert name == "image-filter-tgt-k30"
    assert main(["select", "--run", str(pool), "--method", "clip-score", "--fraction", "0.3"]) == 0
    capsys.readouterr()
    assert main(["select", "--run", str(pool), "--method", "intersect", "--of", name, "clip-score-f0.3",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    sel = pool / "selections"
    both = kept(sel / name) & kept(sel / "clip-score-f0.3")
    assert res["kept"] == len(both) > 0 and kept(sel / res["name"]) == both


def test_default_clusters_follow_datacomps_density() -> None:
    assert default_clusters(12_800_000) == 100_000 and default_clusters(1_000_000) == 7812
    assert default_clusters(50) == 1 and default_clusters(10**10) == 100_000


def test_image_filter_bad_options(runs: tuple[Path, Path]) -> None:
    pool, target = runs
    with pytest.raises(UsageError, match="takes no --fraction/--count"):
        run_selection(pool, "image-filter", count=3, options={"target": str(target)})
    with pytest.raises(UsageError, match="needs at least 2000 valid samples"):
        run_selection(pool, "image-filter", options={"target": str(target), "clusters": 2000}, name="x")
    with pytest.raises(UsageError, match="--clusters must be a positive"):
        run_selection(pool, "image-filter", options={"target": str(target), "clusters": 0})


# --- engines and failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "opts", "count"), [("normsim", {}, 200), ("normsim", {"norm": "2"}, 200),
                                                       ("image-filter", {"clusters": 12}, None)])
def test_two_processes_and_a_failed_select_give_the_same_tables(
        runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, method: str, opts: dict, count: int | None) -> None:
    pool, target = runs
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 256)  # 4 blocks
    kw = {"count": count, "seed": 1, "options": {"target": str(target), **opts}}
    name = f"{method}-{len(opts)}"
    one = run_selection(pool, method, name=f"{name}-one", **kw)
    want = {p: (one.path / p).read_bytes() for p in ("scores.parquet", "manifest.parquet")}
    two = run_selection(pool, method, name=f"{name}-two", engine="local", engine_options={"workers": 2}, **kw)
    assert pq.read_table(two.path / "scores.parquet").equals(pq.read_table(one.path / "scores.parquet"))
    assert two.header["content_hash"] == one.header["content_hash"]
    calls = fail_on_call(monkeypatch, NormSimSelector if method == "normsim" else ImageFilterSelector, "scan", 3)
    with pytest.raises(RuntimeError, match="injected"):
        run_selection(pool, method, name=f"{name}-one", force=True, **kw)
    assert {p: (one.path / p).read_bytes() for p in want} == want  # the earlier selection is intact
    calls["n"] = -100
    again = run_selection(pool, method, name=f"{name}-one", force=True, **kw)
    assert calls["n"] == -100 + 2  # blocks 0 and 1 were finished before the failure
    assert {p: (again.path / p).read_bytes() for p in want} == want


def test_cli_help_lists_the_methods_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("negcliploss", "normsim", "image-filter", "--target", "--norm", "--repeats", "--batch-size",
                 "--temperature", "--method intersect --of image-filter-imagenet-train clip-score-f0.3"):
        assert text in out, text


def test_run_json_records_the_new_selections(runs: tuple[Path, Path]) -> None:
    pool, target = runs
    run_selection(pool, "normsim", fraction=0.1, options={"target": str(target)})
    rec = RunDir(pool).load()["selections"][f"normsim-inf-{target.name}-f0.1"]
    assert rec["method"] == "normsim" and rec["params"]["target"] == str(target) and rec["kept"] == 90
