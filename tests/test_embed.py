"""The embed stage as a library: outputs, provenance, stats, resume, uids, image-only shards, changed inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate.embed import EmbedConfig, run_embed
from curate.embed.state import run_lock
from curate.errors import StrictModeError, UsageError
from curate.inspect import inspect_run
from curate.io.shards import decode_image, iter_shard, make_uid
from curate.io.tables import table_metadata
from curate.io.tarwrite import write_tar
from curate.models import load_model
from curate.rundir import RunDir
from tests.conftest import jpeg_bytes
from tests.embed_helpers import (
    TINY_ARCH,
    defect_shard,
    image_only_shard,
    matrix,
    run_tables,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=0))


def embed(shards, run, ckpt, **kw) -> object:
    kw = {"model": TINY_ARCH, "pretrained": ckpt, "device": "cpu", "batch_size": 4, "workers": 0, **kw}
    return run_embed(EmbedConfig(shards=shards, run=str(run), **kw))


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.total = 0

    def start(self, task, total=None, unit="samples"):
        self.events.append(("start", unit))

    def advance(self, n=1):
        self.total += n

    def finish(self):
        self.events.append(("finish", None))


def test_tables_stats_and_provenance(tmp_path, make_shards, ckpt):
    shards = make_shards(2, 5)
    expected = defect_shard(tmp_path / "shards" / "00002.tar")
    progress = Recorder()
    res = run_embed(EmbedConfig(shards=str(tmp_path / "shards"), run=str(tmp_path / "run"), model=TINY_ARCH,
                                pretrained=ckpt, device="cpu", batch_size=4, workers=2), progress)
    assert (res.shards_total, res.shards_done, res.samples_written) == (3, 3, 16)
    assert progress.total == 16 and progress.events == [("start", "img"), ("finish", None)]

    run = RunDir(tmp_path / "run")
    t = pq.read_table(run.embedding_file("00002"))
    assert t.schema.field("image_emb").type == pa.list_(pa.float16(), 16)
    assert t.schema.field("text_emb").type == pa.list_(pa.float16(), 16)
    assert t.schema.field("clip_score").type == pa.float32()
    assert t.column("key").to_pylist() == ["g0", "g1", "g2", "g3", "g4", "g5"]  # tar order, defects dropped
    assert t.column("position").to_pylist() == [0, 1, 2, 7, 8, 9]
    img, txt = matrix(t.column("image_emb").to_pylist()), matrix(t.column("text_emb").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(t.column("clip_score").to_numpy(), (img * txt).sum(1), atol=2e-3)

    meta = table_metadata(run.embedding_file("00002"))
    assert meta["model"] == TINY_ARCH and meta["dim"] == 16 and meta["normalized"] is True
    assert meta["pretrained_sha256"] and meta["precision"] == "fp32" and meta["device_type"] == "cpu"
    assert meta["source"]["size"] == os.path.getsize(tmp_path / "shards" / "00002.tar")
    assert meta["stats"] == expected

    rec = run.load()["embed"]
    assert rec["model"] == TINY_ARCH and rec["pretrained_arg"] == ckpt and rec["dim"] == 16
    st = os.stat(shards[0])
    assert rec["shards"][0] == {"name": "00000", "url": shards[0], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert "torch" in run.load()["versions"]

    totals = json.loads(run.stats_file("embed").read_text())["totals"]
    assert totals == {"seen": 20, "written": 16, "shards": 3,
                      **{k: v for k, v in expected.items() if k.startswith("dropped_")}}
    assert json.loads(run.shard_stats_file("embed", "00002").read_text()) == expected


def test_embeddings_equal_open_clip_on_the_same_pixels(tmp_path, make_shards, ckpt):
    (shard,) = make_shards(1, 6, size=48)
    embed(shard, tmp_path / "run", ckpt, draft=False)
    t = pq.read_table(tmp_path / "run" / "embeddings" / "00000.parquet")
    loaded = load_model(TINY_ARCH, ckpt, device="cpu")
    samples = list(iter_shard(shard))
    images = torch.stack([loaded.preprocess(decode_image(s.image_bytes)) for s in samples])
    ref_img = loaded.encode_images(images).numpy()
    ref_txt = loaded.encode_texts([s.caption for s in samples]).numpy()
    np.testing.assert_allclose(matrix(t.column("image_emb").to_pylist()), ref_img, atol=1e-3)
    np.testing.assert_allclose(matrix(t.column("text_emb").to_pylist()), ref_txt, atol=1e-3)
    np.testing.assert_allclose(t.column("clip_score").to_numpy(), (ref_img * ref_txt).sum(1), atol=1e-5)


def test_worker_count_does_not_change_tables(tmp_path, make_shards, ckpt):
    shards = make_shards(3, 7)
    embed(shards, tmp_path / "w0", ckpt, workers=0)
    embed(shards, tmp_path / "w2", ckpt, workers=2)
    a, b = run_tables(tmp_path / "w0"), run_tables(tmp_path / "w2")
    assert list(a) == ["00000", "00001", "00002"]
    assert a == b


@pytest.mark.parametrize(
    ("threads", "wait_policy", "want"),
    [(None, "PASSIVE", 4), (None, "", 3), (1, "PASSIVE", 1), (2, "", 2)],
)
def test_cpu_model_threads(tmp_path, make_shards, ckpt, monkeypatch, threads, wait_policy, want):
    """--threads wins; else every core with passive OpenMP waits, else the cores the decode worker leaves."""
    import curate.embed.runner as runner

    seen: list[int] = []
    forward = runner._forward

    def spy(*args, **kw):
        seen.append(torch.get_num_threads())
        return forward(*args, **kw)

    monkeypatch.setattr(runner, "_forward", spy)
    monkeypatch.setattr(runner, "_cores", lambda: 4)
    monkeypatch.setenv("OMP_WAIT_POLICY", wait_policy)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        embed(make_shards(2, 5), tmp_path / "run", ckpt, workers=1, threads=threads)
        assert seen and set(seen) == {want}
        assert torch.get_num_threads() == 4  # restored after the run
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("workers", "device_type", "share", "want"),
    [(None, "cpu", 16, 2), (None, "cuda", 16, 15), (None, "cuda", 2, 2), (None, "cuda", 128, 32),
     (0, "cuda", 16, 0), (5, "cpu", 16, 5)],
)
def test_decode_workers_default(workers, device_type, share, want):
    """--workers wins; a GPU model gets the process's cores but one for decoding, a CPU model 2."""
    from curate.embed.runner import decode_workers

    assert decode_workers(workers, device_type, share) == want


def test_default_workers_embed_like_explicit(tmp_path, make_shards, ckpt):
    shards = make_shards(3, 4)
    embed(shards, tmp_path / "auto", ckpt, workers=None)
    embed(shards, tmp_path / "w0", ckpt, workers=0)
    assert run_tables(tmp_path / "auto") == run_tables(tmp_path / "w0")


def test_rerun_skips_finished_shards(tmp_path, make_shards, ckpt):
    shards = make_shards(3, 4)
    first = embed(shards[:2], tmp_path / "run", ckpt)
    assert (first.shards_done, first.shards_skipped) == (2, 0)
    files = sorted((tmp_path / "run" / "embeddings").glob("*.parquet"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    again = embed(shards, tmp_path / "run", ckpt)
    assert (again.shards_done, again.shards_skipped, again.samples_written) == (1, 2, 4)
    assert {p.name: p.stat().st_mtime_ns for p in files} == before
    assert [s["name"] for s in RunDir(tmp_path / "run").load()["embed"]["shards"]] == ["00000", "00001", "00002"]
    assert again.stats["written"] == 12 and again.stats["shards"] == 3
    # a later call with only some of the shards keeps the others in the run record
    embed(shards[:1], tmp_path / "run", ckpt)
    assert len(RunDir(tmp_path / "run").load()["embed"]["shards"]) == 3


def test_uids_from_json_else_shard_and_key(tmp_path, ckpt):
    uid = "0123456789abcdef0123456789ABCDEF"
    samples = [
        ("a", {"jpg": jpeg_bytes("red"), "txt": b"red", "json": json.dumps({"uid": uid}).encode()}),
        ("b", {"jpg": jpeg_bytes("blue"), "txt": b"blue", "json": b'{"uid": "not-hex"}'}),
        ("c", {"jpg": jpeg_bytes("green"), "txt": b"green"}),
    ]
    for folder in ("x", "y"):
        write_tar(tmp_path / folder / "part-7.tar", samples)
    embed(str(tmp_path / "x"), tmp_path / "r1", ckpt)
    embed(str(tmp_path / "y" / "part-7.tar"), tmp_path / "r2", ckpt, workers=1)
    u1 = run_tables(tmp_path / "r1")["part-7"]["uid"]
    assert u1 == [uid.lower(), make_uid("part-7", "b"), make_uid("part-7", "c")]
    assert run_tables(tmp_path / "r2")["part-7"]["uid"] == u1  # same shard basename and keys: same uids
    write_tar(tmp_path / "z" / "part-8.tar", samples)
    embed(str(tmp_path / "z"), tmp_path / "r3", ckpt)
    u3 = run_tables(tmp_path / "r3")["part-8"]["uid"]
    assert u3[0] == u1[0] and u3[1:] != u1[1:]  # without a json uid the shard name is part of the identity


def test_image_only_shards(tmp_path, make_shards, ckpt):
    image_only_shard(tmp_path / "moco" / "00000.tar", n=6)
    res = embed(str(tmp_path / "moco"), tmp_path / "run", ckpt)
    t = run_tables(tmp_path / "run")["00000"]
    assert res.samples_written == 6
    assert t["text_emb"] == [None] * 6 and t["clip_score"] == [None] * 6
    assert all(len(v) == 16 for v in t["image_emb"])
    info = inspect_run(tmp_path / "run")
    assert info["samples"]["with_text"] == 0 and info["clip_score"]["mean"] is None

    shards = make_shards(1, 4)  # captioned shard, captions ignored on request
    embed(shards, tmp_path / "ign", ckpt, captions="ignore")
    assert run_tables(tmp_path / "ign")["00000"]["clip_score"] == [None] * 4
    res = embed(str(tmp_path / "moco"), tmp_path / "req", ckpt, captions="required")
    assert res.samples_written == 0 and res.stats["dropped_missing_caption"] == 6


def test_a_run_holds_one_model(tmp_path, make_shards, ckpt):
    shards = make_shards(2, 3)
    embed(shards[:1], tmp_path / "run", ckpt)
    other = str(save_tiny_checkpoint(tmp_path / "other.safetensors", seed=1))
    with pytest.raises(UsageError, match="was embedded with model"):
        embed(shards, tmp_path / "run", other)
    assert not (tmp_path / "run" / "embeddings" / "00001.parquet").exists()


def test_strict_mode_error_reaches_the_caller_intact(tmp_path, ckpt):
    defect_shard(tmp_path / "s" / "00000.tar")
    with pytest.raises(StrictModeError, match=r"00000: sample 'bad\d': \w+ \[--strict\]") as ei:
        embed(str(tmp_path / "s"), tmp_path / "run", ckpt, strict=True, workers=1)
    assert "\n" not in str(ei.value) and "Traceback" not in str(ei.value)
    assert not list((tmp_path / "run" / "embeddings").glob("*.parquet"))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"workers": -1}, "--workers must be >= 0"),
        ({"precision": "fp8"}, "--precision must be one of"),
        ({"captions": "maybe"}, "--captions must be one of"),
        ({"pretrained": None}, "needs --pretrained"),
        ({"device": "tpu"}, "unsupported device|unknown device"),
    ],
)
def test_bad_options(tmp_path, make_shards, ckpt, kw, match):
    with pytest.raises(UsageError, match=match):
        embed(make_shards(1, 2), tmp_path / "run", ckpt, **kw)
    assert not (tmp_path / "run").exists()


def test_one_writer_per_run(tmp_path, make_shards, ckpt):
    shards = make_shards(1, 2)
    run = RunDir(tmp_path / "run")
    with run_lock(run, "embed"), pytest.raises(UsageError, match="another 'curate embed' is writing"):
        embed(shards, run.root, ckpt)
    assert embed(shards, run.root, ckpt).shards_done == 1  # the lock is gone with its holder


def test_temp_files_of_a_killed_writer_are_removed(tmp_path, make_shards, ckpt):
    shards = make_shards(1, 2)
    dead = 999_999_999  # no such pid: temporary names carry their writer's pid (curate.fs.atomic_path)
    stale = [tmp_path / "run" / "embeddings" / f".00000.parquet.{dead}-abc123.tmp",
             tmp_path / "run" / "stats" / "embed" / f".00000.json.{dead}-abc123.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    embed(shards, tmp_path / "run", ckpt)
    assert not any(p.exists() for p in stale)
    assert [p.name for p in (tmp_path / "run" / "embeddings").iterdir()] == ["00000.parquet"]


def _rewrite(path: Path, colors: list[str]) -> None:
    """Replace a shard with other content and make sure its mtime moves on."""
    old = path.stat().st_mtime_ns
    write_tar(path, [(f"n{i}", {"jpg": jpeg_bytes(c), "txt": f"a {c} thing".encode()}) for i, c in enumerate(colors)])
    os.utime(path, ns=(old + 10**9, old + 10**9))


def test_changed_shards_are_reported_and_refreshed(tmp_path, make_shards, ckpt):
    shards = make_shards(3, 4)
    embed(shards, tmp_path / "run", ckpt)
    run = RunDir(tmp_path / "run")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.embeddings_dir.glob("*.parquet")}
    _rewrite(Path(shards[1]), ["white", "black", "red"])

    res = embed(shards, run.root, ckpt)  # detected and reported, nothing re-embedded
    assert (res.changed, res.refreshed, res.shards_done) == (["00001"], [], 0)
    assert inspect_run(run.root)["shards"]["changed"] == ["00001"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.embeddings_dir.glob("*.parquet")} == before

    res = embed(shards, run.root, ckpt, refresh=True)
    assert (res.changed, res.refreshed, res.shards_done, res.samples_written) == ([], ["00001"], 1, 3)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.embeddings_dir.glob("*.parquet")}
    assert after["00000.parquet"] == before["00000.parquet"] and after["00002.parquet"] == before["00002.parquet"]
    assert after["00001.parquet"] != before["00001.parquet"]
    # the refreshed table equals a fresh embedding of the new shard, and its stats follow it
    shutil.copy(shards[1], tmp_path / "00001.tar")
    embed(str(tmp_path / "00001.tar"), tmp_path / "fresh", ckpt)
    assert run_tables(run.root)["00001"] == run_tables(tmp_path / "fresh")["00001"]
    assert res.stats["written"] == 4 + 3 + 4 and res.stats["seen"] == 11
    info = inspect_run(run.root)
    assert info["shards"]["changed"] == [] and info["samples"]["embedded"] == 11
    assert embed(shards, run.root, ckpt, refresh=True).shards_done == 0  # nothing left to refresh


def test_missing_input_is_reported(tmp_path, make_shards, ckpt):
    shards = make_shards(2, 3)
    embed(shards, tmp_path / "run", ckpt)
    os.remove(shards[0])
    res = embed(shards[1], tmp_path / "run", ckpt)
    assert res.missing == ["00000"] and res.changed == []
    info = inspect_run(tmp_path / "run")
    assert info["shards"]["missing"] == ["00000"] and info["shards"]["embedded"] == 2


@pytest.mark.gpu
def test_cuda_fp16_and_bf16_tables_match_cpu(tmp_path, make_shards, ckpt):
    shards = make_shards(2, 9)
    embed(shards, tmp_path / "cpu", ckpt)
    ref = run_tables(tmp_path / "cpu")
    for precision in ("fp16", "bf16"):
        embed(shards, tmp_path / precision, ckpt, device="cuda", precision=precision, workers=2)
        got = run_tables(tmp_path / precision)
        assert table_metadata(tmp_path / precision / "embeddings" / "00000.parquet")["precision"] == precision
        for name, t in ref.items():
            assert got[name]["uid"] == t["uid"]
            cos = (matrix(got[name]["image_emb"]) * matrix(t["image_emb"])).sum(1)
            assert cos.min() > 0.99, (precision, cos.min())


def test_unreadable_shard_is_not_marked_done(tmp_path, make_shards, ckpt):
    import fsspec

    url = "memory://embed-test/late.tar"
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url)
    res = embed(url, tmp_path / "run", ckpt)
    assert res.failed == ["late"] and res.samples_written == 0
    assert not (tmp_path / "run" / "embeddings" / "late.parquet").exists()
    info = inspect_run(tmp_path / "run")
    assert info["shards"]["pending"] == ["late"] and info["shard_problems"] == {"unreadable_shard": 1}
    with fsspec.open(url, "wb") as fh:  # readable again
        fh.write(Path(make_shards(1, 3)[0]).read_bytes())
    try:
        res = embed(url, tmp_path / "run", ckpt)
    finally:
        fs.rm(url)
    assert res.failed == [] and res.samples_written == 3
    assert inspect_run(tmp_path / "run")["shard_problems"] == {}


# --- the fast image path ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "interpolation", "resize_mode"),
    [(64, "bicubic", "shortest"), (224, "bicubic", "shortest"), (96, "bilinear", "squash"), (33, "bilinear",
                                                                                               "shortest")],
)
def test_fast_transform_equals_open_clip_bit_for_bit(size, interpolation, resize_mode):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from curate.embed.preprocess import fast_transform, normalize_pixels

    cfg = PreprocessCfg(size=size, interpolation=interpolation, resize_mode=resize_mode, mean=(0.5, 0.4, 0.3),
                        std=(0.2, 0.25, 0.3))
    reference = image_transform_v2(cfg, is_train=False)
    info = {"image_size": [size, size], "interpolation": interpolation, "resize_mode": resize_mode,
            "mean": list(cfg.mean), "std": list(cfg.std)}
    fast = fast_transform(reference, info)
    assert fast is not None
    rng = np.random.default_rng(size)
    for w, h in [(50, 71), (400, 300), (size, size), (1000, 90)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got = normalize_pixels(fast(img)[None], torch.tensor(info["mean"]), torch.tensor(info["std"]))[0]
        assert torch.equal(got, reference(img)), (w, h)


def test_fast_transform_declines_what_it_cannot_reproduce():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from curate.embed.preprocess import fast_transform

    base = {"image_size": [64, 64], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    longest = image_transform_v2(PreprocessCfg(size=64, resize_mode="longest"), is_train=False)
    assert fast_transform(longest, {**base, "resize_mode": "longest"}) is None
    # a transform that claims 'shortest' but does something else (here: another mean) is caught by the probes
    other = image_transform_v2(PreprocessCfg(size=64, mean=(0.1, 0.2, 0.3)), is_train=False)
    assert fast_transform(other, {**base, "resize_mode": "shortest"}) is None
    assert fast_transform(other, {**base, "image_size": [64, 48], "resize_mode": "shortest"}) is None


def test_fast_path_tables_equal_the_open_clip_path(tmp_path, make_shards, ckpt):
    shards = make_shards(2, 5, size=57)
    embed(shards, tmp_path / "fast", ckpt, draft=False)
    embed(shards, tmp_path / "slow", ckpt, draft=False, fast_preprocess=False)
    assert table_metadata(tmp_path / "fast" / "embeddings" / "00000.parquet")["preprocess"] == "curate-fast"
    assert table_metadata(tmp_path / "slow" / "embeddings" / "00000.parquet")["preprocess"] == "open_clip"
    assert run_tables(tmp_path / "fast") == run_tables(tmp_path / "slow")


def test_draft_decoding_agrees_with_open_clip_on_large_images(tmp_path):
    """The sample model on 256 px JPEGs: fast path with reduced-scale decoding vs open_clip's own transform."""
    from curate.world import make_sample

    make_sample(tmp_path / "w", seed=3, n_train=48, n_test=1, shard_size=24, image_size=256)
    shards = str(tmp_path / "w" / "train")
    embed(shards, tmp_path / "fast", None, model="sample", pretrained=None, batch_size=16)
    embed(shards, tmp_path / "ref", None, model="sample", pretrained=None, batch_size=16, draft=False,
          fast_preprocess=False)
    fast, ref = run_tables(tmp_path / "fast"), run_tables(tmp_path / "ref")
    assert table_metadata(tmp_path / "fast" / "embeddings" / "00000.parquet")["draft_decode"] is True
    cos = np.concatenate([(matrix(fast[s]["image_emb"]) * matrix(ref[s]["image_emb"])).sum(1) for s in ref])
    assert len(cos) == 48 and cos.mean() >= 0.99 and cos.min() > 0.95, (cos.mean(), cos.min())
    assert any(not np.array_equal(matrix(fast[s]["image_emb"]), matrix(ref[s]["image_emb"])) for s in ref)
    assert all(fast[s]["text_emb"] == ref[s]["text_emb"] for s in ref)


def test_uint8_batches_normalised_on_the_device_equal_worker_normalised(make_shards, ckpt):
    """The CUDA path (uint8 pixels, normalised by the model's process) computes what the CPU path does."""
    from curate.embed.batches import ShardBatches
    from curate.embed.preprocess import fast_transform
    from curate.embed.runner import _forward
    from curate.io.shards import ErrorPolicy

    (shard,) = make_shards(1, 6, size=40)
    m = load_model(TINY_ARCH, ckpt, device="cpu")
    fast = fast_transform(m.preprocess, m.info)
    stats = (m.info["mean"], m.info["std"])
    args = ([shard], fast, m.tokenizer, 6, ErrorPolicy(), "auto", None, 16)
    (raw, _) = list(ShardBatches(*args, pixels="uint8").iter_shard_batches(shard))
    (done, _) = list(ShardBatches(*args, pixels="uint8", normalize=stats).iter_shard_batches(shard))
    assert raw["pixels"] == "uint8" and raw["images"].dtype == torch.uint8 and raw["images"].shape == (6, 32, 32, 3)
    assert done["pixels"] == "float" and done["images"].shape == (6, 3, 32, 32)
    a = _forward(m, raw, (torch.tensor(stats[0]), torch.tensor(stats[1])))
    b = _forward(m, done, None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
