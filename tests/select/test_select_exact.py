"""The partitioned pipeline against the in-memory oracle (tests/select/oracle.py): bit for bit.

Every method and variant, on pools with invalid rows, ties and several shards; with blocks of a few
hundred rows (so that pools span many blocks and partitions span many blocks), with a memory budget so
small that rankings and picks spill to disk, on the local engine's processes-free path and resumed
after a failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import normalise, write_run
from oracle import ids as oracle_ids
from oracle import select as oracle_select

from curate.io.manifest import build_manifest, read_manifest
from curate.select import run_selection
from curate.select import source as source_mod

CASES = [
    ("random", {}, 0.3),
    ("clip-score", {}, 0.3),
    ("clip-score", {"threshold": 0.2}, None),
    ("semdedup", {}, 0.5),
    ("semdedup", {"keep": "closest", "clusters": 7}, 0.4),
    ("semdedup", {"keep": "random", "eps": 0.05}, None),
    ("clipcov", {}, 0.3),
    ("clipcov", {"variant": "greedy"}, 0.25),
    ("clipcov", {"partition": "kmeans:6"}, 0.3),
    ("clipcov", {"partition": "kmeans:5", "variant": "greedy"}, 0.3),
]


def world(n: int = 1700, d: int = 24, seed: int = 3) -> tuple[np.ndarray, ...]:
    """Zipf-sized classes, a few exact duplicates (ties), invalid rows and captionless rows."""
    rng = np.random.default_rng(seed)
    k = 9
    centres = normalise(rng.normal(size=(k, d)))
    p = 1.0 / np.arange(1, k + 1)
    lab = rng.choice(k, size=n, p=p / p.sum())
    img = normalise(centres[lab] + 0.9 * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    txt = normalise(centres[lab] + 0.9 * rng.normal(size=(n, d)) / np.sqrt(d) * 2)
    txt[n // 5 :: 11] = normalise(rng.normal(size=(len(txt[n // 5 :: 11]), d)))  # mismatched captions
    img[40:45] = img[30]  # exact duplicates: ties in every score
    txt[40:45] = txt[30]
    img[7] = 0.0  # zero-norm image
    img[8, 3] = np.nan
    null = np.zeros(n, bool)
    null[[100, 101, 900]] = True
    return img, txt, centres, null


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    img, txt, centres, null = world()
    run = write_run(tmp_path_factory.mktemp("exact") / "run", img, txt, text_null=null, n_shards=5)
    return run, centres


def _compare(res_path, want: dict[str, np.ndarray], run) -> None:
    got = pq.read_table(res_path / "scores.parquet")
    for name, w in want.items():
        col = got.column(name)
        g = col.fill_null(-1).to_numpy() if name in ("rank", "partition") else col.to_numpy(zero_copy_only=False)
        if g.dtype.kind == "f":
            np.testing.assert_array_equal(g.view(np.uint64), np.asarray(w, np.float64).view(np.uint64),
                                          err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)
    # the manifest: the same rows and hash as building it in memory from the oracle's picks
    order = np.flatnonzero(want["selected"])
    built = build_manifest(oracle_ids(run).take(order), kind="selection", command="x")
    man = read_manifest(res_path / "manifest.parquet")
    assert man.table.equals(built.table)
    assert man.header["content_hash"] == built.header["content_hash"]
    assert man.header["counts"]["kept"] == len(order)


@pytest.mark.parametrize(("method", "opts", "fraction"), CASES, ids=lambda v: str(v))
def test_pipeline_matches_oracle(pool_run: tuple, monkeypatch: pytest.MonkeyPatch, method: str, opts: dict,
                                 fraction: float | None) -> None:
    run, centres = pool_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 256)  # 7 blocks; every partition spans several
    kw = {"class_text": centres} if method == "clipcov" else {}
    name = f"x-{method}-{len(opts)}-{fraction}"
    res = run_selection(run, method, fraction=fraction, options=opts, seed=2, name=name, **kw)
    budget = int(1700 * fraction) if fraction else None
    want = oracle_select(run, method, budget, seed=2, **kw, **opts)
    _compare(res.path, want, run)


@pytest.mark.parametrize("opts", [{"dtype": "float64"}, {"partition": "kmeans:6", "dtype": "float64"}],
                         ids=["zero-shot", "kmeans"])
def test_clipcov_scans_blocks_by_row_slices_with_the_bits_of_the_oracle(
        pool_run: tuple, monkeypatch: pytest.MonkeyPatch, opts: dict) -> None:
    """clipcov's pass 1 reads a block a slice of rows at a time and carries its sums across slices:
    slices of 48 rows (labels) and 20 rows (sums), which cut blocks of 256 rows unevenly, give the
    oracle's labels, pool means and k-means class captions, so its scores and picks (in float64, where
    the last bit of a mean shows)."""
    import curate.select.clipcov as cc
    import curate.select.partition as part

    run, centres = pool_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 256)
    monkeypatch.setattr(part, "ARGMAX_ROWS", 48)  # the oracle's labels take the same products
    monkeypatch.setattr(cc, "SUM_ROWS", 20)
    res = run_selection(run, "clipcov", fraction=0.3, options=opts, seed=2, name=f"rows-{len(opts)}",
                        class_text=centres)
    _compare(res.path, oracle_select(run, "clipcov", 510, seed=2, class_text=centres, **opts), run)


@pytest.mark.parametrize(("method", "opts"), [("random", {}), ("semdedup", {}), ("clipcov", {}),
                                              ("clipcov", {"variant": "greedy"})])
def test_tiny_memory_budget_spills_and_gives_the_same_bits(pool_run: tuple, monkeypatch: pytest.MonkeyPatch,
                                                           method: str, opts: dict) -> None:
    """A 1 MiB budget: picks spill to row-range files, every partition is a task of its own, the ranking
    merges its runs two at a time in several passes, the partition index is written a slice of
    partitions at a time; the tables are those of the default budget."""
    run, centres = pool_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 256)
    import curate.select.ranking as rk

    monkeypatch.setattr(rk, "SPILL_FACTOR", 1 << 8)  # ~50 entries per MiB: the picks spill
    monkeypatch.setattr(rk, "MERGE_ENTRY_BYTES", 1 << 12)  # fan-in 2: runs are merged in several passes
    import curate.select.partindex as pi

    monkeypatch.setattr(pi, "ENTRY_BYTES", 1 << 12)  # ~64 entries per slice: the index is written in slices
    kw = {"class_text": centres} if method == "clipcov" else {}
    a = run_selection(run, method, fraction=0.3, options=opts, seed=1, name=f"m-big-{method}{len(opts)}", **kw)
    b = run_selection(run, method, fraction=0.3, options=opts, seed=1, name=f"m-tiny-{method}{len(opts)}",
                      memory=1 << 20, **kw)
    ta, tb = (pq.read_table(r.path / "scores.parquet") for r in (a, b))
    assert ta.equals(tb)
    assert a.header["content_hash"] == b.header["content_hash"]


@pytest.mark.parametrize(("method", "opts"), [("clipcov", {}), ("clipcov", {"variant": "greedy"}), ("semdedup", {})])
def test_partition_larger_than_the_budget_streams_with_the_same_bits(
        tmp_path, monkeypatch: pytest.MonkeyPatch, method: str, opts: dict) -> None:
    """One class of 1,800 rows × 96 dims (1.3 MiB as float32 pairs) under a 1 MiB budget is read a block
    at a time from its float16 rows; captions come in tiles of 500 (patched down from 65,536 so that
    tiling runs here), and each block of 32 rows is summed 4 rows at a time. Held, lazy and the oracle
    agree bit for bit."""
    import curate.select.clipcov as cc

    monkeypatch.setattr(cc, "CROSS_TILE", 500)
    monkeypatch.setattr(cc, "BLOCK_ELEMENTS", 1 << 14)
    monkeypatch.setattr(cc, "SUM_ELEMENTS", 1 << 11)
    rng = np.random.default_rng(4)
    d = 96
    centres = normalise(rng.normal(size=(3, d)))
    lab = rng.choice(3, size=2000, p=[0.9, 0.06, 0.04])
    img = normalise(centres[lab] + 1.2 * rng.normal(size=(2000, d)) / np.sqrt(d) * 2)
    txt = normalise(centres[lab] + 1.2 * rng.normal(size=(2000, d)) / np.sqrt(d) * 2)
    run = write_run(tmp_path / "run", img, txt, n_shards=3)
    kw = {"class_text": centres} if method == "clipcov" else {}
    opts = {**opts, "clusters": 3} if method == "semdedup" else opts
    held = run_selection(run, method, fraction=0.3, options=opts, seed=1, name="held", **kw)
    lazy = run_selection(run, method, fraction=0.3, options=opts, seed=1, name="lazy", memory=1 << 20, **kw)
    th, tl = (pq.read_table(r.path / "scores.parquet") for r in (held, lazy))
    assert th.equals(tl)
    _compare(held.path, oracle_select(run, method, 600, seed=1, **kw, **opts), run)


def test_spilled_values_ignore_pieces_of_a_killed_attempt(tmp_path: Path) -> None:
    """A rerun's spill folder starts empty: pieces a killed attempt left there would double its rows."""
    from curate.select.ranking import RowValues

    def fill(values: RowValues) -> None:
        for lo in range(0, 100, 10):
            values.append(np.arange(lo, lo + 10), v=np.arange(lo, lo + 10) * 2)

    first = RowValues({"v": "i8"}, 100, 50, 15 * 3 * 16, tmp_path / "spill")  # 15 entries of 16 B
    fill(first)  # spills; then "killed": never closed
    assert any((tmp_path / "spill").iterdir())
    again = RowValues({"v": "i8"}, 100, 50, 15 * 3 * 16, tmp_path / "spill")
    fill(again)
    rows, cols = again.slice(0, 50)
    assert rows.tolist() == list(range(50)) and cols["v"].tolist() == [2 * r for r in range(50)]
    again.close()


def test_merge_reads_pick_sequences_a_window_at_a_time(tmp_path: Path) -> None:
    """The merge's window of a saved sequence holds ``size`` picks, and every window has the saved values,
    including after the sequence grew (a reload)."""
    from curate.select.pipeline import _save_npz, _SequenceWindow

    rng = np.random.default_rng(4)
    path = tmp_path / "p0000001.npz"
    rows, scores, flags = rng.permutation(1000)[:70], rng.normal(size=70), rng.random(70) < 0.2
    _save_npz(path, rows=rows[:40], scores=scores[:40], flags=flags[:40], done=np.asarray(False),
              **{"state:x": np.arange(5)})
    w = _SequenceWindow(path, 7)
    assert (w.n, w.done, len(w.rows)) == (40, False, 0)
    for i in (0, 7, 3, 35, 39):
        w.fill(i)
        assert len(w.rows) == min(7, 40 - i) and w.lo == i
        assert w.rows.tolist() == rows[i : i + 7][: len(w.rows)].tolist()
        m = len(w.rows)
        assert np.array_equal(w.scores, scores[i : i + m]) and np.array_equal(w.flags, flags[i : i + m])
    _save_npz(path, rows=rows, scores=scores, flags=flags, done=np.asarray(True))  # extended
    w.reload()
    w.fill(63)
    assert (w.n, w.done) == (70, True) and w.rows.tolist() == rows[63:].tolist()
