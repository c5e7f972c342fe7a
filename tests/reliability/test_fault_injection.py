"""Fault injection end to end: every defect through ``curate shards validate`` and ``curate embed``.

One shard per defect (``faults.DEFECTS``), each with good samples before and after the damage. For each:
the run completes, the sample or shard is counted under its named reason in ``RUN/stats/embed.json``,
``curate shards validate`` reports it, and ``--strict`` fails with one line on stderr. Valid but
unusual images (CMYK, 16-bit, alpha, palette, grayscale, PNG, WebP, a 1 MB caption) are embedded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli.app import main
from curate.io.shards import DROP_REASONS, SHARD_PROBLEMS
from tests.embed_helpers import TINY_ARCH, cli, make_local_dir, save_tiny_checkpoint
from tests.reliability.faults import DEFECTS, LONG_CAPTION, build_defects

BAD = [n for n, d in DEFECTS.items() if d.stats]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    return {"root": root, "shards": build_defects(root / "shards"),
            "ckpt": str(save_tiny_checkpoint(root / "tiny.safetensors"))}


def _embed_args(shards: str, run: Path, ckpt: str, *extra: str) -> list[str]:
    return ["embed", shards, "--run", str(run), "--model", TINY_ARCH, "--pretrained", ckpt, "--batch-size", "4",
            *extra]


@pytest.fixture(scope="module")
def embedded(world: dict[str, Any]) -> Path:
    run = world["root"] / "run"
    assert main([*_embed_args(str(world["root"] / "shards"), run, world["ckpt"], "--workers", "0"), "--json"]) == 0
    return run


@pytest.fixture(scope="module")
def validated(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["shards", "validate", str(world["root"] / "shards"), "--json", "--workers", "2"]) == 0
    return {r["shard"]: r for r in json.loads(buf.getvalue())["shards"]}


def _shard_stats(run: Path) -> dict[str, dict[str, int]]:
    return json.loads((run / "stats" / "embed.json").read_text())["shards"]


@pytest.mark.parametrize("name", list(DEFECTS))
def test_embed_counts_each_defect(embedded: Path, name: str) -> None:
    d = DEFECTS[name]
    stats = _shard_stats(embedded)[name]
    problems = {k: v for k, v in stats.items() if k.startswith(("dropped_", "shard_"))}
    assert problems == d.stats
    for key in problems:
        reason = key.split("_", 1)[1]
        assert reason in DROP_REASONS or reason in SHARD_PROBLEMS
    if d.written >= 0:
        assert stats["written"] == d.written
    else:  # truncated: some samples before the damage survive
        assert 0 < stats["written"] < 12
    assert stats.get("seen", 0) == stats["written"] + sum(v for k, v in problems.items() if k.startswith("dropped_"))
    table = pq.read_table(embedded / "embeddings" / f"{name}.parquet")
    assert table.num_rows == stats["written"]
    assert not any(k.startswith(("bad", "../", "/", "sym", "hard")) for k in table.column("key").to_pylist())


def test_embed_totals_and_run_completes(embedded: Path) -> None:
    totals = json.loads((embedded / "stats" / "embed.json").read_text())["totals"]
    assert totals["shards"] == len(DEFECTS)
    want: dict[str, int] = {}
    for d in DEFECTS.values():
        for k, v in d.stats.items():
            want[k] = want.get(k, 0) + v
    assert {k: v for k, v in totals.items() if k.startswith(("dropped_", "shard_"))} == want


@pytest.mark.parametrize("name", list(DEFECTS))
def test_validate_reports_each_defect(validated: dict[str, dict[str, Any]], name: str) -> None:
    rep = validated[name]
    assert rep["problems"] == DEFECTS[name].validate
    assert rep["ok"] == (not DEFECTS[name].validate)


@pytest.mark.parametrize("name", BAD)
def test_strict_fails_with_one_line(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    name: str) -> None:
    shard = str(world["shards"][name])
    reasons = {k.split("_", 1)[1] for k in DEFECTS[name].stats}
    run = tmp_path / "run"
    assert main(_embed_args(shard, run, world["ckpt"], "--workers", "0", "--strict")) == 3
    line = _one_line(capsys.readouterr().err)
    assert name in line and "[--strict]" in line and any(r in line for r in reasons), line
    assert not (run / "embeddings" / f"{name}.parquet").exists()
    assert main(["shards", "validate", shard, "--strict", "--workers", "1"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"first: {name}:" in line and any(r in line for r in reasons), line


@pytest.mark.slow
def test_strict_fails_with_one_line_from_decode_workers(world: dict[str, Any], tmp_path: Path) -> None:
    """The same through a subprocess with DataLoader workers (the error crosses a process boundary)."""
    model = make_local_dir(tmp_path / "model")
    res = cli("embed", str(world["shards"]["corrupt_jpeg"]), "--run", str(tmp_path / "run"), "--model",
              f"local-dir:{model}", "--workers", "2", "--strict", timeout=120)
    assert res.returncode == 3
    line = _one_line(res.stderr)
    assert "corrupt_jpeg" in line and "corrupt_image" in line


def test_unusual_images_are_embedded(world: dict[str, Any], embedded: Path) -> None:
    import torch

    from curate.models import load_model

    table = pq.read_table(embedded / "embeddings" / "unusual_images.parquet").to_pydict()
    assert table["key"] == ["cmyk", "gray16", "alpha", "palette", "gray", "webp", "longcap", "emptycap"]
    img = np.asarray(table["image_emb"], np.float32)
    txt = np.asarray(table["text_emb"], np.float32)
    assert np.isfinite(img).all() and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-2)
    assert np.isfinite(txt).all() and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-2)
    # the 1 MB caption is kept and truncated at tokenization: its embedding is that of its first words
    model = load_model(TINY_ARCH, world["ckpt"], device="cpu")
    with torch.no_grad():
        head = model.encode_texts([LONG_CAPTION[:400]]).numpy()[0]
    assert np.allclose(txt[table["key"].index("longcap")], head, atol=2e-3)


@pytest.mark.slow
def test_decode_workers_give_the_same_tables(world: dict[str, Any], embedded: Path, tmp_path: Path) -> None:
    """Two decode worker processes: same tables and counts as decoding in the main process."""
    run = tmp_path / "run"
    assert main(_embed_args(str(world["root"] / "shards"), run, world["ckpt"], "--workers", "2")) == 0
    cols = ["uid", "key", "position", "image_emb", "text_emb", "clip_score"]
    for name in DEFECTS:
        a = pq.read_table(embedded / "embeddings" / f"{name}.parquet", columns=cols)
        b = pq.read_table(run / "embeddings" / f"{name}.parquet", columns=cols)
        assert a.equals(b), name
    assert _shard_stats(run) == _shard_stats(embedded)


def test_max_pixels_flag_drops_bombs(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shard = str(world["shards"]["unusual_images"])  # 32x32 = 1024 px images
    # every image is dropped: the run records it, and the command says that nothing was embedded (exit 3)
    assert main([*_embed_args(shard, run, world["ckpt"], "--workers", "0", "--max-pixels", "1000"), "--json"]) == 3
    assert "nothing embedded" in capsys.readouterr().err
    stats = _shard_stats(run)["unusual_images"]
    assert stats["dropped_decompression_bomb"] == 8 and stats["written"] == 0
    capsys.readouterr()
    assert main(["shards", "validate", shard, "--max-pixels", "1000", "--workers", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["shards"][0]
    assert report["problems"] == {"decompression_bomb": 8} and report["samples"] == 0


def test_unreadable_shard_urls(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(world["shards"]["unusual_images"])
    spec = f"{good}::memory://nowhere/gone.tar::pipe:exit 7 # failing.tar"
    run = tmp_path / "run"
    assert main([*_embed_args(spec, run, world["ckpt"], "--workers", "0"), "--json"]) == 0
    capsys.readouterr()
    stats = _shard_stats(run)
    assert stats["gone"] == {"shard_unreadable_shard": 1, "written": 0}
    assert stats["failing"] == {"shard_unreadable_shard": 1, "written": 0}
    assert stats["unusual_images"]["written"] == 8
    assert main(["shards", "validate", spec, "--json", "--workers", "1"]) == 0
    reps = {r["shard"]: r for r in json.loads(capsys.readouterr().out)["shards"]}
    assert reps["gone"]["problems"] == reps["failing"]["problems"] == {"shard_unreadable_shard": 1}
    assert main(_embed_args("memory://nowhere/gone.tar", tmp_path / "strict", world["ckpt"], "--strict")) == 3
    line = _one_line(capsys.readouterr().err)
    assert "gone: unreadable_shard" in line and "[--strict]" in line


def test_url_scheme_without_its_package_is_one_line(world: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("aiohttp") is not None:
        pytest.skip("aiohttp is installed: http:// shards are readable here")
    url = "http://127.0.0.1:9/00000.tar"
    assert main(["shards", "validate", url, "--workers", "1"]) == 3
    assert "cannot read http:// shards" in _one_line(capsys.readouterr().err)
    assert main(_embed_args(url, tmp_path / "run", world["ckpt"], "--workers", "0")) == 3
    assert "cannot read http:// shards" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_hostile_one_word_caption_does_not_hang_embed(tmp_path: Path) -> None:
    import random

    from curate.io.tarwrite import write_tar
    from tests.conftest import jpeg_bytes

    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000)).encode()
    write_tar(tmp_path / "cap.tar", [("k0", {"jpg": jpeg_bytes("red"), "txt": word}),
                                     ("k1", {"jpg": jpeg_bytes("blue"), "txt": b"a blue square"})])
    model = make_local_dir(tmp_path / "model")
    try:
        res = cli("embed", str(tmp_path / "cap.tar"), "--run", str(tmp_path / "run"), "--model",
                  f"local-dir:{model}", "--workers", "0", timeout=40)
    except Exception as exc:  # subprocess.TimeoutExpired: the hang
        pytest.fail(f"curate embed did not finish in 40 s: {type(exc).__name__}")
    assert res.returncode == 0, res.stderr
    shutil.rmtree(tmp_path / "run")


def test_unreadable_shard_is_retried_when_readable_again(world: dict[str, Any], tmp_path: Path) -> None:
    import fsspec

    url = "memory://retry/later.tar"
    args = [*_embed_args(url, tmp_path / "run", world["ckpt"], "--workers", "0"), "--json"]
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url)
    assert main(args) == 3  # nothing embedded: said, with exit 3
    assert _shard_stats(tmp_path / "run")["later"] == {"shard_unreadable_shard": 1, "written": 0}
    with fsspec.open(url, "wb") as fh:  # the network came back
        fh.write(world["shards"]["unusual_images"].read_bytes())
    try:
        assert main(args) == 0
        assert _shard_stats(tmp_path / "run")["later"]["written"] == 8
    finally:
        fs.rm(url)


# --- the trainer's sample cache and the evaluation split read the same shards ------------------------
def _tiny(world: dict[str, Any]) -> Any:
    from curate.models import load_model

    return load_model(TINY_ARCH, world["ckpt"], device="cpu", precision="fp32")


def test_sample_cache_skips_and_counts_every_defect(world: dict[str, Any], embedded: Path) -> None:
    """``SampleCache.build`` (the cached trainer) keeps what embed keeps and counts every drop under its reason."""
    from collections import Counter

    from curate.trainer.cached import SampleCache

    stats: Counter[str] = Counter()
    cache = SampleCache.build([str(p) for p in world["shards"].values()], _tiny(world), stats)
    want: Counter[str] = Counter()
    for d in DEFECTS.values():
        want.update(d.stats)
    assert {k: v for k, v in stats.items() if k.startswith(("dropped_", "shard_"))} == dict(want)
    embedded_uids = set(pq.read_table(embedded / "embeddings", columns=["uid"]).column("uid").to_pylist())
    assert set(cache.uids.tolist()) == embedded_uids and len(cache) == len(embedded_uids)


def test_labelled_split_skips_and_counts_every_defect(world: dict[str, Any], tmp_path: Path) -> None:
    """``load_labelled_split`` (zero-shot evaluation): every bad image among labelled samples is skipped and
    counted; the defect shards themselves (unlabelled) do not stop it either."""
    from collections import Counter

    from curate.io.tarwrite import write_tar
    from curate.world import load_labelled_split
    from tests.reliability.faults import BAD_IMAGES, image_bytes

    def labelled(cls: str, image: bytes, ext: str = "jpg") -> dict[str, bytes]:
        return {ext: image, "txt": f"a {cls} square".encode(), "json": json.dumps({"truth": {"class": cls}}).encode()}

    samples = [(f"good{i}", labelled(c, image_bytes(c))) for i, c in enumerate(["red", "blue", "red"])]
    for name, (data, _) in BAD_IMAGES.items():
        samples.append((name, labelled("blue", data, "png" if data[:4] == b"\x89PNG" else "jpg")))
    samples.append(("good3", labelled("blue", image_bytes("blue"))))
    write_tar(tmp_path / "labelled.tar", samples)
    stats: Counter[str] = Counter()
    shards = [str(tmp_path / "labelled.tar"), *(str(p) for p in world["shards"].values())]
    images, labels = load_labelled_split(_tiny(world), shards, ["red", "blue"], stats)
    assert labels.tolist() == [0, 1, 0, 1] and images.shape[0] == 4
    # decode drops: the labelled bad images only (unlabelled samples of the defect shards are never decoded)
    decode = Counter(f"dropped_{r}" for _, r in BAD_IMAGES.values())
    assert {k: v for k, v in stats.items() if k in decode} == dict(decode)
    assert stats["shard_not_tar"] == 2 and stats["shard_truncated_tar"] == 1
