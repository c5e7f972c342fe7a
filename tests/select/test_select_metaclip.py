"""``--method metaclip``: matching, balancing and the pipeline against independent brute force.

Brute force here is written from MetaCLIP's description, not from curate's code: spacing by one
``str.replace`` per character as the reference does, ``" entry " in text`` for every entry, counts by a
loop, ``p_i = 1 - prod(1 - min(1, t / c_e))`` by a Python loop, and the draws from
``default_rng(seed).random(pool)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import read_scores, write_caption_run

from curate.cli.app import main
from curate.errors import InputError
from curate.select import run_selection
from curate.select import source as source_mod
from curate.select.metaclip import (
    EntryMatcher,
    MetaClipSelector,
    caps_needed,
    load_metadata,
    rarest_entries,
    row_probabilities,
)


def ref_spacing(text: str) -> str:
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        text = text.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        text = text.replace(c, " ")
    return f" {text} "


def brute_matches(entries: list[str], caption: str | None) -> list[int]:
    if caption is None:
        return []
    text = ref_spacing(caption)
    first = {}
    for i, e in enumerate(entries):
        first.setdefault(e, i)
    return sorted({first[e] for e in entries if f" {e} " in text})


def brute_probability(matched: list[int], counts: list[int], cap: float) -> float:
    q = 1.0
    for e in matched:
        c = max(counts[e], cap)
        q *= 1.0 - cap / c
    return 1.0 - q


ENTRIES = ["cat", "red cat", "dog", "New York", "e.g", "hot dog", "a", "cat"]


@pytest.mark.parametrize(("caption", "want"), [
    ("A red cat, a dog.", ["cat", "red cat", "dog", "a"]),   # punctuation is spaced; "A" is not "a"
    ("cats and dogs", []),                                   # whole words only
    ("New York hot dog!", ["dog", "New York", "hot dog"]),   # overlapping matches all count
    ("e.g. a cat", ["cat", "a"]),                            # an entry holding '.' can never match
    ("CAT", []),                                             # case matters
    ("cat\tdog\nred  cat", ["cat", "dog"]),                  # controls become spaces; double space kept
    ("", []),
])
def test_matcher_hand_made(caption: str, want: list[str]) -> None:
    m = EntryMatcher(ENTRIES)
    got = [ENTRIES[i] for i in m.match_one(caption)]
    assert sorted(got) == sorted(want)
    assert m.match_one(caption) == brute_matches(ENTRIES, caption)


def test_matcher_against_brute_force_on_random_captions() -> None:
    rng = np.random.default_rng(5)
    words = ["cat", "dog", "red", "blue", "big", "a", "the", "New", "York", "hot", "Cat", "x"]
    entries = ["cat", "dog", "red cat", "blue dog", "big red cat", "a", "New York", "hot dog", "the cat",
               "York", "x x", "Cat", "red", "dog dog"]
    seps = [" ", " ", " ", ", ", ". ", "  ", "!", "\t", "-", "?"]
    caps = []
    for _ in range(400):
        k = int(rng.integers(0, 9))
        caps.append("".join(str(rng.choice(words)) + str(rng.choice(seps)) for _ in range(k)).strip())
    caps += [None, "", "   "]
    off, ids = EntryMatcher(entries).match(caps)
    assert len(off) == len(caps) + 1
    for r, c in enumerate(caps):
        assert list(ids[off[r] : off[r + 1]]) == brute_matches(entries, c), c
    assert (np.diff(off) > 0).sum() > 250 and (np.diff(off) > 2).sum() > 50  # not vacuous


def test_balancing_on_hand_built_counts() -> None:
    counts = np.array([5, 50, 100, 0, 20])
    # rows: {0}, {1}, {1, 2}, {}, {4}, {0, 2}
    rows = [[0], [1], [1, 2], [], [4], [0, 2]]
    off = np.r_[0, np.cumsum([len(r) for r in rows])]
    ids = np.array([e for r in rows for e in r], np.int32)
    p = row_probabilities(off, ids, counts, 20.0)
    want = [1.0, 0.4, 1 - 0.6 * 0.8, np.nan, 1.0, 1.0]  # t / max(c, t): 1, .4, .2, -, 1 (c = t), -
    np.testing.assert_allclose(p, want, rtol=1e-15)
    assert np.isnan(p[3])
    for r, m in enumerate(rows):
        if m:
            assert p[r] == pytest.approx(brute_probability(m, counts.tolist(), 20.0), rel=1e-15)
    # the rarest matched entry (ties: the lower index), -1 without a match
    assert rarest_entries(off, ids, counts).tolist() == [0, 1, 1, -1, 4, 0]


def test_caps_needed_is_the_exact_smallest_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.select.metaclip as mc

    rng = np.random.default_rng(2)
    n = 500
    counts = rng.integers(1, 10_000, 300)
    lens = rng.integers(0, 6, n)
    ids = np.concatenate([np.sort(rng.choice(300, k, replace=False)) for k in lens]).astype(np.int32)
    off = np.r_[0, np.cumsum(lens)]
    u = rng.random(n)
    u[:3] = [0.0, 0.999999, 0.5]
    need = caps_needed(off, ids, counts, u)
    assert np.isnan(need[lens == 0]).all()
    has = lens > 0
    at = row_probabilities(off, ids, counts, need)
    below = row_probabilities(off, ids, counts, np.nextafter(need, 0))
    assert (u[has] < at[has]).all() and (u[has] >= below[has]).all()
    for cap in (1.0, 37.0, 500.0, 5000.0):  # the cap rule and the ranking agree exactly
        keep = u < np.nan_to_num(row_probabilities(off, ids, counts, cap), nan=0.0)
        np.testing.assert_array_equal(keep, has & (need <= cap))
    monkeypatch.setattr(mc, "NEWTON_STEPS", 0)  # no estimate: every row bisects from [0, max c_e]
    np.testing.assert_array_equal(caps_needed(off, ids, counts, u), need)


def test_metadata_files(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("cat\n\n  red cat \ne.g\ncat\n")
    md = load_metadata(tmp_path / "m.txt")
    assert md.entries == ["cat", "red cat", "e.g", "cat"] and md.duplicates == 1 and md.unmatchable == 1
    (tmp_path / "m.json").write_text(json.dumps(["cat", "dog"]))
    assert load_metadata(tmp_path / "m.json").entries == ["cat", "dog"]
    for name, text, msg in [("e.txt", "\n \n", "holds no entries"), ("b.json", "{", "not valid JSON"),
                            ("d.json", '{"a": 1}', "JSON list"), ("n.json", '["a", 3]', "item 1")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=msg):
            load_metadata(tmp_path / name)
    with pytest.raises(InputError, match="not found"):
        load_metadata(tmp_path / "nope.txt")


# --------------------------------------------------------------------------------------------------
# The pipeline against brute force
# --------------------------------------------------------------------------------------------------
VOCAB = ["cat", "dog", "bird", "red", "blue", "green", "big", "small", "a", "the", "on", "mat", "tree", "Cat",
         "house", "boat", "sea", "sky"]
META = ["cat", "dog", "bird", "red cat", "blue dog", "green", "big", "mat", "tree", "house", "boat", "sea sky",
        "unused entry", "on the mat", "small bird"]


def captions(n: int, seed: int = 0) -> list[str | None]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(VOCAB) + 1)
    out: list[str | None] = []
    for i in range(n):
        if i % 41 == 7:
            out.append(None)
            continue
        k = int(rng.integers(1, 7))
        words = rng.choice(VOCAB, k, p=p / p.sum())
        out.append(" ".join(words) + ("." if rng.random() < 0.3 else ""))
    out[3] = "nothing matches here"
    return out


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str | None]]:
    root = tmp_path_factory.mktemp("metaclip")
    caps = captions(600)
    run = write_caption_run(root, caps, n_shards=4)
    meta = root / "meta.txt"
    meta.write_text("\n".join(META) + "\n")
    return run, meta, caps


def brute(caps: list[str | None], cap: float | None, seed: int) -> dict[str, np.ndarray]:
    matched = [brute_matches(META, c) for c in caps]
    counts = [0] * len(META)
    for m in matched:
        for e in m:
            counts[e] += 1
    u = np.random.default_rng(seed).random(len(caps))
    p = np.array([brute_probability(m, counts, cap) if m else np.nan for m in matched]) if cap else None
    return {"matched": matched, "counts": np.array(counts), "u": u, "p": p}


@pytest.mark.parametrize("block_rows", [64, 1 << 16])
def test_cap_rule_matches_brute_force(caption_run: tuple, monkeypatch: pytest.MonkeyPatch, block_rows: int) -> None:
    run, meta, caps = caption_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", block_rows)  # 10 blocks: shards span blocks
    res = run_selection(run, "metaclip", options={"metadata": str(meta), "cap": 40}, seed=3, name=f"cap-{block_rows}")
    s = read_scores(res.path)
    b = brute(caps, 40, 3)
    nm = np.array([len(m) for m in b["matched"]])
    np.testing.assert_array_equal(s["matches"], nm)
    np.testing.assert_allclose(s["probability"], b["p"], rtol=1e-14)
    keep = np.array([u < p if m else False for u, p, m in zip(b["u"], b["p"], nm, strict=True)])
    np.testing.assert_array_equal(s["selected"], keep)
    reasons = np.where(keep, "kept", np.where(nm > 0, "not_sampled", "no_match"))
    reasons[[c is None for c in caps]] = "no_caption"
    np.testing.assert_array_equal(s["reason"], reasons)
    rare = [min(m, key=lambda e: (b["counts"][e], e)) if m else -1 for m in b["matched"]]
    np.testing.assert_array_equal(s["partition"], rare)
    assert res.kept == keep.sum() and 0 < keep.sum() < (nm > 0).sum()
    assert res.info["entries_matched"] == (b["counts"] > 0).sum() >= 10
    assert res.info["entries_over_cap"] == (b["counts"] > 40).sum() > 2
    np.testing.assert_array_equal(s["score"], -np.log10(s["cap_needed"]))
    assert (s["cap_needed"][keep] <= 40).all() and (s["cap_needed"][~keep & (nm > 0)] > 40).all()


def test_budget_is_the_cap_that_keeps_that_many(caption_run: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    run, meta, _ = caption_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 64)
    res = run_selection(run, "metaclip", count=150, options={"metadata": str(meta)}, seed=3, name="n150")
    s = read_scores(res.path)
    need = s["cap_needed"]
    order = np.lexsort((np.arange(len(need)), need))[:150]  # smallest cap needed first, ties: lower row
    want = np.zeros(len(need), bool)
    want[order] = True
    np.testing.assert_array_equal(s["selected"], want)
    np.testing.assert_array_equal(np.flatnonzero(s["rank"] >= 0)[np.argsort(s["rank"][s["rank"] >= 0])], order)
    assert np.isnan(s["probability"]).all()
    t = res.info["effective_cap"]
    assert t == need[order[-1]]
    # the cap rule at that cap keeps the same samples
    at = run_selection(run, "metaclip", options={"metadata": str(meta), "cap": t}, seed=3, name="at-cap")
    np.testing.assert_array_equal(read_scores(at.path)["selected"], want)
    assert set(s["reason"][~want]) == {"budget", "no_match", "no_caption"}


def test_same_bits_twice_with_workers_and_after_a_failure(caption_run: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    run, meta, _ = caption_run
    monkeypatch.setattr(source_mod, "BLOCK_ROWS", 64)
    opts = {"metadata": str(meta), "cap": 25}

    def outputs(name: str) -> tuple[bytes, object, str]:  # the manifest's header names the selection
        d = run / "selections" / name
        man = pq.read_table(d / "manifest.parquet")
        return ((d / "scores.parquet").read_bytes(), man.replace_schema_metadata(None),
                json.loads((d / "manifest.json").read_text())["content_hash"])

    run_selection(run, "metaclip", options=opts, seed=1, name="a")
    run_selection(run, "metaclip", options=opts, seed=1, name="a", force=True)
    first = outputs("a")
    run_selection(run, "metaclip", options=opts, seed=1, name="b", engine="local", engine_options={"workers": 2})
    assert outputs("b") == first
    # a failure in the rescan of block 5, then a rerun: the finished blocks are reused, same bytes
    real = MetaClipSelector.rescan
    def failing(self, block, start, shared):
        if start == 5 * 64:
            raise RuntimeError("boom")
        return real(self, block, start, shared)

    monkeypatch.setattr(MetaClipSelector, "rescan", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_selection(run, "metaclip", options=opts, seed=1, name="c")
    assert (run / "selections" / ".work-c").is_dir()
    monkeypatch.setattr(MetaClipSelector, "rescan", real)
    called: list[int] = []
    monkeypatch.setattr(MetaClipSelector, "rescan",
                        lambda self, block, start, shared: called.append(start) or real(self, block, start, shared))
    run_selection(run, "metaclip", options=opts, seed=1, name="c")
    assert min(called) == 5 * 64 and len(called) == 10 - 5  # blocks 0-4 were rescanned before the failure
    assert outputs("c") == first
    assert not (run / "selections" / ".work-c").exists()
    other = run_selection(run, "metaclip", options=opts, seed=2, name="d")
    assert other.header["content_hash"] != json.loads((run / "selections" / "a" / "manifest.json").read_text()
                                                      )["content_hash"]


def test_metadata_content_is_part_of_the_selection(caption_run: tuple, tmp_path: Path) -> None:
    run, meta, _ = caption_run
    m2 = tmp_path / "meta.txt"
    m2.write_text(meta.read_text())
    a = run_selection(run, "metaclip", options={"metadata": str(m2), "cap": 30}, name="m")
    assert a.header["params"]["metadata_sha256"] == load_metadata(m2).sha256
    m2.write_text(meta.read_text() + "sky\n")
    with pytest.raises(Exception, match="exists with other parameters"):
        run_selection(run, "metaclip", options={"metadata": str(m2), "cap": 30}, name="m")


# --------------------------------------------------------------------------------------------------
# From real `curate embed` output, and bad input
# --------------------------------------------------------------------------------------------------
def test_after_curate_embed_and_a_changed_shard(tmp_path: Path, make_shards, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    from curate.embed import EmbedConfig, run_embed

    shards = make_shards(2, 6)  # captions "a photo of something COLOUR number I"
    run = tmp_path / "run"
    run_embed(EmbedConfig(shards=shards, run=str(run), model="sample", device="cpu", workers=0, batch_size=8))
    meta = tmp_path / "colours.txt"
    meta.write_text("red\ngreen\nblue\nyellow\n")
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = read_scores(run / "selections" / "metaclip-cap1")
    assert out["pruned_by_reason"]["no_match"] == 4  # purple, orange, white, black
    assert (s["matches"] == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]).all()
    # each colour matched 2 captions: a cap of 1 keeps each with probability 1/2
    np.testing.assert_array_equal(s["probability"][s["matches"] > 0], 0.5)
    t = pq.read_table(run / "embeddings" / "00001.parquet")
    assert t.num_rows == 6
    # the shard changes after embed: refused with one line
    st = os.stat(shards[1])
    os.utime(shards[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "1",
                 "--force"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard 00001 changed since it was embedded" in err[0]
    os.remove(shards[1])
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "1",
                 "--force"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard 00001 is gone" in err[0]


@pytest.mark.parametrize(("extra", "code", "msg"), [
    ([], 2, "needs exactly one of --fraction, --count or --cap"),
    (["--cap", "10", "--fraction", "0.3"], 2, "needs exactly one of --fraction, --count or --cap"),
    (["--cap", "0"], 2, "--cap must be a positive number"),
    (["--cap", "10", "--metadata", None], 2, "needs --metadata FILE"),
    (["--cap", "10", "--metadata", "/nope/meta.txt"], 3, "metadata file not found"),
    (["--cap", "10", "--metadata", "EMPTY"], 3, "holds no entries"),
    (["--method", "random", "--count", "5", "--cap", "3"], 2, "--cap does not apply to --method random"),
])
def test_bad_options_one_line(caption_run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              extra: list, code: int, msg: str) -> None:
    run, meta, _ = caption_run
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = ["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--name", "bad"]
    if "--metadata" in extra:
        i = extra.index("--metadata")
        value = extra[i + 1]
        args = args[: args.index("--metadata")] + args[args.index("--metadata") + 2 :]
        extra = extra[:i] + ([] if value is None else ["--metadata", str(empty) if value == "EMPTY" else value])
    if "--method" in extra:
        args = args[: args.index("--method")] + args[args.index("--method") + 2 :]
        args = [a for a in args if a not in ("--metadata", str(meta))]
    assert main([*args, *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (run / "selections" / "bad").exists()


def test_bad_shards_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = tmp_path / "m.txt"
    meta.write_text("cat\n")
    # no captions at all (image-only shards)
    run = write_caption_run(tmp_path / "a", [None] * 10)
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "5"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sample of the pool has a caption" in err[0]
    # captions, none matching
    run = write_caption_run(tmp_path / "b", ["dog"] * 10)
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "5"]) == 3
    assert "no caption matches any of the 1 metadata entries" in capsys.readouterr().err
    # a shard rewritten with other keys, no fingerprint to tell: the key check refuses it
    run = write_caption_run(tmp_path / "c", ["cat"] * 10)
    from curate.io.tarwrite import write_tar

    shard = tmp_path / "c" / "shards" / "00001.tar"
    write_tar(shard, [(f"x{i}", {"jpg": b"123", "txt": b"cat"}) for i in range(5)])
    for f in (run / "embeddings").glob("*.parquet"):  # forget the recorded fingerprints
        t = pq.read_table(f)
        pq.write_table(t.replace_schema_metadata(None), f)
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "5"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "position 0 holds sample 'x0', not '000000005'" in err[0]
    # a shard with fewer samples than were embedded
    write_tar(shard, [(f"{i:09d}", {"jpg": b"123", "txt": b"cat"}) for i in range(5, 8)])
    assert main(["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "5"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no longer holds sample '000000008'" in err[0]


def test_report_names_partitions_by_metadata_entry(caption_run: tuple, tmp_path: Path) -> None:
    from curate.report.data import Selection

    run, meta, _ = caption_run
    res = run_selection(run, "metaclip", options={"metadata": str(meta), "cap": 30}, name="r")
    sel = Selection("r", res.header, pq.read_table(res.path / "scores.parquet"))
    assert sel.partition_names(4) == META[:4]
    moved = dict(res.header, params={**res.header["params"], "metadata": str(tmp_path / "gone.txt")})
    assert Selection("r", moved, sel.table).partition_names(2) == ["entry 0", "entry 1"]


def test_tables_without_a_fingerprint_use_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tables from before fingerprints were stored with them: run.json's shard record is checked."""
    from curate.io.shards import fingerprint
    from curate.rundir import RunDir

    meta = tmp_path / "m.txt"
    meta.write_text("cat\n")
    run = write_caption_run(tmp_path / "a", ["cat"] * 10)
    for f in (run / "embeddings").glob("*.parquet"):
        pq.write_table(pq.read_table(f).replace_schema_metadata(None), f)
    rd = RunDir(run)
    shards = [{**fingerprint(s["url"]), "name": s["name"]} for s in rd.load()["embed"]["shards"]]
    rd.update("embed", {"model": "test", "shards": shards}, command="test")
    args = ["select", "--run", str(run), "--method", "metaclip", "--metadata", str(meta), "--cap", "5"]
    assert main(args) == 0
    capsys.readouterr()
    shard = shards[0]["url"]
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main([*args, "--force"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard 00000 changed since it was embedded" in err[0]
