"""The shard reader: spec expansion, identity, and every defect kind counted under its reason."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.errors import InputError, StrictModeError
from curate.io.shards import (
    ErrorPolicy,
    SampleError,
    decode_image,
    expand_shards,
    iter_shard,
    make_content_hash,
    make_uid,
    shard_name,
)
from curate.io.tarwrite import write_members, write_tar
from tests.conftest import jpeg_bytes

GOOD = jpeg_bytes("red")


def read(path: Path | str, strict: bool = False, **kw) -> tuple[list, Counter]:
    stats: Counter = Counter()
    return list(iter_shard(str(path), ErrorPolicy(strict=strict, **kw), stats)), stats


def test_good_shard_in_order(make_shards):
    (p,) = make_shards(1, 5)
    samples, stats = read(p)
    assert [s.position for s in samples] == [0, 1, 2, 3, 4]
    assert [s.key for s in samples] == [f"000{i:05d}" for i in range(5)]
    assert stats == Counter(seen=5)
    assert all(s.image_ext == "jpg" and s.caption.startswith("a photo") for s in samples)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("a.jpg", b"not an image at all"), ("a.txt", b"x")], None),  # decoded later: corrupt_image
        ([("a.txt", b"caption only")], "missing_image"),
        ([("a.jpg", GOOD), ("a.txt", b"\xff\xfe\xfa")], "caption_not_utf8"),
        ([("a.jpg", GOOD), ("a.json", b"{not json")], "bad_json"),
        ([("a.jpg", GOOD), ("a.jpg", GOOD)], "duplicate_member"),
        ([("../a.jpg", GOOD), ("../a.txt", b"x")], "unsafe_member"),
        ([("/abs/a.jpg", GOOD)], "unsafe_member"),
    ],
)
def test_sample_defects(tmp_path, members, reason):
    p = tmp_path / "s.tar"
    write_members(p, [*members, ("ok.jpg", GOOD), ("ok.txt", b"fine")])
    samples, stats = read(p)
    assert samples[-1].key == "ok"
    if reason is None:
        with pytest.raises(SampleError) as ei:
            decode_image(samples[0].image_bytes)
        assert ei.value.reason == "corrupt_image"
    else:
        assert stats[f"dropped_{reason}"] == 1
        assert len(samples) == 1
        with pytest.raises(StrictModeError, match=reason):
            read(p, strict=True)


def test_duplicate_and_noncontiguous_keys(tmp_path):
    p = tmp_path / "s.tar"
    write_members(p, [("a.jpg", GOOD), ("b.jpg", GOOD), ("a.txt", b"late caption"), ("a.jpg", GOOD)])
    samples, stats = read(p)
    assert [s.key for s in samples] == ["a", "b"]
    assert stats["dropped_duplicate_key"] == 1  # the second 'a' group (non-contiguous member + dup image)


def test_link_members_are_dropped(tmp_path):
    p = tmp_path / "s.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in [("a.jpg", GOOD), ("a.txt", b"x")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for kind, name in [(tarfile.SYMTYPE, "b.jpg"), (tarfile.LNKTYPE, "c.jpg")]:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = "/etc/passwd"
            tf.addfile(ti)
    samples, stats = read(p)
    assert [s.key for s in samples] == ["a"]
    assert stats["dropped_non_file_member"] == 2


def test_truncated_tar_keeps_earlier_samples(make_shards, tmp_path):
    (p,) = make_shards(1, 6)
    data = Path(p).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    samples, stats = read(cut)
    assert 0 < len(samples) < 6
    assert stats["shard_truncated_tar"] == 1
    assert stats["seen"] == len(samples) + stats["dropped_truncated_sample"]
    with pytest.raises(StrictModeError, match="truncated_tar"):
        read(cut, strict=True)


def test_empty_and_unreadable_shards(tmp_path):
    empty = tmp_path / "empty.tar"
    write_members(empty, [])
    assert read(empty) == ([], Counter(shard_empty_shard=1))
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    _, stats = read(zero)
    assert stats["shard_empty_shard"] + stats["shard_truncated_tar"] == 1
    _, stats = read("pipe:exit 3 # broken.tar")
    assert sum(stats.values()) >= 1
    _, stats = read(tmp_path / "missing-dir" / "x.tar")
    assert stats == Counter(shard_unreadable_shard=1)


def test_image_modes_decode_to_rgb():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    gray16 = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    for img, fmt in [(rgba, "PNG"), (Image.new("L", (20, 20), 90), "JPEG"),
                     (Image.new("CMYK", (20, 20), (0, 255, 0, 0)), "JPEG"), (gray16, "PNG"),
                     (Image.new("RGB", (20, 20), "blue"), "WEBP"), (Image.new("P", (20, 20)), "PNG")]:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out = decode_image(buf.getvalue())
        assert out.mode == "RGB" and out.size == (20, 20)
    # fully transparent red composites onto white
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert decode_image(buf.getvalue()).getpixel((5, 5)) == (255, 255, 255)


def test_decompression_bomb_is_bounded():
    big = jpeg_bytes("red", size=400)
    with pytest.raises(SampleError) as ei:
        decode_image(big, max_pixels=100 * 100)
    assert ei.value.reason == "decompression_bomb"


def test_jpeg_draft_decodes_smaller():
    img = decode_image(jpeg_bytes("red", size=512), draft_size=64)
    assert 64 <= min(img.size) < 512


def test_uid_rules(tmp_path):
    hexuid = "0123456789abcdef0123456789ABCDEF"
    p = tmp_path / "00007.tar"
    write_tar(p, [("k1", {"jpg": GOOD, "json": json.dumps({"uid": hexuid}).encode()}),
                  ("k2", {"jpg": GOOD, "json": b'{"uid": "not-hex"}'}),
                  ("k3", {"jpg": GOOD})])
    a, _ = read(p)
    b, _ = read(p)
    assert a[0].uid == hexuid.lower()
    assert a[1].uid == make_uid("00007", "k2") and a[2].uid == make_uid("00007", "k3")
    assert [s.uid for s in a] == [s.uid for s in b]  # stable across reads
    assert len({s.uid for s in a}) == 3 and all(len(s.uid) == 32 for s in a)
    assert a[1].content_hash == a[2].content_hash == make_content_hash(GOOD, None)
    assert make_uid("00007", "k2") != make_uid("00008", "k2")


def test_expand_shards(make_shards, tmp_path):
    paths = make_shards(3, 2)
    d = str(Path(paths[0]).parent)
    assert expand_shards(f"{d}/{{00000..00002}}.tar") == paths
    assert expand_shards(f"{d}/*.tar") == paths
    assert expand_shards(d) == paths
    assert expand_shards([paths[2], paths[0]]) == [paths[2], paths[0]]
    assert expand_shards(f"{paths[0]}::{paths[1]}") == paths[:2]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(paths) + "\n")
    assert expand_shards(f"@{lst}") == paths
    assert expand_shards(f"pipe:cat {paths[0]}") == [f"pipe:cat {paths[0]}"]
    assert shard_name(f"pipe:cat {paths[0]}") == "00000"
    assert shard_name("s3://bucket/data/00042.tar") == "00042"
    with pytest.raises(InputError, match="shard not found"):
        expand_shards(f"{d}/nope.tar")
    with pytest.raises(InputError, match="no shards match"):
        expand_shards(f"{d}/*.zip")
    with pytest.raises(InputError, match="empty"):
        expand_shards([])
    (tmp_path / "other").mkdir()
    write_members(tmp_path / "other" / "00000.tar", [])
    with pytest.raises(InputError, match="share the name"):
        expand_shards([paths[0], str(tmp_path / "other" / "00000.tar")])


def test_pipe_url_reads_same_samples(make_shards):
    (p,) = make_shards(1, 4)
    direct, _ = read(p)
    piped, _ = read(f"pipe:cat {p}")
    assert [s.uid for s in direct] == [s.uid for s in piped]
