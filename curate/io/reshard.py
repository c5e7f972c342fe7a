"""``reshard``: write new WebDataset shards that hold only a manifest's samples.

Source shards are streamed with curate's shard reader (which drops unsafe member names, links and
other non-files), the kept samples are copied member by member (bytes unchanged) into deterministic
tars of ``shard_size`` samples, and the count written is checked against the manifest before the
output folder appears under its final name (everything is first written to a temporary folder).

Crash safety: the temporary folder ``.<out>.tmp-<pid>`` of a killed run is removed by the next run, and
rerunning a reshard that already completed (same manifest content, shard size and sources) finds its
output complete and leaves it as it is, so "run it again" is always the recovery.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.io.export import run_of_manifest
from curate.io.manifest import read_manifest
from curate.io.shards import expand_shards, iter_shard, shard_name
from curate.io.tarwrite import remove_dead_temps, write_tar
from curate.progress import NullProgress, Progress
from curate.run import RunDir, write_json

RESHARD_INFO = "reshard.json"


@dataclass
class ReshardResult:
    """What ``reshard`` wrote."""

    out_dir: Path
    written: int
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"name", "samples"}
    prefixed_keys: bool = False
    complete: bool = False  # ``out_dir`` already held this very reshard: nothing was written
    dry_run: bool = False  # nothing was written: ``written`` and ``shards`` are what would be


def _source_urls(names: list[str], manifest_path: Path, shards: str | None,
                 header_urls: dict[str, str] | None = None) -> dict[str, str]:
    if shards is not None:
        mapping = {shard_name(u): u for u in expand_shards(shards)}
    elif header_urls:  # a merged manifest carries its shards' URLs
        mapping = dict(header_urls)
    else:
        run = run_of_manifest(manifest_path)
        embed = RunDir(run).load().get("embed", {}) if run is not None else {}
        mapping = {s["name"]: s["url"] for s in embed.get("shards", []) if "url" in s}
    missing = [n for n in names if n not in mapping]
    if missing:
        raise InputError(f"no URL for shard {missing[0]!r} ({len(missing)} of {len(names)} shards); pass --shards SPEC")
    return {n: mapping[n] for n in names}


def _completed(out: Path, want: dict[str, Any]) -> ReshardResult | None:
    """The result of an earlier, finished run of this very reshard in ``out``, or None."""
    info_path = out / RESHARD_INFO
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or any(info.get(k) != v for k, v in want.items()):
        return None
    shards = info.get("shards") or []
    if not all(isinstance(s, dict) and (out / str(s.get("name"))).is_file() for s in shards):
        return None
    return ReshardResult(out, int(info.get("samples", 0)), shards, bool(info.get("prefixed_keys")), complete=True)


def _samples(
    wanted: Mapping[str, set[str]],
    urls: Mapping[str, str],
    prefix: bool,
    found: set[tuple[str, str]],
    stats: Counter[str],
    progress: Progress,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    for name, keys in wanted.items():
        for sample in iter_shard(urls[name], stats=stats):
            if sample.key in keys and (name, sample.key) not in found:
                found.add((name, sample.key))
                progress.advance(1)
                yield (f"{name}/{sample.key}" if prefix else sample.key), dict(sample.members)


def reshard(
    manifest_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard_size: int = 10_000,
    shards: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> ReshardResult:
    """Write ``out_dir/{000000..}.tar`` holding exactly the manifest's samples, in manifest order.

    Keys are kept, unless two kept samples of different source shards share a key: then every key
    becomes ``<source shard>/<key>`` so that keys stay unique. ``out_dir/reshard.json`` records the
    source manifest, its content hash, and the per-shard counts. When ``out_dir`` already holds the
    complete output of this very reshard (same manifest content, shard size and sources), it is returned
    as it is: rerunning after a crash is always safe. ``dry_run``: check the manifest, its sources and
    ``out_dir`` and return the shards that would be written, writing nothing.
    """
    if shard_size < 1:
        raise UsageError(f"--shard-size must be a positive integer, got {shard_size}")
    path = Path(manifest_path)
    path = path / "manifest.parquet" if path.is_dir() else path
    manifest = read_manifest(path)
    out = Path(out_dir)
    table = manifest.table
    shard_col = table.column("shard").to_numpy(zero_copy_only=False)
    key_col = table.column("key").to_numpy(zero_copy_only=False)
    names = list(dict.fromkeys(shard_col.tolist()))
    urls = _source_urls(names, path, shards, manifest.header.get("shard_urls"))
    wanted: dict[str, set[str]] = {n: set() for n in names}
    for s, k in zip(shard_col.tolist(), key_col.tolist(), strict=True):
        wanted[s].add(k)
    prefix = pc.count_distinct(table.column("key")).as_py() != table.num_rows
    want = {"manifest": str(path.resolve()), "content_hash": manifest.header.get("content_hash"),
            "shard_size": shard_size, "sources": [urls[n] for n in names]}
    if out.exists() and any(out.iterdir()):
        done = _completed(out, want) if manifest.header.get("content_hash") else None
        if done is not None and not force:
            return done
        if not force:
            raise UsageError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
    if dry_run:
        n = table.num_rows
        plan = [{"name": f"{i:06d}.tar", "samples": min(shard_size, n - first)}
                for i, first in enumerate(range(0, n, shard_size))]
        return ReshardResult(out, n, plan, bool(prefix), dry_run=True)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out.parent, f".{out.name}.tmp-")
    remove_dead_temps(out.parent, f".{out.name}.old-")
    progress = progress or NullProgress()
    progress.start("reshard", total=table.num_rows)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    found: set[tuple[str, str]] = set()
    stats: Counter[str] = Counter()
    written: list[dict[str, Any]] = []
    try:
        it = _samples(wanted, urls, prefix, found, stats, progress)
        for i in itertools.count():
            first = next(it, None)
            if first is None:
                break
            name = f"{i:06d}.tar"
            try:
                n = write_tar(tmp / name, itertools.chain([first], itertools.islice(it, shard_size - 1)))
            except ValueError as exc:  # a key that cannot be a safe member name (e.g. a '..' shard name prefix)
                raise InputError(f"reshard: {exc}") from None
            written.append({"name": name, "samples": n})
        total = sum(w["samples"] for w in written)
        if total != table.num_rows:
            pairs = set(zip(shard_col.tolist(), key_col.tolist(), strict=True)) - found
            miss = ", ".join(f"{s}/{k}" for s, k in sorted(pairs)[:5])
            drops = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k != "seen")
            raise InputError(
                f"reshard found {total} of {table.num_rows} manifest samples; missing {miss}"
                f"{' ...' if len(pairs) > 5 else ''}{f' (reader: {drops})' if drops else ''};"
                " check --shards points at the shards that were embedded"
            )
        write_json(tmp / RESHARD_INFO, {**want, "samples": total, "prefixed_keys": bool(prefix), "shards": written})
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # innermost first; only folders this call created and left empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        progress.finish()
        shutil.rmtree(tmp, ignore_errors=True)
    return ReshardResult(out, int(np.sum([w["samples"] for w in written])), written, bool(prefix))
