"""Deterministic, atomic WebDataset tar writing.

Two tars written from the same input are bit-for-bit identical: members keep the order given,
every header has mtime 0, uid/gid 0, empty user/group names, mode 0o644, and the archive uses the
PAX format (Python's default, as written by ``webdataset.ShardWriter``). Files appear under their
final name only when complete: data goes to ``<path>.tmp-<pid>`` first, then ``os.replace``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_write_bytes",
    "member_order",
    "write_members",
    "write_tar",
]

#: Image extensions, written first within a sample, in this order.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_TAR_FORMAT = tarfile.PAX_FORMAT
_MODE = 0o644


def member_order(ext: str) -> tuple[int, str]:
    """Sort key of one extension within a sample: images, then ``txt``, then ``json``, then the rest."""
    if ext in IMAGE_EXTENSIONS:
        return (0, f"{IMAGE_EXTENSIONS.index(ext):02d}")
    if ext == "txt":
        return (1, "")
    if ext == "json":
        return (2, "")
    return (3, ext)


@contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``<path>.tmp-<pid>`` for writing; on success fsync and rename it onto ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    with _atomic_file(path) as fh:
        fh.write(data)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write(path: str | os.PathLike[str], members: Iterable[tuple[str, bytes]]) -> int:
    count = 0
    with _atomic_file(path) as fh, tarfile.open(fileobj=fh, mode="w", format=_TAR_FORMAT, encoding="utf-8") as tar:
        for name, data in members:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"member {name!r}: data must be bytes, not {type(data).__name__}")
            payload = bytes(data)
            tar.addfile(_tarinfo(name, len(payload)), io.BytesIO(payload))
            count += 1
    return count


def write_members(path: str | os.PathLike[str], members: Iterable[tuple[str, bytes]]) -> int:
    """Write raw ``(member name, bytes)`` pairs exactly as given; returns the member count.

    No validation: names may repeat, lack an extension or come in any order. Meant for crafting
    defective shards in tests; use :func:`write_tar` for well-formed WebDataset shards.
    """
    return _write(path, members)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    base = key.rsplit("/", 1)[-1]
    if not base or "." in base:
        raise ValueError(f"sample key {key!r}: the last path component must be non-empty and contain no '.'")
    if key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"sample key {key!r} must be a relative path without '..'")


def _sample_members(samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> Iterator[tuple[str, bytes]]:
    seen: set[str] = set()
    for key, fields in samples:
        _check_key(key)
        if key in seen:
            raise ValueError(f"duplicate sample key {key!r}")
        seen.add(key)
        if not fields:
            raise ValueError(f"sample {key!r} has no fields")
        for ext in sorted(fields, key=member_order):
            if not ext or ext.startswith(".") or "/" in ext:
                raise ValueError(f"sample {key!r}: bad extension {ext!r}")
            yield f"{key}.{ext}", fields[ext]


def write_tar(path: str | os.PathLike[str], samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> int:
    """Write WebDataset samples ``(key, {ext: bytes})`` to a tar; returns the number of samples.

    Samples keep the order given; the members of one sample are contiguous, named ``f"{key}.{ext}"``
    and ordered images (jpg, jpeg, png, webp), ``txt``, ``json``, then other extensions sorted.
    Raises ``ValueError`` on empty or repeated keys, keys whose last component contains a dot, or bad
    extensions; nothing is left at ``path`` (or in a temp file) when writing fails.
    """
    n_samples = 0

    def counted() -> Iterator[tuple[str, Mapping[str, bytes]]]:
        nonlocal n_samples
        for sample in samples:
            n_samples += 1
            yield sample

    _write(path, _sample_members(counted()))
    return n_samples
