"""Merge the manifests of several runs (sub-pools of one pool, selected separately) into one manifest.

Large pools are selected in sub-pools (docs/scale.md): each part is embedded into its own run and
selected there. ``merge_manifests`` joins the parts' manifests into the one manifest a trainer reads.
The parts must be disjoint: no uid and no shard name in two inputs (the trainer kit finds samples by
shard name and key). The merged header lists its sources (path, run, content hash, counts) and the URL
of every shard it keeps, so ``curate export --format urls`` and ``curate reshard`` work on it without a
run folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.io.export import run_of_manifest
from curate.io.manifest import Manifest, build_manifest, manifest_path_of, read_manifest, write_manifest
from curate.rundir import RunDir


def shard_url_map(manifest: Manifest, path: Path) -> dict[str, str]:
    """Shard name → URL for a manifest: from its header (merged manifests), else from its run's run.json."""
    if manifest.header.get("shard_urls"):
        return dict(manifest.header["shard_urls"])
    run = run_of_manifest(path)
    if run is None:
        return {}
    return RunDir(run).shard_urls()


def merge_manifests(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, force: bool = False,
    command: str = "curate merge",
) -> Manifest:
    """Write the union of disjoint manifests to ``out`` (.parquet + .json header) and return it."""
    if len(paths) < 2:
        raise UsageError("merge needs at least two manifests")
    out = Path(out)
    if out.suffix != ".parquet":
        raise UsageError(f"--out must be a .parquet file (got {out})")
    files = [manifest_path_of(p) for p in paths]
    if len({f.resolve() for f in files}) != len(files):
        raise UsageError("a manifest is given twice")
    if out.resolve() in {f.resolve() for f in files}:
        raise UsageError(f"--out {out} is one of the inputs; write the merge to a new file")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    manifests = [read_manifest(f) for f in files]
    owner: dict[str, int] = {}
    for i, m in enumerate(manifests):
        for name in pc.unique(m.table.column("shard")).to_pylist():
            if name in owner:
                raise InputError(f"shard {name!r} is in both {files[owner[name]]} and {files[i]}: merge joins "
                                 "manifests of disjoint sub-pools (shard names must be unique across them)")
            owner[name] = i
    urls: dict[str, str] = {}
    sources: list[dict[str, Any]] = []
    pruned: Counter[str] = Counter()
    pools: list[Any] = []
    for f, m in zip(files, manifests, strict=True):
        mapping = shard_url_map(m, f)
        names = pc.unique(m.table.column("shard")).to_pylist()
        urls.update({n: mapping[n] for n in names if n in mapping})
        counts = m.header.get("counts") or {}
        pools.append(counts.get("pool"))
        pruned.update(counts.get("pruned_by_reason") or {})
        run = run_of_manifest(f)
        sources.append({"manifest": str(f.resolve()), "run": str(run) if run else None, "kind": m.header.get("kind"),
                        "content_hash": m.header.get("content_hash"), "kept": len(m), "pool": counts.get("pool")})
    pool = sum(pools) if all(isinstance(p, int) for p in pools) else None
    table = pa.concat_tables([m.table for m in manifests])
    dupes = len(table) - pc.count_distinct(table.column("uid")).as_py()
    if dupes:
        raise InputError(f"{dupes} uid(s) appear in more than one manifest: merge joins disjoint sub-pools")
    merged = build_manifest(
        table, kind="merge", command=command, params={"inputs": [str(f) for f in files]}, pool_size=pool,
        pruned_by_reason=dict(pruned), extra={"sources": sources, "shard_urls": dict(sorted(urls.items()))},
    )
    write_manifest(out, merged)
    return merged
