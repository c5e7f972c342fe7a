"""Manifests: the subset a trainer should read (README.md, "Data contracts": manifest).

A manifest is a Parquet table ``uid, shard, key, position, weight`` sorted by (shard, position) with a
JSON header. The header is stored twice: as ``<name>.json`` beside the Parquet file (for people and
shell tools) and in the Parquet schema metadata (so the Parquet file is self-contained).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import InputError
from curate.fs import atomic_path, make_temp_file, write_json
from curate.io.shards import expand_shards, shard_name
from curate.io.tables import RowGroupWriter, read_parquet
from curate.rundir import RunDir
from curate.schemas import MANIFEST_FORMAT_VERSION, MANIFEST_HEADER_KEY, MANIFEST_SCHEMA, check_version


@dataclass
class Manifest:
    """A manifest table plus its header."""

    table: pa.Table
    header: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def uids(self) -> np.ndarray:
        return self.table.column("uid").to_numpy(zero_copy_only=False)


def _joined(uids: pa.Array) -> bytes:
    """``"\n".join(uids.to_pylist()).encode()`` straight from the Arrow buffers (no Python strings)."""
    n = len(uids)
    if n == 0:
        return b""
    if uids.null_count or not (pa.types.is_string(uids.type) or pa.types.is_large_string(uids.type)):
        return "\n".join(uids.to_pylist()).encode()  # (a null raises here, as it always did)
    dtype = np.int64 if pa.types.is_large_string(uids.type) else np.int32
    offs = np.frombuffer(uids.buffers()[1], dtype)[uids.offset : uids.offset + n + 1].astype(np.int64)
    size = int(offs[-1] - offs[0])
    if size == 0:
        return b"\n" * (n - 1)
    data = np.frombuffer(uids.buffers()[2], np.uint8, count=size, offset=int(offs[0]))
    lengths = np.diff(offs)
    if bool(np.all(lengths == lengths[0])):  # all of one length (hex uids): one reshape
        width = int(lengths[0])
        rows = np.full((n, width + 1), ord("\n"), np.uint8)
        rows[:, :width] = data.reshape(n, width)
        return rows.reshape(-1)[:-1].tobytes()
    out = np.full(size + n - 1, ord("\n"), np.uint8)
    keep = np.ones(len(out), bool)
    keep[offs[1:-1] - offs[0] + np.arange(n - 1)] = False  # the separator after value i sits at end_i + i
    out[keep] = data
    return out.tobytes()


def content_hash(table: pa.Table) -> str:
    """sha256 over the sorted manifest rows (uid, weight): equal hash means the same subset."""
    h = hashlib.sha256()
    for batch in table.select(["uid", "weight"]).to_batches(max_chunksize=1 << 16):
        h.update(_joined(batch.column(0)))
        h.update(batch.column(1).to_numpy(zero_copy_only=False).astype("<f4").tobytes())
    return h.hexdigest()


def build_manifest(
    rows: pa.Table,
    *,
    kind: str,
    command: str,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    round: int | None = None,
    phase: str | None = None,
    parent: str | None = None,
    pool_size: int | None = None,
    pruned_by_reason: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    presorted: bool = False,
) -> Manifest:
    """Validate, sort and describe a set of kept rows.

    ``presorted=True``: the caller guarantees ``rows`` are sorted by (shard, position) with unique uids
    (skips the sort and the duplicate check, ~9 s at 10M rows; used by ``curate bootstrap``).
    ``rows`` needs ``uid, shard, key, position`` and may carry ``weight`` (default 1.0). ``pool_size``
    is the number of samples the subset was chosen from (to count pruned samples).
    """
    missing = {"uid", "shard", "key", "position"} - set(rows.column_names)
    if missing:
        raise ValueError(f"manifest rows lack columns {sorted(missing)}")
    if "weight" not in rows.column_names:
        rows = rows.append_column("weight", pa.array(np.ones(rows.num_rows, np.float32)))
    table = rows.select(["uid", "shard", "key", "position", "weight"]).cast(MANIFEST_SCHEMA)
    if not presorted:
        table = table.sort_by([("shard", "ascending"), ("position", "ascending")])
    if not presorted and pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise InputError("manifest has duplicate uids")
    w = table.column("weight").to_numpy()
    if len(w) and (not np.all(np.isfinite(w)) or np.any(w <= 0)):
        raise InputError("manifest weights must be finite and positive")
    if presorted:
        shards, counts = _runs(table.column("shard"))
    else:
        per_shard = table.group_by("shard").aggregate([("uid", "count")]).sort_by("shard")
        shards, counts = per_shard.column("shard").to_pylist(), per_shard.column("uid_count").to_pylist()
    kept = table.num_rows
    pruned = (pool_size - kept) if pool_size is not None else None
    header: dict[str, Any] = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "kind": kind,
        "command": command,
        "params": params or {},
        "seed": seed,
        "round": round,
        "phase": phase,
        "parent": parent,
        "counts": {
            "pool": pool_size,
            "kept": kept,
            "pruned": pruned,
            "pruned_by_reason": dict(sorted((pruned_by_reason or {}).items())),
        },
        "shards": [{"shard": s, "kept": int(c)} for s, c in zip(shards, counts, strict=True)],
        "weighted": bool(len(w) and np.any(w != 1.0)),
        "content_hash": content_hash(table),
    }
    if extra:
        header.update(extra)
    return Manifest(table, header)


def read_manifest_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest's JSON header, from its Parquet footer (the rows are not read)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        md = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None
    raw = md.get(MANIFEST_HEADER_KEY)
    return json.loads(raw) if raw else {}


class ManifestWriter:
    """Write a manifest whose rows arrive in pieces, already in (shard, position) order.

    The file is the one :func:`write_manifest` writes for :func:`build_manifest` over all the rows
    (``presorted``): the same header, the same row groups, the same bytes. Memory is one piece plus one
    row group: the rows go to a temporary Arrow file as they come (uncompressed), and :meth:`finish`
    writes the Parquet file with the header in its metadata, atomically.

    ``hash_batches`` says how the content hash cuts the rows, as :func:`content_hash` does for a table:
    ``"rows"`` in 65,536-row batches of all the rows (a table of one chunk, as a sort gives), ``"pieces"``
    in each added table's own record batches of at most 65,536 rows (the concatenation of the pieces as
    they are: what ``bootstrap`` has always hashed, its rows being cut from the pool's 65,536-row chunks).

    ``keep_rows=False``: for a caller that can produce the rows twice (``bootstrap`` cuts them from the pool
    by a keep mask). ``add`` then only checks, counts and hashes them, nothing is stored, and ``finish``
    takes the same rows again (``rows=``) and writes them straight into the Parquet file.
    """

    BATCH = 1 << 16

    def __init__(self, path: str | os.PathLike[str], *, hash_batches: str = "rows", keep_rows: bool = True) -> None:
        self.path = Path(path)
        if self.path.suffix != ".parquet":
            raise ValueError(f"manifest path must end in .parquet: {self.path}")
        if hash_batches not in ("rows", "pieces"):
            raise ValueError(f"hash_batches must be 'rows' or 'pieces', got {hash_batches!r}")
        self._pieces = hash_batches == "pieces"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: Path | None = None
        self._writer: Any = None
        if keep_rows:
            self._rows = make_temp_file(self.path.parent, f".{self.path.name}.{os.getpid()}-rows-", ".tmp")
            self._sink = pa.OSFile(str(self._rows), "wb")
            self._writer = pa.ipc.new_stream(self._sink, MANIFEST_SCHEMA)
        self._hash = hashlib.sha256()
        self._pending: list[pa.Table] = []
        self._held = 0
        self._last: tuple[str, int] | None = None
        self.shards: list[str] = []
        self.counts: list[int] = []
        self.kept = 0
        self.weighted = False

    def add(self, rows: pa.Table) -> None:
        """Append rows ``uid, shard, key, position[, weight]`` that follow every row added before
        (``keep_rows=False``: ``key`` may be left out, it is not needed until ``finish``)."""
        if rows.num_rows == 0:
            return
        table = _manifest_rows(rows, key=self._writer is not None)
        w = table.column("weight").to_numpy()
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise InputError("manifest weights must be finite and positive")
        names, lengths = _runs(table.column("shard"))
        pos = table.column("position").to_numpy()
        starts = np.cumsum([0, *lengths[:-1]])
        step = np.diff(pos) > 0
        step[starts[1:] - 1] = True  # a new shard may start at any position
        first = (names[0], int(pos[0]))
        if (not bool(np.all(step)) or any(a >= b for a, b in itertools.pairwise(names))
                or (self._last is not None and first <= self._last)):
            raise InputError("manifest rows out of (shard, position) order")
        self._last = (names[-1], int(pos[-1]))
        self.weighted = self.weighted or bool(np.any(w != 1.0))
        for name, n in zip(names, lengths, strict=True):
            if self.shards and self.shards[-1] == name:
                self.counts[-1] += n
            else:
                self.shards.append(name)
                self.counts.append(n)
        if self._writer is not None:
            self._writer.write_table(table)
        self.kept += table.num_rows
        if self._pieces:
            for batch in table.select(["uid", "weight"]).to_batches(max_chunksize=self.BATCH):
                self._hash_batch(batch)
            return
        self._pending.append(table.select(["uid", "weight"]))
        self._held += table.num_rows
        while self._held >= self.BATCH:
            self._hash_rows(self.BATCH)

    def _hash_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        uids = batch.column(0)
        if isinstance(uids, pa.ChunkedArray):
            uids = uids.combine_chunks() if uids.num_chunks != 1 else uids.chunk(0)
        self._hash.update(_joined(uids))
        self._hash.update(batch.column(1).to_numpy(zero_copy_only=False).astype("<f4").tobytes())

    def _hash_rows(self, n: int) -> None:
        t = pa.concat_tables(self._pending)
        self._hash_batch(t.slice(0, n))
        rest = t.slice(n)
        self._pending, self._held = ([rest] if rest.num_rows else []), rest.num_rows

    def finish(self, *, kind: str, command: str, pool_size: int | None = None,
               rows: Iterable[pa.Table] | None = None, **header: Any) -> dict[str, Any]:
        """Write the manifest (and its .json header) atomically; return the header.

        ``header``: ``params, seed, round, phase, parent, pruned_by_reason, extra`` as for ``build_manifest``.
        ``rows``: with ``keep_rows=False``, the added rows again, in the same order.
        """
        if self._held:
            self._hash_rows(self._held)
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
        elif rows is None:
            raise ValueError("ManifestWriter(keep_rows=False).finish needs the rows again")
        pruned = (pool_size - self.kept) if pool_size is not None else None
        head: dict[str, Any] = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "kind": kind,
            "command": command,
            "params": header.get("params") or {},
            "seed": header.get("seed"),
            "round": header.get("round"),
            "phase": header.get("phase"),
            "parent": header.get("parent"),
            "counts": {
                "pool": pool_size,
                "kept": self.kept,
                "pruned": pruned,
                "pruned_by_reason": dict(sorted((header.get("pruned_by_reason") or {}).items())),
            },
            "shards": [{"shard": s, "kept": int(c)} for s, c in zip(self.shards, self.counts, strict=True)],
            "weighted": self.weighted,
            "content_hash": self._hash.hexdigest(),
        }
        head.update(header.get("extra") or {})
        schema = MANIFEST_SCHEMA.with_metadata({MANIFEST_HEADER_KEY: json.dumps(head, sort_keys=True).encode()})
        try:
            with atomic_path(self.path) as tmp:
                out = RowGroupWriter(tmp, schema, combine=["weight"])
                try:
                    for table in self._stored() if rows is None else (_manifest_rows(t) for t in rows if t.num_rows):
                        out.write(table.replace_schema_metadata(schema.metadata))
                    if out.rows != self.kept:
                        raise ValueError(f"finish got {out.rows} rows, add had {self.kept}")
                except BaseException:
                    out.abort()
                    raise
                out.close()
        finally:
            if self._rows is not None:
                self._rows.unlink(missing_ok=True)
        write_json(header_path(self.path), head)
        return head

    def _stored(self) -> Iterator[pa.Table]:
        assert self._rows is not None
        with pa.OSFile(str(self._rows), "rb") as src:
            for batch in pa.ipc.open_stream(src):
                yield pa.Table.from_batches([batch])

    def abort(self) -> None:
        """Drop what was written (an error before ``finish``)."""
        if self._writer is None or self._rows is None:
            return
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self._rows.unlink(missing_ok=True)


def _manifest_rows(rows: pa.Table, key: bool = True) -> pa.Table:
    """``rows`` as manifest columns (weight 1 where absent; without ``key`` unless asked)."""
    if "weight" not in rows.column_names:
        rows = rows.append_column("weight", pa.array(np.ones(rows.num_rows, np.float32)))
    schema = MANIFEST_SCHEMA if key else pa.schema([f for f in MANIFEST_SCHEMA if f.name != "key"])
    return rows.select(schema.names).cast(schema)


def _runs(col: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    """Values and lengths of the runs of equal values of a sorted column (per-shard counts without hashing)."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(arr)
    if n == 0:
        return [], []
    change = pc.not_equal(arr.slice(1), arr.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.r_[0, np.flatnonzero(change) + 1]
    return arr.take(pa.array(starts)).to_pylist(), np.diff(np.r_[starts, n]).tolist()


def header_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def write_manifest(path: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``path`` (.parquet) and its ``.json`` header atomically; return the Parquet path."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise ValueError(f"manifest path must end in .parquet: {path}")
    with atomic_path(path) as tmp:
        pq.write_table(manifest_file_table(manifest), tmp)
    write_json(header_path(path), manifest.header)
    return path


def manifest_file_table(manifest: Manifest) -> pa.Table:
    """The table a manifest's Parquet file holds: the rows, with the header in the schema metadata."""
    header = json.dumps(manifest.header, sort_keys=True).encode()
    return manifest.table.replace_schema_metadata({MANIFEST_HEADER_KEY: header})


def manifest_path_of(path: str | os.PathLike[str]) -> Path:
    """The Parquet file of a manifest given as that file, its ``.json`` header, or a selection folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.parquet"
    elif p.suffix == ".json":
        p = p.with_suffix(".parquet")
    if not p.is_file():
        raise InputError(f"manifest not found: {path}")
    return p


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest (.parquet, or its .json header next to it)."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".parquet")
    table = read_parquet(path)
    missing = {"uid", "shard", "key", "weight"} - set(table.column_names)
    if missing:
        raise InputError(f"{path} is not a curate manifest (missing columns {sorted(missing)})")
    raw = (table.schema.metadata or {}).get(MANIFEST_HEADER_KEY)
    header = json.loads(raw) if raw else {}
    if "format_version" in header:  # a manifest curate wrote (one made elsewhere may have no header)
        check_version("manifest", header, path, MANIFEST_FORMAT_VERSION)
    if "position" not in table.column_names:
        table = table.append_column("position", pa.array(np.zeros(table.num_rows, np.int32)))
    return Manifest(table.replace_schema_metadata(None), header)


def kept_shard_names(manifest: Manifest) -> list[str]:
    """Names of the shards that hold kept samples of ``manifest``, in its order."""
    shards = manifest.header.get("shards")
    if shards:
        return [s["shard"] for s in shards if s.get("kept", 1) > 0]
    return pc.unique(manifest.table.column("shard")).sort().to_pylist()


def shard_urls(
    manifest: str | os.PathLike[str] | Manifest,
    urls: str | Sequence[str] | Mapping[str, str] | None = None,
    run: str | os.PathLike[str] | None = None,
) -> list[str]:
    """URLs of the shards that still hold kept samples, in manifest order.

    The name → URL map comes from ``urls`` (a shard spec, a list of URLs, or a mapping), else from the
    manifest's header (merged manifests), else from the run's ``run.json`` (embed section), else the
    bare shard names are returned.
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    names = kept_shard_names(m)
    mapping: dict[str, str] | None = None
    if isinstance(urls, Mapping):
        mapping = dict(urls)
    elif urls is not None:
        mapping = {shard_name(u): u for u in expand_shards(urls)}
    elif m.header.get("shard_urls"):  # a merged manifest (curate merge) carries its shards' URLs
        mapping = dict(m.header["shard_urls"])
    elif run is not None and RunDir(run).exists():
        mapping = RunDir(run).shard_urls() or None
    if mapping is None:
        return names
    missing = [n for n in names if n not in mapping]
    if missing:
        raise InputError(
            f"shard {missing[0]!r} of the manifest is not among the given shard URLs ({len(missing)} missing)"
        )
    return [mapping[n] for n in names]
