"""Reading a synthetic world's ground truth back from its shards (the json members' ``truth`` objects)."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.schemas import TRUTH_SCHEMA

__all__ = ["read_truth"]


def _iter_paths(shard_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(shard_paths, str | os.PathLike):
        return [Path(shard_paths)]
    return [Path(p) for p in shard_paths]


def read_truth(shard_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pa.Table:
    """Ground truth of synthetic shards as a table (schema ``curate.schemas.TRUTH_SCHEMA``), one row per sample.

    Reads only the ``.json`` members with :mod:`tarfile`; rows follow shard then member order.
    ``shard`` is the file's basename without ``.tar``; ``key`` is the WebDataset key of the member.
    Raises ``ValueError`` for a json member without a ``truth`` object (not a synthetic shard).
    """
    columns: dict[str, list[Any]] = {name: [] for name in TRUTH_SCHEMA.names}
    for path in _iter_paths(shard_paths):
        shard = path.name[: -len(".tar")] if path.name.endswith(".tar") else path.name
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".json"):
                    continue
                folder, _, base = member.name.rpartition("/")
                key = (f"{folder}/" if folder else "") + base.split(".", 1)[0]
                fh = tar.extractfile(member)
                meta = json.loads(fh.read() if fh is not None else b"null")
                truth = meta.get("truth") if isinstance(meta, dict) else None
                if not isinstance(truth, dict):
                    raise ValueError(f"{path}: member {member.name!r} has no 'truth' object")
                columns["uid"].append(meta["uid"])
                columns["key"].append(key)
                columns["shard"].append(shard)
                for name in ("class", "class_id", "mismatched", "duplicate_of", "duplicate_kind", "uninformative"):
                    columns[name].append(truth[name])
    return pa.Table.from_pydict(columns, schema=TRUTH_SCHEMA)
