"""The trainer kit: ManifestFilter, shard_urls, clip_loss_per_sample, LossRecorder."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import webdataset as wds

from curate.bootstrap.data import read_losses
from curate.errors import InputError, StrictModeError
from curate.io.manifest import build_manifest, write_manifest
from curate.io.shards import shard_name
from curate.rundir import RunDir
from curate.trainer import LossRecorder, ManifestFilter, TarSamples, clip_loss_per_sample, shard_urls


def _raw_samples(paths: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(paths), wds.tarfile_to_samples()))


def _subset_manifest(paths: list[str], keep_every: int = 3, seed: int = 0):
    """A manifest keeping a random third of the samples, with made-up uids and weights."""
    rows = []
    for s in _raw_samples(paths):
        rows.append((shard_name(s["__url__"]), s["__key__"]))
    rng = np.random.default_rng(seed)
    keep = rng.random(len(rows)) < 1 / keep_every
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    table = pa.table({
        "uid": [f"u-{sh}-{k}" for sh, k in kept],
        "shard": [sh for sh, _ in kept],
        "key": [k for _, k in kept],
        "position": pa.array(np.arange(len(kept)), pa.int32()),
        "weight": pa.array(rng.uniform(0.5, 2.0, len(kept)), pa.float32()),
    })
    return build_manifest(table, kind="test", command="test"), rows


def test_manifest_filter_equals_brute_force(make_shards: Callable[..., list[str]], tmp_path: Path) -> None:
    paths = make_shards(n_shards=3, per_shard=12)
    manifest, _ = _subset_manifest(paths)
    mpath = write_manifest(tmp_path / "m.parquet", manifest)
    want = {
        (sh, k): (u, w)
        for u, sh, k, w in zip(*(manifest.table[c].to_pylist() for c in ("uid", "shard", "key", "weight")),
                               strict=True)
    }
    brute = [s for s in _raw_samples(paths) if (shard_name(s["__url__"]), s["__key__"]) in want]
    for filt in (ManifestFilter(mpath), ManifestFilter(manifest), pickle.loads(pickle.dumps(ManifestFilter(mpath)))):
        got = list(wds.DataPipeline(wds.SimpleShardList(paths), wds.tarfile_to_samples(), filt))
        assert [(shard_name(s["__url__"]), s["__key__"]) for s in got] == [
            (shard_name(s["__url__"]), s["__key__"]) for s in brute]
        for s in got:
            uid, w = want[(shard_name(s["__url__"]), s["__key__"])]
            assert s["__uid__"] == uid and s["__weight__"] == pytest.approx(w)
            assert isinstance(s["jpg"], bytes)  # filtered before decoding
        assert filt.seen == 36 and filt.kept == len(want)
    # the index is built once next to the manifest (hidden), and fluent .compose + decode work
    assert len(list(tmp_path.glob(".m.filter-*.arrow"))) == 1
    ds = wds.WebDataset(paths, shardshuffle=False).compose(ManifestFilter(mpath)).decode("pil").to_tuple(
        "jpg", "txt", "__uid__", "__weight__")
    out = list(ds)
    assert len(out) == len(want) and {u for _, _, u, _ in out} == {u for u, _ in want.values()}


def test_manifest_filter_in_dataloader_workers(make_shards: Callable[..., list[str]], tmp_path: Path) -> None:
    paths = make_shards(n_shards=2, per_shard=8)
    manifest, _ = _subset_manifest(paths, keep_every=2)
    mpath = write_manifest(tmp_path / "m.parquet", manifest)
    pipe = wds.DataPipeline(wds.SimpleShardList(paths), wds.split_by_worker, wds.tarfile_to_samples(),
                            ManifestFilter(mpath), wds.to_tuple("__uid__"))
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    assert sorted(u for (u,) in loader) == sorted(manifest.table["uid"].to_pylist())


def test_tar_samples_equal_webdataset_and_feed_the_filter(make_shards: Callable[..., list[str]],
                                                           tmp_path: Path) -> None:
    paths = make_shards(n_shards=3, per_shard=10)
    reader = TarSamples()
    got = list(wds.DataPipeline(wds.SimpleShardList(paths), reader))
    assert got == _raw_samples(paths)  # the same dicts, fields and bytes as wds.tarfile_to_samples
    assert reader.stats == {"seen": 30}
    manifest, _ = _subset_manifest(paths)
    mpath = write_manifest(tmp_path / "m.parquet", manifest)
    pipe = wds.DataPipeline(wds.SimpleShardList(paths), wds.split_by_worker, TarSamples(), ManifestFilter(mpath),
                            wds.to_tuple("__uid__"))
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    assert sorted(u for (u,) in loader) == sorted(manifest.table["uid"].to_pylist())


def test_tar_samples_read_past_a_damaged_header(make_shards: Callable[..., list[str]], tmp_path: Path) -> None:
    (path,) = make_shards(n_shards=1, per_shard=8)
    data = bytearray(Path(path).read_bytes())
    names = [s["__key__"] for s in _raw_samples([path])]
    at = data.find(f"{names[3]}.".encode())  # the first member header of the 4th sample
    assert at % 512 == 0
    data[at] ^= 0x20  # its checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    assert [s["__key__"] for s in _raw_samples([str(bad)])] == names[:3]  # tarfile stops at the damage
    reader = TarSamples()
    keys = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList([str(bad)]), reader)]
    assert keys[:3] == names[:3] and keys[-4:] == names[4:]  # only the 4th sample's first member is lost
    assert reader.stats["shard_damaged_tar"] == 1
    with pytest.raises(StrictModeError, match="damaged_tar"):
        list(TarSamples(strict=True)([str(bad)]))


def test_shard_urls(make_shards: Callable[..., list[str]], tmp_path: Path) -> None:
    paths = make_shards(n_shards=3, per_shard=4)
    t = pa.table({"uid": ["a", "b"], "shard": ["00002", "00000"], "key": ["x", "y"],
                  "position": pa.array([0, 1], pa.int32())})
    m = build_manifest(t, kind="test", command="test")
    assert shard_urls(m) == ["00000", "00002"]
    assert shard_urls(m, urls=paths) == [paths[0], paths[2]]
    assert shard_urls(m, urls=str(Path(paths[0]).parent)) == [paths[0], paths[2]]
    run = RunDir(tmp_path / "run")
    run.update("embed", {"shards": [{"name": shard_name(p), "url": p} for p in paths]})
    assert shard_urls(m, run=run.root) == [paths[0], paths[2]]
    with pytest.raises(InputError, match="00002"):
        shard_urls(m, urls=paths[:1])


@pytest.mark.parametrize("bias", [None, -2.0])
def test_clip_loss_per_sample_matches_open_clip(bias: float | None) -> None:
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    scale = torch.tensor(14.3)
    la, lb = clip_loss_per_sample(img, txt, scale, bias)
    assert la.shape == lb.shape == (16,)
    ref = ClipLoss()(img, txt, scale, logit_bias=None if bias is None else torch.tensor(bias))
    assert ((la.mean() + lb.mean()) / 2).item() == pytest.approx(ref.item(), rel=1e-6)
    # row i of loss_a is the image->text cross-entropy of sample i
    logits = scale * img @ txt.T + (0 if bias is None else bias)
    assert la[3].item() == pytest.approx(-torch.log_softmax(logits[3], 0)[3].item(), rel=1e-5)
    assert lb[5].item() == pytest.approx(-torch.log_softmax(logits[:, 5], 0)[5].item(), rel=1e-5)


def test_loss_recorder_ranks_and_atomicity(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    recs = [LossRecorder(run.root, 3, rank=r, world_size=2, flush_rows=4) for r in range(2)]
    for step in range(3):
        for r, rec in enumerate(recs):
            uids = [f"r{r}s{step}i{i}" for i in range(5)]
            assert rec.add(uids, torch.arange(5.0), np.ones(5)) == step * 2 + r
    assert not list(run.losses_dir(3).glob("*.parquet"))  # nothing published before close
    for rec in recs:
        rec.close()
    assert sorted(p.name for p in run.losses_dir(3).iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    table, nfiles = read_losses(run, 3)
    assert nfiles == 2 and table.num_rows == 30
    batches = table["batch"].to_numpy()
    assert sorted(set(batches.tolist())) == list(range(6))
    assert table["loss_a"].to_pylist()[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # an exception inside the block publishes nothing and leaves no temporary file
    with pytest.raises(RuntimeError), LossRecorder(run.root, 4) as rec:
        rec.add(["a"], [1.0])
        raise RuntimeError("trainer crashed")
    assert not run.losses_dir(4).exists() or not any(run.losses_dir(4).iterdir())
    with LossRecorder(run.root, 5) as rec:
        rec.add(["a", "b"], [1.0, 2.0])  # single-direction losses: loss_b null
    t5, _ = read_losses(run, 5)
    assert t5["loss_b"].null_count == 2
    with pytest.raises(ValueError, match="uids"):
        LossRecorder(run.root, 6).add(["a"], [1.0, 2.0])


def test_decode_pairs_decodes_only_image_and_caption_and_counts_drops() -> None:
    import io as _io

    from PIL import Image

    from curate.trainer import DecodePairs

    buf = _io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, "PNG")
    good = {"png": buf.getvalue(), "txt": b"a red square", "pyd": b"\x80\x04not really a pickle",
            "__uid__": "u1", "__weight__": 2.0}
    bad = [
        {"jpg": b"not a jpeg", "txt": b"x", "__uid__": "u2", "__weight__": 1.0},
        {"jpg": buf.getvalue(), "__uid__": "u3", "__weight__": 1.0},
        {"txt": b"no image", "__uid__": "u4", "__weight__": 1.0},
        {"png": buf.getvalue(), "txt": b"\xff\xfe", "__uid__": "u5", "__weight__": 1.0},
    ]
    stage = DecodePairs(lambda img: img.size)
    out = list(stage([bad[0], good, *bad[1:]]))
    assert out == [((8, 6), "a red square", "u1", 2.0)]
    assert dict(stage.dropped) == {"corrupt_image": 1, "missing_caption": 1, "missing_image": 1,
                                   "caption_not_utf8": 1}
