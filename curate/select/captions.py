"""Captions of pool rows, read back from the run's shards.

The embedding tables hold no caption text, so a method that needs captions (metaclip) reads them from
the shards ``run.json`` lists, through curate's shard reader: samples are grouped exactly as ``curate
embed`` grouped them, so a row's ``(key, position)`` finds its sample. Only the ``txt`` member is kept;
image bytes pass through the reader and are never decoded. A shard whose fingerprint (size and mtime,
or etag) differs from the one recorded with its embedding table (or in ``run.json``, for tables without
one), or that no longer holds a row's sample at its position, is refused: its captions may not be the
ones that were embedded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.errors import InputError
from curate.io.shards import ErrorPolicy, iter_shard


def shard_sources(run_root: Path, shards: list[str]) -> dict[str, dict[str, Any]]:
    """``{shard name: run.json's record}`` (``url`` and the fingerprint embed recorded) of ``shards``;
    a one-line error when one has no URL."""
    from curate.rundir import RunDir

    listed = {s["name"]: s for s in RunDir(run_root).embedded_shards()}
    missing = [s for s in shards if s not in listed]
    if missing:
        raise InputError(f"run.json lists no URL for shard {missing[0]!r} ({len(missing)} of {len(shards)} "
                         "shards); captions are read back from the shards that were embedded")
    return {s: listed[s] for s in shards}


def check_shard(name: str, url: str, table: Path, listed: Mapping[str, Any] | None = None) -> None:
    """Refuse a shard that is gone or changed since its embedding table was written (the fingerprint
    stored with the table; for tables without one, the one ``run.json`` lists)."""
    from curate.embed.state import current_fingerprint, fingerprint_changed, recorded_fingerprint

    now = current_fingerprint(url)
    if now.get("missing"):
        raise InputError(f"shard {name} is gone ({url}); its captions are needed (restore it, or re-embed "
                         "without it)")
    recorded = recorded_fingerprint(table) or {k: v for k, v in (listed or {}).items() if k not in ("name", "url")}
    if fingerprint_changed(recorded, now):
        raise InputError(f"shard {name} changed since it was embedded ({url}); re-run 'curate embed' on it so "
                         "that captions and embeddings agree")


def shard_captions(name: str, url: str, keys: list[str], positions: np.ndarray) -> list[str | None]:
    """Captions (None: no ``txt`` member) of the samples at ``positions`` (ascending) of one shard.

    The shard is streamed from its start up to the last position asked for; each sample found must
    carry the key its row was embedded with.
    """
    want = {int(p): i for i, p in enumerate(positions)}
    out: list[str | None] = [None] * len(keys)
    found = np.zeros(len(keys), bool)
    last = int(positions[-1]) if len(positions) else -1
    stats: Counter[str] = Counter()
    for sample in iter_shard(url, ErrorPolicy(), stats):
        i = want.get(sample.position)
        if i is not None:
            if sample.key != keys[i]:
                raise InputError(f"shard {name} changed since it was embedded: position {sample.position} holds "
                                 f"sample {sample.key!r}, not {keys[i]!r}; re-run 'curate embed' on it")
            out[i] = sample.caption
            found[i] = True
        if sample.position >= last:
            break
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        why = "it could not be read" if stats.get("shard_unreadable_shard") else "it changed since it was embedded"
        raise InputError(f"shard {name} ({url}) no longer holds sample {keys[i]!r} (position {int(positions[i])}): "
                         f"{why}")
    return out


def read_captions(ids: pa.Table, sources: Mapping[str, Mapping[str, Any]], run_root: Path) -> list[str | None]:
    """Captions of pool rows ``ids`` (``shard, key, position``; rows of a shard in table order), one
    shard run at a time, each shard checked against its recorded fingerprint first (``sources``: from
    :func:`shard_sources`)."""
    from curate.rundir import RunDir

    shard = ids.column("shard").to_pylist()
    keys = ids.column("key").to_pylist()
    pos = ids.column("position").to_numpy()
    out: list[str | None] = []
    run = RunDir(run_root)
    a = 0
    while a < len(shard):
        b = a
        while b < len(shard) and shard[b] == shard[a]:
            b += 1
        name = shard[a]
        listed = sources.get(name)
        if listed is None:
            raise InputError(f"run.json lists no URL for shard {name!r}; captions are read back from the shards")
        url = str(listed["url"])
        check_shard(name, url, run.embedding_file(name), listed)
        out.extend(shard_captions(name, url, keys[a:b], pos[a:b]))
        a = b
    return out
