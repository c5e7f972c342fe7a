"""Manifest exports: DataComp subset ``.npy``, a ``shard/key`` list, and a shard-URL list.

DataComp subset files (``resharder.py --subset-file``) are a numpy structured array of dtype
``u8,u8``: the upper and lower 64 bits of each sample's 128-bit hex uid, sorted, so that consumers can
binary-search them. :func:`uids_to_u8pair` and :func:`u8pair_to_uids` convert without Python loops.

An existing output file is replaced only when curate wrote it (the default file names inside a
selection folder or a run's ``manifests/`` folder), when it already holds exactly the bytes the export
would write (then it is left as it is), or with ``force``; ``--out`` is never the manifest itself. An
``--out`` that is a folder (or ends with ``/``) receives ``<name>.npy``, ``<name>.keys.txt`` or
``<name>.urls.txt``, where ``<name>`` is the selection's name (``round-NNNN`` for a bootstrap round).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.fs import atomic_path, check_replace, output_file, run_folder_of, same_file_content
from curate.io.manifest import Manifest, header_path, manifest_path_of, read_manifest, shard_urls


@dataclass(frozen=True)
class ExportFormat:
    """One ``curate export --format``: its file names and its writer (``write(manifest, tmp, path, shards)``
    writes ``tmp`` for the manifest at ``path`` and returns the number of entries)."""

    name: str
    default_name: str  # the file next to the manifest
    folder_suffix: str  # --out DIR: DIR/<manifest name><suffix>
    write: Callable[[Manifest, Path, Path, str | None], int]


EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add an export format to the registry (a name is registered once)."""
    if fmt.name in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    EXPORT_FORMATS[fmt.name] = fmt
    return fmt
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

    urls = shard_urls(manifest, urls=shards, run=run)
    with atomic_path(out) as tmp:
        Path(tmp).write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    return len(urls)


register_format(ExportFormat("datacomp", "subset.npy", ".npy", lambda m, tmp, path, shards: write_datacomp(m, tmp)))
register_format(ExportFormat("keys", "keys.txt", ".keys.txt", lambda m, tmp, path, shards: write_keys(m, tmp)))
register_format(ExportFormat("urls", "urls.txt", ".urls.txt",
                             lambda m, tmp, path, shards: write_urls(m, tmp, run_of_manifest(path), shards)))
FORMATS = tuple(EXPORT_FORMATS)
DEFAULT_NAMES = {f.name: f.default_name for f in EXPORT_FORMATS.values()}


def manifest_name(path: Path, manifest: Manifest) -> str:
    """A short name for a manifest's exports: the selection's name, ``round-NNNN``, or the file's stem."""
    header = manifest.header
    if header.get("selection"):
        return str(header["selection"])
    if header.get("kind") == "bootstrap" and header.get("round") is not None:
        return f"round-{int(header['round']):04d}"
    return path.parent.name if path.stem == "manifest" and path.parent.name else path.stem


def _curate_folder(folder: Path) -> bool:
    """A selection folder (``RUN/selections/NAME``) or a run's ``manifests/`` folder: curate owns them."""
    folder = folder.resolve()
    if folder.name == "manifests":
        return (folder.parent / "run.json").is_file()
    return folder.parent.name == "selections" and (folder.parent.parent / "run.json").is_file() \
        and (folder / "manifest.json").is_file()


def written_by_export(path: Path) -> bool:
    """True for the default export files curate writes beside a manifest in a folder curate owns."""
    return path.name in DEFAULT_NAMES.values() and _curate_folder(path.parent)


class _Unchanged(Exception):
    """The existing output already holds exactly the bytes the export would write."""


def _publish(target: Path, force: bool, write: Callable[[Path], int]) -> int:
    """Write ``target`` atomically with ``write(tmp)``; an existing file that curate did not write is replaced
    only with ``force``, or left as it is when it already holds the same bytes."""
    check_replace(target, force=True)  # never a folder or a link, whatever the flags
    run = run_folder_of(target.parent)
    if run is not None and os.path.lexists(target) and not written_by_export(target):
        raise UsageError(f"--out {target} is a file of the run {run}, not an export; choose another --out")
    guarded = os.path.lexists(target) and not force and not written_by_export(target)
    try:
        with atomic_path(target) as tmp:
            n = write(tmp)
            if guarded:
                if same_file_content(tmp, target):
                    raise _Unchanged(n)
                check_replace(target, force=False)  # raises: the temporary file is removed
    except _Unchanged as same:
        return int(same.args[0])
    return n


def export_manifest(
    manifest_path: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    shards: str | None = None,
    *,
    force: bool = False,
) -> tuple[Path, int]:
    """Export a manifest as ``fmt`` (datacomp, keys, urls) to ``out`` (default: next to the manifest).

    ``out`` may be a folder (an existing one, or a path ending with ``/``): the file is then
    ``out/<name>.npy`` (``.keys.txt``, ``.urls.txt``) with the selection's name. An existing file that
    curate did not write is replaced only with ``force`` (see the module docstring).
    Returns the written path and the number of entries (uids, keys or URLs).
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    path = manifest_path_of(manifest_path)
    manifest = read_manifest(path)
    if out is None:
        target = path.parent / EXPORT_FORMATS[fmt].default_name
    else:
        target = output_file(out, manifest_name(path, manifest) + EXPORT_FORMATS[fmt].folder_suffix)
    if target.resolve() in {path.resolve(), header_path(path).resolve()}:
        raise UsageError(f"--out {target} is the manifest being exported; choose another --out")
    writer = EXPORT_FORMATS[fmt]
    n = _publish(target, force, lambda tmp: writer.write(manifest, tmp, path, shards))
    return target, n
