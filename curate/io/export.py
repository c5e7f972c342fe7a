"""Manifest exports: DataComp subset ``.npy``, a ``shard/key`` list, and a shard-URL list.

DataComp subset files (``resharder.py --subset-file``) are a numpy structured array of dtype
``u8,u8``: the upper and lower 64 bits of each sample's 128-bit hex uid, sorted, so that consumers can
binary-search them. :func:`uids_to_u8pair` and :func:`u8pair_to_uids` convert without Python loops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.io.manifest import Manifest, read_manifest
from curate.run import atomic_path

FORMATS = ("datacomp", "keys", "urls")
DEFAULT_NAMES = {"datacomp": "subset.npy", "keys": "keys.txt", "urls": "urls.txt"}
U8PAIR = np.dtype("u8,u8")

_LUT = np.full(256, 255, np.uint8)
_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_LUT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_LUT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)


def uids_to_u8pair(uids: pa.Array | pa.ChunkedArray | np.ndarray | list[str]) -> np.ndarray:
    """128-bit hex uids (32 hex digits) as a ``u8,u8`` structured array (upper, lower 64 bits)."""
    arr = pa.chunked_array([uids]) if not isinstance(uids, pa.ChunkedArray) else uids
    arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
    n = len(arr)
    out = np.zeros(n, U8PAIR)
    if n == 0:
        return out
    a = arr.combine_chunks()
    lengths = pc.binary_length(a).to_numpy(zero_copy_only=False)
    if a.null_count or (lengths != 32).any():
        bad = a[int(np.flatnonzero(lengths != 32)[0])] if (lengths != 32).any() else None
        raise InputError(f"uid {bad} is not a 128-bit hex uid (32 hex digits); export --format keys instead")
    offsets = np.frombuffer(a.buffers()[1], np.int32)[a.offset : a.offset + n + 1]
    flat = np.frombuffer(a.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nib = _LUT[flat[: n * 32].reshape(n, 32)]
    if (nib == 255).any():
        row = int(np.flatnonzero((nib == 255).any(axis=1))[0])
        raise InputError(f"uid {arr[row]} is not hexadecimal; DataComp subsets need 128-bit hex uids")
    nib64 = nib.astype(np.uint64)
    out["f0"] = np.bitwise_or.reduce(nib64[:, :16] << _SHIFTS, axis=1)
    out["f1"] = np.bitwise_or.reduce(nib64[:, 16:] << _SHIFTS, axis=1)
    return out


def u8pair_to_uids(pairs: np.ndarray) -> np.ndarray:
    """The inverse of :func:`uids_to_u8pair`: lower-case 32-hex uid strings."""
    if pairs.dtype != U8PAIR:
        raise InputError(f"expected a structured array of dtype u8,u8, got {pairs.dtype}")
    words = np.stack([pairs["f0"], pairs["f1"]], axis=1).astype(np.uint64)
    nib = ((words[:, :, None] >> _SHIFTS) & np.uint64(15)).astype(np.uint8).reshape(len(pairs), 32)
    return _HEX[nib].view("S32").ravel().astype(str)


def write_datacomp(manifest: Manifest, out: str | os.PathLike[str]) -> int:
    """Write the manifest's uids as a sorted DataComp ``u8,u8`` ``.npy``; return the count."""
    pairs = np.sort(uids_to_u8pair(manifest.table.column("uid")))
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, pairs)
    return len(pairs)


def read_datacomp(path: str | os.PathLike[str]) -> np.ndarray:
    """A DataComp subset file's uids (as hex strings), in file order."""
    try:
        pairs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a numpy u8,u8 subset file: {exc}") from None
    return u8pair_to_uids(pairs)


def write_keys(manifest: Manifest, out: str | os.PathLike[str]) -> int:
    """Write ``shard/key`` lines in manifest order (shard, then position); return the count."""
    t = manifest.table
    lines = pc.binary_join_element_wise(t.column("shard"), t.column("key"), "/")
    text = "\n".join(lines.to_pylist())
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text + ("\n" if text else ""), encoding="utf-8")
    return t.num_rows


def run_of_manifest(path: Path) -> Path | None:
    """The run folder a selection manifest belongs to (``RUN/selections/NAME/manifest.parquet``)."""
    for parent in path.resolve().parents[:3]:
        if (parent / "run.json").exists():
            return parent
    return None


def write_urls(manifest: Manifest, out: str | os.PathLike[str], run: Path | None, shards: str | None = None) -> int:
    """Write the URLs of shards that still hold kept samples (from ``shards``, run.json, or names)."""
    from curate.trainer.manifest_filter import shard_urls

    urls = shard_urls(manifest, urls=shards, run=run)
    with atomic_path(out) as tmp:
        Path(tmp).write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    return len(urls)


def export_manifest(
    manifest_path: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    shards: str | None = None,
) -> tuple[Path, int]:
    """Export a manifest as ``fmt`` (datacomp, keys, urls) to ``out`` (default: next to the manifest).

    Returns the written path and the number of entries (uids, keys or URLs).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.parquet"
    manifest = read_manifest(path)
    target = Path(out) if out is not None else path.parent / DEFAULT_NAMES[fmt]
    if fmt == "datacomp":
        n = write_datacomp(manifest, target)
    elif fmt == "keys":
        n = write_keys(manifest, target)
    else:
        n = write_urls(manifest, target, run_of_manifest(path), shards)
    return target, n
