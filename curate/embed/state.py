"""Which shards of a run are embedded, pending, or changed since they were embedded.

A shard is *done* when ``RUN/embeddings/<shard>.parquet`` exists (tables appear only by atomic rename).
Each table carries, in its Parquet metadata, the fingerprint (size and mtime, or etag) its shard had
when it was read; a shard whose current fingerprint differs, or that has gone, is *changed*.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import InputError
from curate.fs import exclusive_lock, read_json
from curate.io.shards import fingerprint, shard_name
from curate.io.tables import table_metadata
from curate.rundir import RunDir

STEP = "embed"

#: Fingerprint fields compared to decide whether a shard changed (those present on both sides).
FINGERPRINT_KEYS = ("size", "mtime_ns", "etag")


def current_fingerprint(url: str) -> dict[str, Any]:
    """The shard's fingerprint now; ``{"url": url, "missing": True}`` when it can't be found."""
    try:
        return fingerprint(url)
    except OSError:
        return {"url": url, "missing": True}


def fingerprint_changed(recorded: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """True when ``current`` shows the shard gone or different from ``recorded``.

    Only fields known on both sides are compared: ``pipe:`` URLs and stores without size or etag
    can't be checked and count as unchanged.
    """
    if current.get("missing"):
        return True
    if not recorded:
        return False
    return any(
        recorded.get(k) is not None and current.get(k) is not None and recorded[k] != current[k]
        for k in FINGERPRINT_KEYS
    )


@dataclass
class ShardState:
    """One shard of a run: where it is, whether it is embedded, and whether it changed since."""

    name: str
    url: str
    done: bool
    recorded: dict[str, Any] | None  # fingerprint stored with the table (None when not done)
    current: dict[str, Any]

    @property
    def changed(self) -> bool:
        return self.done and fingerprint_changed(self.recorded, self.current)

    @property
    def missing(self) -> bool:
        return bool(self.current.get("missing"))

    def record(self) -> dict[str, Any]:
        """The run.json entry: name, url and the fingerprint of the bytes that were (or will be) embedded."""
        fp = self.recorded if self.done and self.recorded else self.current
        return {"name": self.name, **{k: v for k, v in fp.items() if k != "missing"}, "url": self.url}


def recorded_fingerprint(table_path: Path) -> dict[str, Any] | None:
    """The shard fingerprint stored in an embedding table's metadata (None for older tables)."""
    return table_metadata(table_path).get("source")


def shard_states(run: RunDir, urls: Sequence[str]) -> list[ShardState]:
    """The state of each shard URL in ``run`` (fingerprints are read from the tables, not run.json)."""
    out = []
    for url in urls:
        name = shard_name(url)
        path = run.embedding_file(name)
        done = path.exists()
        out.append(ShardState(name, url, done, recorded_fingerprint(path) if done else None,
                              current_fingerprint(url)))
    return out


def pending_shards(run: RunDir) -> list[str]:
    """Shards the run's ``curate embed`` planned (``run.json`` ``embed.shards``) that have no table yet:
    an embed that was interrupted, is still running, or could not read them (retried by the next run)."""
    planned = (run.load().get(STEP) or {}).get("shards", [])
    return [s["name"] for s in planned if "name" in s and not run.embedding_file(s["name"]).exists()]


def check_pool_complete(run: RunDir, allow_partial: bool = False) -> list[str]:
    """The run's pending shards; an ``InputError`` naming them unless ``allow_partial``.

    Selections and bootstrap rounds describe the pool they were made from: a pool that is still missing
    shards would give a different result once the embed finishes, so it is used only when asked for.
    """
    pending = pending_shards(run)
    if pending and not allow_partial:
        planned = len((run.load().get(STEP) or {}).get("shards", []))
        first = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
        raise InputError(
            f"{run.root} is not fully embedded: {len(pending)} of {planned} shards are pending ({first}); "
            "finish with the same 'curate embed ... --run' command, or pass --allow-partial to use the "
            f"{planned - len(pending)} embedded shards"
        )
    return pending


def run_shard_urls(run: RunDir) -> list[str]:
    """The shard URLs a run's ``run.json`` lists under ``embed.shards``, in order."""
    return list(run.shard_urls().values())


@contextlib.contextmanager
def run_lock(run: RunDir, step: str) -> Iterator[None]:
    """Hold an exclusive lock on ``RUN/.<step>.lock`` for one writer; fail fast when another holds it.

    The OS releases the lock when its process dies, so a killed run never blocks the next one.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run.root / f".{step}.lock",
                        f"another 'curate {step}' is writing to {run.root}; wait for it to finish"):
        yield


#: Shard problems that may be transient (network, permissions): such a shard is not marked done.
RETRYABLE_PROBLEMS = ("shard_unreadable_shard",)


def retryable(stats: dict[str, int]) -> bool:
    """True when a shard's stats show a problem worth retrying on the next run."""
    return any(stats.get(k) for k in RETRYABLE_PROBLEMS)


def aggregate_stats(run: RunDir, shard_names: list[str]) -> dict[str, Any]:
    """Sum the per-shard stats of the embedded shards among ``shard_names`` (``RUN/stats/embed.json``).

    A shard's stats are read from its table's metadata, written in the same atomic rename as its rows,
    so counts always describe the tables present (``stats/embed/<shard>.json`` is a copy for people).
    Shards that could not be read (no table) count with the problem of their last attempt.
    """
    total: Counter[str] = Counter()
    per_shard: dict[str, dict[str, int]] = {}
    for name in shard_names:
        path, json_path = run.embedding_file(name), run.shard_stats_file(STEP, name)
        if path.exists():
            s = table_metadata(path).get("stats")
            if s is None:  # tables written before stats moved into the metadata
                s = read_json(json_path) if json_path.exists() else {}
        elif json_path.exists() and retryable(s := read_json(json_path)):
            pass  # the shard could not be read last time: counted, and tried again by the next run
        else:
            continue
        per_shard[name] = s
        total.update({k: v for k, v in s.items() if isinstance(v, int)})
    total["shards"] = len(per_shard)
    return {"totals": dict(sorted(total.items())), "shards": per_shard}
