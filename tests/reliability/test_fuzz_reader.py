"""The shard reader fuzzed with hypothesis: random and mutated tar bytes never crash it or hang it.

Whatever the bytes, ``iter_shard`` returns normally; every sample it yields is well formed, and every
problem lands in ``stats`` under a known name. Decoding the yielded images raises only ``SampleError``.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.errors import StrictModeError
from curate.io.shards import DROP_REASONS, SHARD_PROBLEMS, ErrorPolicy, SampleError, decode_image, iter_shard
from tests.conftest import jpeg_bytes

KNOWN = {"seen", "skipped_member_without_extension"} | {f"dropped_{r}" for r in DROP_REASONS} | {
    f"shard_{p}" for p in SHARD_PROBLEMS
}
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seed_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for key, members in [
            ("a", {"jpg": jpeg_bytes("red", 16), "txt": b"a red square", "json": b'{"uid": "x"}'}),
            ("b", {"png": jpeg_bytes("blue", 16, "PNG"), "txt": b"a blue square"}),
            ("dir/c", {"webp": jpeg_bytes("green", 16, "WEBP"), "txt": "caf\u00e9".encode()}),
        ]:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return out.getvalue()


SEED = _seed_tar()


def _read(tmp_path: Path, data: bytes, strict: bool = False) -> tuple[list, Counter]:
    p = tmp_path / "fuzz.tar"
    p.write_bytes(data)
    stats: Counter = Counter()
    samples = list(iter_shard(str(p), ErrorPolicy(strict=strict, max_pixels=1 << 20), stats))
    return samples, stats


def _check(samples: list, stats: Counter) -> None:
    assert set(stats) <= KNOWN, set(stats) - KNOWN
    assert all(v > 0 for v in stats.values())
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys))
    assert [s.position for s in samples] == sorted(s.position for s in samples)
    assert stats["seen"] >= len(samples)
    for s in samples:
        assert s.image_bytes is not None and len(s.uid) == 32 and len(s.content_hash) == 32
        assert not s.key.startswith("/") and ".." not in s.key.split("/")
        try:
            img = decode_image(s.image_bytes, draft_size=8, max_pixels=1 << 20)
            assert img.mode == "RGB"
        except SampleError as exc:
            assert exc.reason in DROP_REASONS


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    _check(*_read(tmp_path, data))


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(1, 255)), min_size=1, max_size=12),
    cut=st.one_of(st.none(), st.integers(0, len(SEED))),
)
def test_mutated_tar(tmp_path: Path, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(SEED)
    for pos, x in flips:
        data[pos] ^= x
    samples, stats = _read(tmp_path, bytes(data[:cut] if cut is not None else data))
    _check(samples, stats)


@FUZZ
@given(
    pos=st.integers(0, len(SEED)),
    junk=st.binary(min_size=1, max_size=600),
    gz=st.booleans(),
)
def test_inserted_junk(tmp_path: Path, pos: int, junk: bytes, gz: bool) -> None:
    data = SEED[:pos] + junk + SEED[pos:]
    _check(*_read(tmp_path, gzip.compress(data, mtime=0) if gz else data))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(1, 255)), min_size=1, max_size=6))
def test_strict_mode_raises_only_strict_errors(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for pos, x in flips:
        data[pos] ^= x
    try:
        _read(tmp_path, bytes(data), strict=True)
    except StrictModeError as exc:
        assert str(exc).count("\n") == 0 and "[--strict]" in str(exc)


def test_seed_tar_reads_clean(tmp_path: Path) -> None:
    samples, stats = _read(tmp_path, SEED)
    assert [s.key for s in samples] == ["a", "b", "dir/c"] and stats == Counter(seen=3)
    _check(samples, stats)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 1024, 10_240])
def test_zero_blocks(tmp_path: Path, size: int) -> None:
    samples, stats = _read(tmp_path, bytes(size))
    assert samples == [] and stats in (Counter(shard_empty_shard=1), Counter(shard_truncated_tar=1))


def test_huge_declared_member_is_bounded(tmp_path: Path) -> None:
    """A header that declares a 4 GB member in a 2 KB file: read fails fast, nothing is allocated."""
    ti = tarfile.TarInfo("big.jpg")
    ti.size = 4 << 30
    header = ti.tobuf(format=tarfile.USTAR_FORMAT)
    samples, stats = _read(tmp_path, header + b"\0" * 1024)
    assert samples == [] and stats["shard_truncated_tar"] == 1
