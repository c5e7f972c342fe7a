"""``curate inspect``: counts, drop reasons, shard problems, model, CLIP-score histogram, pending shards."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli.app import main
from curate.embed import EmbedConfig, run_embed
from curate.inspect import inspect_run
from curate.io.shards import iter_shard
from tests.embed_helpers import TINY_ARCH, defect_shard, image_only_shard, save_tiny_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run over 2 clean shards, one with defects, one image-only and one truncated tar."""
    root = tmp_path_factory.mktemp("inspect")
    ckpt = save_tiny_checkpoint(root / "tiny.safetensors")
    shards = root / "shards"
    from curate.io.tarwrite import write_tar
    from tests.conftest import COLORS, jpeg_bytes

    for s in range(2):
        write_tar(shards / f"{s:05d}.tar", [(f"{s}{i:03d}", {"jpg": jpeg_bytes(COLORS[i % 8]),
                                                               "txt": f"a {COLORS[(i * s + 1) % 8]} thing".encode()})
                                           for i in range(12)])
    defect_shard(shards / "00002.tar")
    image_only_shard(shards / "00003.tar", n=4)
    full = shards / "00000.tar"
    with tarfile.open(full) as tf:
        fourth_jpg = tf.getmembers()[6]  # members: jpg, txt per sample
        assert fourth_jpg.name.endswith(".jpg")
        cut = fourth_jpg.offset_data + 10
    (shards / "00004.tar").write_bytes(full.read_bytes()[:cut])  # cut inside the 4th sample's image
    run_embed(EmbedConfig(shards=str(shards), run=str(root / "run"), model=TINY_ARCH, pretrained=str(ckpt),
                          device="cpu", batch_size=5, workers=2))
    return root / "run"


def _truncated_counts(run: Path) -> Counter:
    """What the shard reader makes of the cut shard: samples kept before the damage, one truncated."""
    stats: Counter = Counter()
    kept = len(list(iter_shard(str(run.parent / "shards" / "00004.tar"), stats=stats)))
    assert 2 <= kept <= 3 and stats["dropped_truncated_sample"] == 1 and stats["shard_truncated_tar"] == 1
    return Counter(kept=kept, seen=stats["seen"])


def test_counts_reasons_and_model(run):
    info = inspect_run(run)
    cut = _truncated_counts(run)
    assert info["model"]["model"] == TINY_ARCH and info["dim"] == 16 and info["model"]["precision"] == "fp32"
    assert info["shards"] == {"total": 5, "embedded": 5, "pending": [], "changed": [], "missing": []}
    # 24 clean + 6 kept of 10 with defects + 4 image-only + those before the cut
    assert info["samples"] == {"seen": 24 + 10 + 4 + cut["seen"], "embedded": 24 + 6 + 4 + cut["kept"],
                               "with_text": 24 + 6 + cut["kept"], "dropped": 5}
    assert info["dropped_by_reason"] == {"caption_not_utf8": 1, "corrupt_image": 1, "missing_caption": 1,
                                         "missing_image": 1, "truncated_sample": 1}
    assert info["shard_problems"] == {"truncated_tar": 1}


def test_clip_score_summary_matches_the_tables(run):
    info = inspect_run(run, bins=7)
    scores = np.concatenate([pq.read_table(p, columns=["clip_score"]).column("clip_score").drop_null().to_numpy()
                             for p in sorted((run / "embeddings").glob("*.parquet"))])
    cs = info["clip_score"]
    assert len(scores) == info["samples"]["with_text"]
    assert cs["mean"] == pytest.approx(float(scores.mean()), abs=1e-6)
    assert cs["min"] == pytest.approx(float(scores.min())) and cs["max"] == pytest.approx(float(scores.max()))
    hist = cs["histogram"]
    assert len(hist["counts"]) == 7 and sum(hist["counts"]) == len(scores)
    assert hist["edges"] == sorted(hist["edges"]) and len(hist["edges"]) == 8


def test_counts_come_from_the_tables_not_a_stale_summary(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "stats" / "embed.json").unlink()
    (copy / "embeddings" / "00001.parquet").unlink()  # as if the run had been killed before this shard
    info = inspect_run(copy)
    cut = _truncated_counts(run)
    assert info["shards"]["pending"] == ["00001"] and info["shards"]["embedded"] == 4
    assert info["samples"]["embedded"] == 12 + 6 + 4 + cut["kept"]
    assert info["samples"]["seen"] == 12 + 10 + 4 + cut["seen"]


def test_selections_and_rounds_are_listed(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "selections" / "clipcov-30").mkdir(parents=True)
    (copy / "manifests").mkdir()
    for r in (0, 1):
        (copy / "manifests" / f"round-{r:04d}.parquet").write_bytes(b"")
    info = inspect_run(copy)
    assert info["selections"] == ["clipcov-30"] and info["rounds"] == [0, 1]


def test_cli_text_and_json(run, capsys):
    assert main(["inspect", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(inspect_run(run), default=str))
    assert main(["inspect", str(run)]) == 0
    text = capsys.readouterr().out
    for needle in (f"{TINY_ARCH}", "dim=16", "5 embedded of 5", "dropped: corrupt_image", "dropped: truncated_sample",
                   "shard problem: truncated_tar", "CLIP score histogram", "with text"):
        assert needle in text, needle
    hist_lines = [ln for ln in text.splitlines() if " | " in ln and ".." in ln]
    assert len(hist_lines) == 10
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in hist_lines) == inspect_run(run)["samples"]["with_text"]
