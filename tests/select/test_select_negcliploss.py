"""negCLIPLoss against closed forms and an independent float64 brute force; the pipeline's rows-in-several-
partitions path (K random batches per row) under other blocks, memory budgets, processes and a failure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MakeRun, normalise, read_scores, write_run

from curate.errors import InputError, UsageError
from curate.rundir import RunDir
from curate.select import run_selection
from curate.select import source as source_mod
from curate.select.negcliploss import NegClipLossSelector, batch_lse
from curate.select.pipeline import combine_rows

STREAM = 0x6E634C4C  # docs/select.md: repetition k draws from default_rng([seed, 0x6E634C4C, k])


def brute_force(img: np.ndarray, txt: np.ndarray, ok: np.ndarray, batch: int, k: int, tau: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """negCLIPLoss and the normalisation term by the definition, in float64, batch by batch."""
    n = len(img)
    m = math.ceil(n / batch)
    acc = np.zeros(n)
    for r in range(k):
        b = np.minimum((np.random.default_rng([seed, STREAM, r]).random(n) * m).astype(int), m - 1)
        for j in range(m):
            mem = np.flatnonzero((b == j) & ok)
            if not len(mem):
                continue
            z = img[mem] @ txt[mem].T / tau
            zr = z.max(1, keepdims=True)
            zc = z.max(0, keepdims=True)
            acc[mem] += (np.log(np.exp(z - zr).sum(1)) + zr[:, 0]) + (np.log(np.exp(z - zc).sum(0)) + zc[0])
    norm = np.where(ok, tau / 2 * acc / k, np.nan)
    return np.where(ok, np.einsum("ij,ij->i", img, txt) - norm, np.nan), norm


def stored(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's embeddings as the selectors see them (float16 → float32, normalised) in float64."""
    from oracle import load_round_pool

    pool = load_round_pool(run, {"image", "text"})
    ok = pool.image_ok & pool.text_ok
    return pool.image.astype(np.float64), pool.text.astype(np.float64), ok


def test_closed_form_one_batch_and_the_penalty_of_a_generic_pair(make_run: MakeRun) -> None:
    """Orthonormal pairs, one batch: R = τ·log(e^{1/τ} + n − 1) for a clean pair. Sample 0's caption is
    sample 1's (CLIP score 0); sample 1's image then matches two captions: the same CLIP score as the
    clean pairs (1) but a larger normalisation term, so negCLIPLoss ranks it below them."""
    n, tau = 6, 0.1
    img = np.eye(8, dtype=np.float32)[:n]
    txt = img.copy()
    txt[0] = img[1]
    run = make_run(img, txt)
    res = run_selection(run, "negcliploss", count=4, options={"temperature": tau, "batch_size": 64, "repeats": 3,
                                                               "dtype": "float64"})
    t = read_scores(res.path)
    e = math.exp(1 / tau)
    clean = 1 - tau * math.log(e + n - 1)
    want = np.array([
        0 - tau / 2 * (math.log(n) + math.log(e + n - 1)),  # row: all zeros; column 0: <img_1, txt_0> = 1
        1 - tau / 2 * (math.log(2 * e + n - 2) + math.log(e + n - 1)),
        *[clean] * (n - 2),
    ])
    np.testing.assert_allclose(t["score"], want, rtol=1e-12)
    np.testing.assert_allclose(t["clip_score"], [0, 1, 1, 1, 1, 1])
    assert t["score"][1] < clean and set(np.flatnonzero(t["selected"])) == {2, 3, 4, 5}
    assert res.info["batches_per_repeat"] == 1 and res.info["repeats"] == 3


@pytest.fixture(scope="module")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    n, d = 500, 12
    centres = normalise(rng.normal(size=(6, d)))
    lab = rng.integers(0, 6, n)
    img = normalise(centres[lab] + 0.6 * rng.normal(size=(n, d)))
    txt = normalise(centres[lab] + 0.6 * rng.normal(size=(n, d)))
    txt[::9] = normalise(rng.normal(size=(len(txt[::9]), d)))  # mismatched captions
    img[3] = 0.0  # invalid image
    null = np.zeros(n, bool)
    null[[10, 11]] = True  # no caption
    return write_run(tmp_path_factory.mktemp("negclip") / "run", img, txt, text_null=null, n_shards=3)


OPTS = {"temperature": 0.07, "batch_size": 64, "repeats": 4}


def test_matches_float64_brute_force(world_run: Path) -> None:
    res = run_selection(world_run, "negcliploss", count=150, seed=3, options={**OPTS, "dtype": "float64"},
                        name="bf")
    img, txt, ok = stored(world_run)
    score, norm = brute_force(img, txt, ok, 64, 4, 0.07, seed=3)
    t = read_scores(res.path)
    np.testing.assert_allclose(t["norm_term"], norm, rtol=1e-12)
    np.testing.assert_allclose(t["score"], score, rtol=0, atol=1e-7)  # clip score: float32 products
    assert set(np.flatnonzero(t["selected"])) == set(np.argsort(-np.nan_to_num(score, nan=-9), kind="stable")[:150])
    assert res.pruned_by_reason == {"budget": 347, "bad_image_emb": 1, "null_text": 2}
    assert res.info["batches_per_repeat"] == 8 and res.info["temperature"] == 0.07
    # float32 tiles (the default): the same ranking up to float32 rounding
    f32 = read_scores(run_selection(world_run, "negcliploss", count=150, seed=3, options=OPTS, name="f32").path)
    np.testing.assert_allclose(f32["score"], score, rtol=0, atol=2e-6)
    # another seed draws other batches
    other = read_scores(run_selection(world_run, "negcliploss", count=150, seed=4, options=OPTS, name="s4").path)
    assert not np.array_equal(np.nan_to_num(other["norm_term"]), np.nan_to_num(f32["norm_term"]))


def test_each_row_is_in_k_random_batches_of_its_repetitions(world_run: Path) -> None:
    from curate.select.source import PoolSource

    source = PoolSource.open(world_run)
    chunk = source.chunk(0, len(source), {"image", "text"})
    sel = NegClipLossSelector(NegClipLossSelector.config_class(**OPTS))
    shared = {"batches": 8, "seed": 3}
    part = sel.scan(chunk, 0, shared).partition
    assert part is not None and part.shape == (500, 4)
    ok = chunk.image_ok & chunk.text_ok
    assert (part[~ok] == -1).all()
    for k in range(4):
        assert ((part[ok, k] >= 8 * k) & (part[ok, k] < 8 * (k + 1))).all()
        sizes = np.bincount(part[ok, k] - 8 * k, minlength=8)
        assert sizes.min() > 35 and sizes.max() < 95  # about 497 / 8 each
    assert (part[ok, 0] != part[ok, 1] - 8).mean() > 0.7  # repetitions draw independently
    # a block's draws are those of the whole pool at its rows
    tail = sel.scan(source.chunk(200, 500, {"image", "text"}), 200, shared).partition
    np.testing.assert_array_equal(tail, part[200:])


def test_combine_adds_a_rows_entries_in_partition_order() -> None:
    rows = np.array([10, 10, 10, 12, 13, 13])
    v = np.array([1e16, 1.0, -1e16, 5.0, 0.25, 0.5])
    got, count = combine_rows(rows, {"x": v}, "sum", 10, 5)
    np.testing.assert_array_equal(count, [3, 0, 1, 2, 0])
    assert got["x"][0] == (1e16 + 1.0) - 1e16  # left to right: 0.0, not the exact 1.0
    np.testing.assert_array_equal(got["x"][2:4], [5.0, 0.75])
    assert np.isnan(got["x"][1]) and np.isnan(got["x"][4])


def test_held_and_lazy_rows_and_column_tiles_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import curate.select.negcliploss as nc
    from curate.select.clipcov import Rows
    from curate.select.pool import normalise_rows

    rng = np.random.default_rng(0)
    raw_i = rng.normal(size=(300, 16)).astype(np.float16)
    raw_t = rng.normal(size=(300, 16)).astype(np.float16)
    monkeypatch.setattr(nc, "COLUMN_TILE", 64)  # 5 column tiles
    monkeypatch.setattr(nc, "TILE_ELEMENTS", 64 * 40)  # row runs of 40
    held = batch_lse(Rows(torch.from_numpy(normalise_rows(raw_i))), Rows(torch.from_numpy(normalise_rows(raw_t))),
                     0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # and a thread count of its own (engines run tasks with fewer threads)
    try:
        lazy = batch_lse(Rows.lazy(raw_i, "cpu", torch.float32), Rows.lazy(raw_t, "cpu", torch.float32), 0.05)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(held, lazy, strict=True):
        np.testing.assert_array_equal(a, b)
    z = normalise_rows(raw_i).astype(np.float64) @ normalise_rows(raw_t).astype(np.float64).T / 0.05
    np.testing.assert_allclose(held[0], np.log(np.exp(z - z.max()).sum(1)) + z.max(), rtol=1e-6)
    np.testing.assert_allclose(held[1], np.log(np.exp(z - z.max()).sum(0)) + z.max(), rtol=1e-6)


def test_blocks_memory_budget_and_two_processes_give_the_same_tables(world_run: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches span several blocks (64-row blocks), a 1 MiB budget makes every batch a task of its own,
    two task processes compute them: the tables are those of one process with the default blocks."""
    base = run_selection(world_run, "negcliploss", fraction=0.3, seed=1, options=OPTS, name="one")
    want = pq.read_table(base.path / "scores.parquet")
    two = run_selection(world_run, "negcliploss", fraction=0.3, seed=1, options=OPTS, name="two", engine="local",
                        engine_options={"workers": 2})
    assert pq.read_table(two.path / "scores.parquet").equals(want)
    assert two.header["content_hash"] == base.header["content_hash"]
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 64)
    small = run_selection(world_run, "negcliploss", fraction=0.3, seed=1, options=OPTS, name="small",
                          memory=1 << 20)
    assert pq.read_table(small.path / "scores.parquet").equals(want)


@pytest.mark.parametrize("stage", ["partition", "finish"])
def test_a_failed_select_resumes_and_gives_the_same_bytes(world_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                          stage: str) -> None:
    """A select that fails in pass 2 (or in the combine stage) leaves its finished tasks in the work
    folder and the earlier selection untouched; the rerun redoes only the rest, with the same bytes."""
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 128)  # 4 blocks
    kw = {"fraction": 0.3, "seed": 2, "options": OPTS, "name": f"resume-{stage}", "force": True}
    first = run_selection(world_run, "negcliploss", **kw)
    want = {p.name: p.read_bytes() for p in first.path.iterdir() if p.suffix == ".parquet"}
    calls = {"scan": 0, stage: 0}
    real = {k: getattr(NegClipLossSelector, k) for k in calls}
    fail_at = {"scan": -1, stage: 3}

    def counted(name: str):  # type: ignore[no-untyped-def]
        def call(self, *a, **k):  # type: ignore[no-untyped-def]
            calls[name] += 1
            if calls[name] == fail_at[name]:
                raise RuntimeError("injected failure")
            return real[name](self, *a, **k)
        return call

    for name in calls:
        monkeypatch.setattr(NegClipLossSelector, name, counted(name))
    with pytest.raises(RuntimeError, match="injected"):
        run_selection(world_run, "negcliploss", **kw)
    work = world_run / "selections" / f".work-resume-{stage}"
    assert work.is_dir() and {p.name: p.read_bytes() for p in first.path.iterdir() if p.suffix == ".parquet"} == want
    fail_at[stage] = -1
    calls.update(scan=0, **{stage: 0})
    again = run_selection(world_run, "negcliploss", **kw)
    assert {p.name: p.read_bytes() for p in again.path.iterdir() if p.suffix == ".parquet"} == want
    assert calls["scan"] == 0  # pass 1 was finished: not redone
    if stage == "finish":
        assert calls["finish"] == 2  # blocks 0 and 1 were combined before the failure
    assert not work.exists()


def test_threshold_keeps_scores_above_it(world_run: Path) -> None:
    ranked = read_scores(run_selection(world_run, "negcliploss", count=100, options=OPTS, name="top").path)
    t = float(np.sort(ranked["score"][np.isfinite(ranked["score"])])[-100])
    res = run_selection(world_run, "negcliploss", options={**OPTS, "threshold": t})
    assert res.name == f"negcliploss-t{t:g}"
    s = read_scores(res.path)
    assert (s["selected"] == (s["score"] >= t)).all() and res.kept == 100
    assert res.pruned_by_reason["below_threshold"] == 397


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"options": {"batch_size": 1, "temperature": 0.1}, "count": 5}, "--batch-size must be at least 2"),
        ({"options": {"repeats": 0, "temperature": 0.1}, "count": 5}, "--repeats must be a positive"),
        ({"options": {"temperature": 0.0}, "count": 5}, "--temperature must be a positive"),
        ({"options": {"temperature": 0.1}}, "needs exactly one of --fraction, --count or --threshold"),
        ({"options": {"temperature": 0.1, "threshold": 0.1}, "count": 5}, "needs exactly one of"),
        ({"count": 5}, "pass --temperature T"),  # the hand-built run's model ("test") cannot be loaded
    ],
)
def test_bad_options_are_usage_errors(make_run: MakeRun, kw: dict, match: str) -> None:
    rng = np.random.default_rng(0)
    run = make_run(normalise(rng.normal(size=(40, 8))))
    with pytest.raises(UsageError, match=match):
        run_selection(run, "negcliploss", **kw)
    assert not (run / "selections").exists()


def test_no_valid_pair_is_an_input_error(make_run: MakeRun) -> None:
    img = normalise(np.random.default_rng(0).normal(size=(30, 8)))
    run = make_run(img, text_null=np.ones(30, bool))
    with pytest.raises(InputError, match="no sample has both a valid image and a valid caption embedding"):
        run_selection(run, "negcliploss", count=5, options={"temperature": 0.1})


def test_temperature_is_read_from_the_runs_model(make_run: MakeRun) -> None:
    """A run embedded with the built-in ``sample`` model: τ = 1 / exp(logit_scale) of that model."""
    from curate.models import load_model

    rng = np.random.default_rng(0)
    img = normalise(rng.normal(size=(80, 64)))
    run = make_run(img, normalise(img + rng.normal(size=(80, 64))))
    RunDir(run).update("embed", {**RunDir(run).load()["embed"], "model": "sample"}, command="test")
    res = run_selection(run, "negcliploss", fraction=0.5)
    scale = float(load_model("sample").model.logit_scale.detach().exp())
    assert res.info["temperature"] == pytest.approx(1 / scale, rel=1e-6)
    assert res.header["params"]["temperature"] is None  # recorded as "from the model"
