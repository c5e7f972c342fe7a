"""``reshard``: write new WebDataset shards that hold only a manifest's samples.

Source shards are streamed with curate's shard reader (which drops unsafe member names, links and
other non-files), the kept samples are copied member by member (bytes unchanged) into deterministic
tars of ``shard_size`` samples, and the count written is checked against the manifest before the
output folder appears under its final name (everything is first written to a temporary folder).

Crash safety: the temporary folder ``.<out>.tmp-<pid>`` of a killed run is removed by the next run, and
rerunning a reshard that already completed (same manifest content, shard size and sources) finds its
output complete and leaves it as it is, so "run it again" is always the recovery.

What may be replaced: ``--out`` must be new, empty, or the output of an earlier reshard (its
``reshard.json`` says so and lists every file in it). ``force`` replaces only such an output, and removes
only the files its ``reshard.json`` lists. The output folder may never be, contain or sit inside a run
folder (a folder with ``run.json``) or a folder holding the source shards.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.fs import pid_alive, remove_dead_temps, run_folder_of, write_json
from curate.io.export import run_of_manifest
from curate.io.manifest import manifest_path_of, read_manifest
from curate.io.shards import expand_shards, iter_shard, shard_name
from curate.io.tarwrite import write_tar
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir

RESHARD_INFO = "reshard.json"
WRITTEN_BY = "curate reshard"  # the marker in reshard.json that says curate's reshard wrote the folder
_SHARD_FILE = re.compile(r"^[0-9]{6,}\.tar$")
_LEGACY_KEYS = {"manifest", "content_hash", "shard_size", "sources", "samples", "prefixed_keys", "shards"}


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


def _read_info(folder: Path) -> dict[str, Any] | None:
    """``folder/reshard.json`` when it says curate's reshard wrote the folder and lists safe file names."""
    try:
        info = json.loads((folder / RESHARD_INFO).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not (info.get("written_by") == WRITTEN_BY or info.keys() >= _LEGACY_KEYS):
        return None
    shards = info.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and _SHARD_FILE.match(s["name"]) for s in shards
    ):
        return None
    return info


def output_files(folder: str | os.PathLike[str]) -> list[str] | None:
    """The files curate's reshard wrote in ``folder`` (from its reshard.json), or None if it is not one's output."""
    info = _read_info(Path(folder))
    return None if info is None else [*(s["name"] for s in info["shards"]), RESHARD_INFO]


def _remove_output(folder: Path) -> None:
    """Remove the files reshard wrote in ``folder`` (those its reshard.json lists), then the folder if empty."""
    for name in output_files(folder) or []:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _remove_dead_old_outputs(parent: Path, prefix: str) -> None:
    """Earlier outputs moved aside by a replacing run that was killed before removing them."""
    pat = re.compile(re.escape(prefix) + r"(\d+)$")
    if parent.is_dir():
        for p in parent.iterdir():
            m = pat.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and not pid_alive(int(m.group(1))):
                _remove_output(p)


def _local_folder(url: str) -> Path | None:
    """The folder of a local shard path (None for ``pipe:`` commands and remote URLs)."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if url.startswith("pipe:") or "://" in url:
        return None
    return Path(url).resolve().parent


def _inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or lies inside it (resolved paths)."""
    return a == b or b in a.parents


def check_output_folder(out: str | os.PathLike[str], sources: list[str]) -> None:
    """Refuse an output folder that is, contains or sits inside a run folder or a source shards' folder."""
    out = Path(out)
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the folder itself")
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    here = out.resolve()
    run = run_folder_of(here)
    if run is not None:
        where = "is" if run == here else f"is inside {run}, which is"
        raise UsageError(f"--out {out} {where} a curate run folder; write the new shards outside any run")
    if here.is_dir() and any(here.glob("*/run.json")):
        raise UsageError(f"--out {out} contains a curate run folder; write the new shards to a folder of their own")
    for folder in dict.fromkeys(f for f in map(_local_folder, sources) if f is not None):
        if _inside(here, folder) or _inside(folder, here):
            how = "is" if here == folder else "is inside" if _inside(here, folder) else "contains"
            raise UsageError(f"--out {out} {how} the folder of the source shards ({folder}); choose another --out")


def _check_existing(out: Path, force: bool, want: dict[str, Any], hashed: bool) -> ReshardResult | None:
    """What an existing ``out`` allows: the finished result of this reshard, replacing it, or an error."""
    if not out.is_dir():
        return None
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return None
    own = output_files(out)
    if own is None:
        raise UsageError(f"{out} is not empty and is not the output of an earlier 'curate reshard' "
                         "(no reshard.json of it); choose another --out")
    done = _completed(out, want) if hashed else None
    if done is not None and not force:
        return done
    extra = [e for e in entries if e not in own]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UsageError(f"{out} holds files reshard did not write ({extra[0]}{more}); move them out or choose "
                         "another --out")
    if not force:
        raise UsageError(f"{out} is not empty: it holds another reshard's output; pass --force to replace it "
                         "or choose another --out")
    return None


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
    as it is: rerunning after a crash is always safe. ``force`` replaces an earlier reshard output (and
    nothing else: see the module docstring). ``dry_run``: check the manifest, its sources and ``out_dir``
    and return the shards that would be written, writing nothing.
    """
    if shard_size < 1:
        raise UsageError(f"--shard-size must be a positive integer, got {shard_size}")
    plan = _plan(manifest_path, shards, shard_size)
    out = Path(out_dir)
    check_output_folder(out, plan.want["sources"])
    done = _check_existing(out, force, plan.want, bool(plan.want["content_hash"]))
    if done is not None:
        return done
    n = plan.table.num_rows
    if dry_run:
        shards_planned = [{"name": f"{i:06d}.tar", "samples": min(shard_size, n - first)}
                          for i, first in enumerate(range(0, n, shard_size))]
        return ReshardResult(out, n, shards_planned, plan.prefix, dry_run=True)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out.parent, f".{out.name}.tmp-")
    _remove_dead_old_outputs(out.parent, f".{out.name}.old-")
    progress = progress or NullProgress()
    progress.start("reshard", total=n)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = _write_shards(plan, tmp, shard_size, progress)
        write_json(tmp / RESHARD_INFO, {**plan.want, "samples": n, "prefixed_keys": plan.prefix, "shards": written,
                                        "written_by": WRITTEN_BY})
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # innermost first; only folders this call created and left empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        progress.finish()
        shutil.rmtree(tmp, ignore_errors=True)
    return ReshardResult(out, int(np.sum([w["samples"] for w in written])), written, plan.prefix)


@dataclass
class _Plan:
    """What a reshard reads: the manifest's rows, the keys wanted per source shard, their URLs."""

    table: pa.Table
    wanted: dict[str, set[str]]  # source shard name -> keys
    urls: dict[str, str]  # source shard name -> URL
    prefix: bool  # keys repeat across source shards: written as <source shard>/<key>
    want: dict[str, Any]  # the reshard.json fields that identify this very reshard


def _plan(manifest_path: str | os.PathLike[str], shards: str | None, shard_size: int) -> _Plan:
    """Read the manifest and resolve its source shards."""
    path = manifest_path_of(manifest_path)
    manifest = read_manifest(path)
    table = manifest.table
    names = list(dict.fromkeys(table.column("shard").to_pylist()))
    urls = _source_urls(names, path, shards, manifest.header.get("shard_urls"))
    wanted: dict[str, set[str]] = {n: set() for n in names}
    for s, k in zip(table.column("shard").to_pylist(), table.column("key").to_pylist(), strict=True):
        wanted[s].add(k)
    prefix = pc.count_distinct(table.column("key")).as_py() != table.num_rows
    want = {"manifest": str(path.resolve()), "content_hash": manifest.header.get("content_hash"),
            "shard_size": shard_size, "sources": [urls[n] for n in names]}
    return _Plan(table, wanted, urls, bool(prefix), want)


def _write_shards(plan: _Plan, tmp: Path, shard_size: int, progress: Progress) -> list[dict[str, Any]]:
    """Write the manifest's samples into ``tmp/{000000..}.tar``; every one of them must be found."""
    found: set[tuple[str, str]] = set()
    stats: Counter[str] = Counter()
    written: list[dict[str, Any]] = []
    it = _samples(plan.wanted, plan.urls, plan.prefix, found, stats, progress)
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
    total, rows = sum(w["samples"] for w in written), plan.table.num_rows
    if total != rows:
        table = plan.table
        pairs = set(zip(table.column("shard").to_pylist(), table.column("key").to_pylist(), strict=True)) - found
        miss = ", ".join(f"{s}/{k}" for s, k in sorted(pairs)[:5])
        drops = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k != "seen")
        raise InputError(
            f"reshard found {total} of {rows} manifest samples; missing {miss}"
            f"{' ...' if len(pairs) > 5 else ''}{f' (reader: {drops})' if drops else ''};"
            " check --shards points at the shards that were embedded"
        )
    return written


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, moving an earlier reshard output aside and then removing it."""
    old = None
    if out.exists():  # empty, or an earlier reshard output (checked before anything was written)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        _remove_output(old)
