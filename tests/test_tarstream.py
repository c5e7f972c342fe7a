"""The shard tar reader (``curate.io.tarstream``): the same members as ``tarfile`` on intact archives of
every format, and damage in the middle of an archive reported and skipped instead of ending the read."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.errors import StrictModeError
from curate.io.shards import ErrorPolicy, iter_shard
from curate.io.tarstream import TarDamage, TarReader

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
COMPRESS = {"none": lambda b: b, "gz": lambda b: gzip.compress(b, mtime=0), "bz2": bz2.compress, "xz": lzma.compress}


def _tar(members: list[tuple[str, bytes | str | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, content): bytes for a file, "dir", "sym", "lnk" or "fifo" for the other kinds."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, content in members:
            ti = tarfile.TarInfo(name)
            if isinstance(content, bytes):
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                       "fifo": tarfile.FIFOTYPE}[str(content)]
            if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):  # long link names: GNU 'K' / pax linkpath records
                ti.linkname = "target/" + "t" * (120 if fmt != tarfile.USTAR_FORMAT else 20)
            tf.addfile(ti)
    return out.getvalue()


def _with_tarfile(data: bytes) -> list[tuple[str, str, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tf:
        for ti in tf:
            kind = "file" if ti.isfile() else "dir" if ti.isdir() else "other"
            out.append((ti.name, kind, tf.extractfile(ti).read() if ti.isfile() else None))  # type: ignore[union-attr]
    return out


def _with_reader(data: bytes) -> tuple[list[tuple[str, str, bytes | None]], list[str]]:
    damage: list[str] = []
    return list(TarReader(io.BytesIO(data), damage.append)), damage


NAMES = ["a.jpg", "dir/b.txt", "x" * 99 + ".json", "deep/" * 30 + "long.jpg", "caf\u00e9/\u00e9t\u00e9.txt",
         "p" * 150 + "/q.jpg"]
SIZES = [0, 1, 511, 512, 513, 5000]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("comp", COMPRESS)
def test_same_members_as_tarfile(fmt: str, comp: str) -> None:
    members: list[tuple[str, bytes | str | None]] = [
        (n, bytes([i]) * s) for i, (n, s) in enumerate(zip(NAMES, SIZES * 2, strict=False))
        if fmt != "ustar" or len(n) <= 100 or ("/" in n and len(n.rsplit("/", 1)[1]) <= 100 and len(n) <= 255)
    ]
    members += [("d", "dir"), ("s.jpg", "sym"), ("h.jpg", "lnk"), ("f.jpg", "fifo"), ("z.txt", b"end")]
    data = COMPRESS[comp](_tar(members, FORMATS[fmt]))
    got, damage = _with_reader(data)
    assert got == _with_tarfile(data) and damage == []
    assert [g[0] for g in got if g[1] == "file"] == [m[0] for m in members if isinstance(m[1], bytes)]


@settings(max_examples=60, deadline=None)
@given(members=st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                                         blacklist_characters="/\\."), min_size=1, max_size=140),
                                  st.binary(max_size=1500)), max_size=8),
       fmt=st.sampled_from(list(FORMATS.values())))
def test_random_archives_match_tarfile(members: list[tuple[str, bytes]], fmt: int) -> None:
    if fmt == tarfile.USTAR_FORMAT:
        members = [(n, d) for n, d in members if len(n.encode()) < 100]
    data = _tar([(f"{n}.bin", d) for n, d in members], fmt)
    got, damage = _with_reader(data)
    assert got == _with_tarfile(data) and damage == []


def _samples_tar(n: int) -> tuple[bytes, list[int]]:
    """A tar of ``n`` samples (jpg + txt) and the byte offset of each member's header."""
    out, offsets = io.BytesIO(), []
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            for ext in ("jpg", "txt"):
                data = f"sample {i} {ext} ".encode() * (40 if ext == "jpg" else 1)
                ti = tarfile.TarInfo(f"s{i:03d}.{ext}")
                ti.size = len(data)
                offsets.append(out.tell())
                tf.addfile(ti, io.BytesIO(data))
    return out.getvalue(), offsets


def _read(tmp_path: Path, data: bytes, strict: bool = False) -> tuple[list[str], Counter]:
    p = tmp_path / "s.tar"
    p.write_bytes(data)
    stats: Counter = Counter()
    return [s.key for s in iter_shard(str(p), ErrorPolicy(strict=strict), stats)], stats


def test_damaged_header_mid_archive_loses_only_its_member(tmp_path: Path) -> None:
    data, offsets = _samples_tar(10)
    bad = bytearray(data)
    bad[offsets[10] + 3] ^= 0x55  # the name of sample 5's image: its header checksum no longer matches
    keys, stats = _read(tmp_path, bytes(bad))
    assert keys == [f"s{i:03d}" for i in range(10) if i != 5]
    assert stats == Counter(seen=10, shard_damaged_tar=1, dropped_missing_image=1)
    # tarfile's stream mode ends the archive at the damaged header: the samples after it vanish uncounted
    with tarfile.open(fileobj=io.BytesIO(bytes(bad)), mode="r|") as tf:
        assert len([ti for ti in tf]) == 10


def test_several_damaged_headers_and_a_damaged_caption_header(tmp_path: Path) -> None:
    data, offsets = _samples_tar(8)
    bad = bytearray(data)
    bad[offsets[3] + 150] ^= 0x01  # sample 1's caption: checksum field
    bad[offsets[8] + 124] = ord("9")  # sample 4's image: a size that is not octal
    keys, stats = _read(tmp_path, bytes(bad))
    assert keys == ["s000", "s001", "s002", "s003", "s005", "s006", "s007"]  # s001 kept without its caption
    assert stats == Counter(seen=8, shard_damaged_tar=2, dropped_missing_image=1)


def test_damaged_header_under_strict_is_one_line(tmp_path: Path) -> None:
    data, offsets = _samples_tar(4)
    bad = bytearray(data)
    bad[offsets[2]] ^= 0x20
    with pytest.raises(StrictModeError, match=rf"damaged_tar .*byte {offsets[2]};.*\[--strict\]$"):
        _read(tmp_path, bytes(bad), strict=True)


def test_data_after_the_end_blocks_is_reported(tmp_path: Path) -> None:
    data, _ = _samples_tar(3)
    keys, stats = _read(tmp_path, data + _samples_tar(2)[0])  # two tars concatenated
    assert keys == ["s000", "s001", "s002"] and stats == Counter(seen=3, shard_damaged_tar=1)


def test_cut_off_and_one_end_block_are_truncated(tmp_path: Path) -> None:
    data, offsets = _samples_tar(3)
    end = offsets[-1] + 1024  # after the last member (512 header + its one data block)
    for cut in (data[:end], data[:end + 512], data[:end + 700]):
        keys, stats = _read(tmp_path, cut)
        assert keys == ["s000", "s001"]
        assert stats == Counter(seen=3, shard_truncated_tar=1, dropped_truncated_sample=1)
    keys, stats = _read(tmp_path, data[:end + 1024])
    assert keys == ["s000", "s001", "s002"] and stats == Counter(seen=3)


@pytest.mark.parametrize("comp", ["gz", "bz2", "xz"])
def test_cut_compressed_stream_is_truncated(tmp_path: Path, comp: str) -> None:
    rng = random.Random(0)  # incompressible members, so that bzip2's (100 kB) blocks end before the cut
    tar = _tar([(f"s{i:03d}.{ext}", rng.randbytes(4000) if ext == "jpg" else b"a caption")
                for i in range(60) for ext in ("jpg", "txt")])
    data = bz2.compress(tar, 1) if comp == "bz2" else COMPRESS[comp](tar)
    keys, stats = _read(tmp_path, data[: len(data) // 2])
    assert 0 < len(keys) < 60
    assert stats["shard_truncated_tar"] == 1 and stats["seen"] == len(keys) + stats["dropped_truncated_sample"]


def test_member_data_is_never_taken_for_a_header() -> None:
    inner = _tar([("inner.jpg", b"x" * 100)], tarfile.USTAR_FORMAT)  # a tar stored as a member's content
    data = _tar([("a.tar", inner), ("b.jpg", bytes(2048)), ("c.txt", b"c")], tarfile.USTAR_FORMAT)
    got, damage = _with_reader(data)
    assert [g[0] for g in got] == ["a.tar", "b.jpg", "c.txt"] and damage == []


def test_huge_declared_member_fails_fast() -> None:
    ti = tarfile.TarInfo("big.jpg")
    ti.size = 1 << 40
    with pytest.raises(TarDamage, match=r"ends inside member 'big\.jpg'"):
        list(TarReader(io.BytesIO(ti.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)), lambda d: None))


def test_a_key_that_is_not_utf8_drops_only_its_sample(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        for name in ["a.jpg", "a.txt", "caf\xe9.jpg", "caf\xe9.txt", "c.jpg", "c.txt"]:  # Latin-1 bytes for é
            ti = tarfile.TarInfo(name)
            ti.size = 1
            tf.addfile(ti, io.BytesIO(b"x"))
    keys, stats = _read(tmp_path, out.getvalue())
    assert keys == ["a", "c"] and stats == Counter(seen=3, dropped_name_not_utf8=1)
