"""``ManifestFilter``: a webdataset stage that keeps only the samples of a manifest, before decoding.

Memory stays bounded for manifests of 100M samples: the manifest is converted once (in the process
that builds the filter) into an uncompressed Arrow IPC file next to it, sorted by shard, with per-shard
row offsets in its metadata. Each worker memory-maps that file (shared page cache, no private copy)
and builds a ``key -> (uid, weight)`` dict for the shard it is reading only; a few recent shards are cached.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError
from curate.fs import atomic_path
from curate.io.manifest import Manifest, read_manifest
from curate.io.shards import shard_name
from curate.schemas import MANIFEST_HEADER_KEY

INDEX_FORMAT = 1
_META = b"curate.filter"
_COLUMNS = ["key", "uid", "weight"]


def _shard_offsets(table: pa.Table) -> dict[str, list[int]]:
    """``{shard: [start, stop)}`` of a table sorted by shard."""
    counts = table.group_by("shard").aggregate([("shard", "count")]).sort_by("shard")
    names = counts.column("shard").to_pylist()
    ends = np.cumsum(counts.column("shard_count").to_numpy())
    starts = np.r_[0, ends[:-1]]
    return {n: [int(a), int(b)] for n, a, b in zip(names, starts, ends, strict=True)}


def _index_table(table: pa.Table) -> pa.Table:
    table = table.sort_by([("shard", "ascending"), ("position", "ascending")])
    offsets = _shard_offsets(table)
    meta = {"format": INDEX_FORMAT, "offsets": offsets}
    out = table.select(_COLUMNS).combine_chunks()
    return out.replace_schema_metadata({_META: json.dumps(meta).encode()})


def build_index(manifest_path: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write (once) the memory-mappable index of a manifest file; return its path."""
    mpath = Path(manifest_path)
    if not mpath.exists():
        raise InputError(f"manifest not found: {mpath}")
    try:  # the header only: a worker that finds the index built must not read the whole manifest
        raw = (pq.read_schema(mpath).metadata or {}).get(MANIFEST_HEADER_KEY)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt manifest {mpath}: {str(exc).splitlines()[0]}") from None
    st = mpath.stat()
    digest = (json.loads(raw).get("content_hash") if raw else None) or f"{st.st_size}-{st.st_mtime_ns}"
    folder = Path(index_dir) if index_dir is not None else mpath.parent
    if not os.access(folder, os.W_OK):
        folder = Path(tempfile.gettempdir()) / "curate-filter-index"
    path = folder / f".{mpath.stem}.filter-{str(digest)[:16]}.arrow"
    if path.exists():
        return path
    table = _index_table(read_manifest(mpath).table)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=1 << 20)
    return path


class ManifestFilter:
    """Keep the samples of a manifest; attach their ``uid`` and ``weight``.

    Use it as a webdataset stage right after the tar reader (before ``decode``)::

        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(),
            ManifestFilter("RUN/manifests/round-0003.parquet"),
            wds.shuffle(1000), DecodePairs(preprocess),  # -> (image tensor, caption, uid, weight)
        )
        # or: wds.WebDataset(urls).compose(ManifestFilter(path))

    Samples are matched on (shard basename without ``.tar``, ``__key__``). The uid and weight are stored
    under ``uid_key``/``weight_key`` (default ``__uid__``/``__weight__``: webdataset's decoder passes
    ``__``-prefixed fields through and rejects non-bytes values under other names).

    Args:
        manifest: a manifest ``.parquet`` path (indexed on disk, memory-mapped by workers) or a
            ``Manifest`` (held in memory; fine for small manifests).
        uid_key, weight_key: sample fields to write.
        cache_shards: how many shards' key dicts a worker keeps.
        index_dir: where to write the index (default: next to the manifest).
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str] | Manifest,
        uid_key: str = "__uid__",
        weight_key: str = "__weight__",
        cache_shards: int = 4,
        index_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.uid_key, self.weight_key, self.cache_shards = uid_key, weight_key, max(1, cache_shards)
        if isinstance(manifest, Manifest):
            self._index_path: Path | None = None
            self._table: pa.Table | None = _index_table(manifest.table)
        else:
            self._index_path = build_index(manifest, index_dir)
            self._table = None
        self._offsets: dict[str, list[int]] | None = None
        self._cache: OrderedDict[str, dict[str, tuple[str, float]]] = OrderedDict()
        self._names: dict[str, str] = {}
        self.seen = 0
        self.kept = 0

    # Workers receive a pickled copy: ship the path, not the mapped table.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._index_path is not None:
            state["_table"] = None
            state["_offsets"] = None
        state["_cache"] = OrderedDict()
        return state

    def _open(self) -> pa.Table:
        if self._table is None:
            assert self._index_path is not None
            source = pa.memory_map(str(self._index_path), "r")
            self._table = pa.ipc.open_file(source).read_all()
        if self._offsets is None:
            meta = json.loads((self._table.schema.metadata or {})[_META])
            self._offsets = meta["offsets"]
        return self._table

    @property
    def shards(self) -> list[str]:
        """Shard names that hold kept samples."""
        self._open()
        assert self._offsets is not None
        return list(self._offsets)

    def __len__(self) -> int:
        return self._open().num_rows

    def _entries(self, shard: str) -> dict[str, tuple[str, float]] | None:
        """``key -> (uid, weight)`` of one shard, built on first use and kept in a small LRU."""
        entries = self._cache.get(shard)
        if entries is not None:
            self._cache.move_to_end(shard)
            return entries
        table = self._open()
        assert self._offsets is not None
        span = self._offsets.get(shard)
        if span is None:
            return None
        part = table.slice(span[0], span[1] - span[0])
        entries = dict(
            zip(
                part.column("key").to_pylist(),
                zip(part.column("uid").to_pylist(), part.column("weight").to_pylist(), strict=True),
                strict=True,
            )
        )
        self._cache[shard] = entries
        if len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return entries

    def lookup(self, shard: str, key: str) -> tuple[str, float] | None:
        """(uid, weight) of a sample, or None when the manifest does not hold it."""
        entries = self._entries(shard)
        return entries.get(key) if entries else None

    def _shard_of(self, url: str) -> str:
        name = self._names.get(url)
        if name is None:
            name = self._names[url] = shard_name(url)
        return name

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The stage: yield the samples of ``src`` that the manifest keeps, with uid and weight."""
        for sample in src:
            self.seen += 1
            hit = self.lookup(self._shard_of(sample.get("__url__", "")), sample["__key__"])
            if hit is None:
                continue
            sample[self.uid_key], sample[self.weight_key] = hit
            self.kept += 1
            yield sample
