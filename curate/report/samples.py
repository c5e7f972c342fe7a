"""Gallery samples: choose a few kept and pruned samples per gallery and read them from a few shards.

Reading is bounded: galleries draw their samples from at most ``max_shards`` shards (picked with a
seeded generator, the same for every gallery), so a report of a billion-sample run reads a handful of
tars. While those shards stream, the ground truth of synthetic shards (json ``truth``) is collected
for every sample in them, so each gallery can compare defect rates of kept and pruned samples.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.io.shards import SampleError, decode_image, iter_shard

#: Ground-truth labels of the synthetic world, in display order (``clean`` = none of the others).
TRUTH_LABELS = ("clean", "mismatched", "exact duplicate", "near duplicate", "uninformative")


def truth_label(truth: dict[str, Any]) -> str:
    """One label for a sample's json ``truth`` object."""
    if truth.get("mismatched"):
        return "mismatched"
    kind = truth.get("duplicate_kind")
    if kind:
        return f"{kind} duplicate"
    if truth.get("uninformative"):
        return "uninformative"
    return "clean"


@dataclass
class Thumb:
    """One sample as shown in a gallery."""

    uid: str
    shard: str
    key: str
    kept: bool
    reason: str
    info: str = ""  # scores shown under the image ("CLIP 0.281 · gain 0.93")
    caption: str | None = None
    image: str | None = None  # data: URI
    truth: str | None = None  # truth label
    truth_class: str | None = None
    missing: str | None = None  # why the image could not be shown


@dataclass
class Gallery:
    """Kept and pruned samples of one selection or bootstrap round."""

    id: str
    title: str
    description: str
    thumbs: list[Thumb] = field(default_factory=list)
    # for the truth table: (shard, key) and reason of every candidate row in the shards read
    rows: pa.Table | None = None
    truth_table: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


def pick_shards(shards: Sequence[str], max_shards: int, seed: int = 0) -> list[str]:
    """The shards galleries draw from: ``max_shards`` of them, seeded, in name order."""
    shards = sorted(set(shards))
    if len(shards) <= max_shards:
        return shards
    rng = np.random.default_rng(seed)
    return sorted(shards[i] for i in rng.choice(len(shards), max_shards, replace=False))


def choose(table: pa.Table, n: int, seed: int = 0) -> list[int]:
    """Row indices of up to ``n`` samples: half kept, half pruned, pruned spread over reasons.

    ``table`` has ``selected`` (bool) and ``reason`` (str). Kept samples come first (in table order),
    then pruned ones grouped by reason, most frequent reason first. When one side has fewer samples
    than its half, the other side fills the gap.
    """
    rng = np.random.default_rng(seed)
    sel = table.column("selected").to_numpy(zero_copy_only=False).astype(bool)
    reason = np.asarray(table.column("reason").to_pylist(), dtype=object)
    kept_idx = np.flatnonzero(sel)
    pruned_idx = np.flatnonzero(~sel)
    by_reason = {r: rng.permutation(pruned_idx[reason[pruned_idx] == r]) for r in
                 sorted(set(reason[pruned_idx]), key=lambda r: (-int(np.sum(reason[pruned_idx] == r)), r))}
    n_pruned = min(len(pruned_idx), max(n // 2, n - len(kept_idx)))
    n_kept = min(len(kept_idx), n - n_pruned)
    taken: dict[str, int] = dict.fromkeys(by_reason, 0)
    while sum(taken.values()) < n_pruned:  # round-robin over reasons
        for r, idx in by_reason.items():
            if taken[r] < len(idx) and sum(taken.values()) < n_pruned:
                taken[r] += 1
    kept = np.sort(rng.choice(kept_idx, n_kept, replace=False)) if n_kept else np.zeros(0, np.int64)
    pruned = [int(i) for r, idx in by_reason.items() for i in np.sort(idx[: taken[r]])]
    return [int(i) for i in kept] + pruned


def thumbnail(data: bytes, size: int, quality: int = 82) -> str:
    """A JPEG data: URI of an image scaled to fit ``size`` × ``size``."""
    from PIL import Image

    img = decode_image(data, draft_size=size)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class ShardRead:
    """What reading the gallery shards found."""

    truth: dict[tuple[str, str], tuple[str, str | None]] = field(default_factory=dict)  # → (label, class)
    problems: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)


def read_samples(
    urls: dict[str, str], shards: Sequence[str], wanted: dict[tuple[str, str], list[Thumb]], size: int
) -> ShardRead:
    """Fill ``wanted`` thumbs (image, caption, truth) from ``shards``; collect every sample's truth."""
    out = ShardRead()
    for shard in shards:
        url = urls.get(shard)
        if url is None:
            out.unreadable.append(shard)
            continue
        stats: Counter[str] = Counter()
        left = sum(1 for s, _ in wanted if s == shard)
        has_truth = None
        for sample in iter_shard(url, stats=stats):
            truth = (sample.meta or {}).get("truth")
            if has_truth is None:
                has_truth = isinstance(truth, dict)
            if isinstance(truth, dict):
                out.truth[(shard, sample.key)] = (truth_label(truth), truth.get("class"))
            thumbs = wanted.get((shard, sample.key))
            if thumbs:
                left -= 1
                try:
                    uri = thumbnail(sample.image_bytes or b"", size)
                    miss = None
                except SampleError as exc:
                    uri, miss = None, exc.reason
                for t in thumbs:
                    t.image, t.missing, t.caption = uri, miss, sample.caption
            if left <= 0 and not has_truth:
                break  # nothing more to find in this shard
        if stats.get("shard_unreadable_shard"):
            out.unreadable.append(shard)
        out.problems.update({k: v for k, v in stats.items() if k.startswith(("shard_", "dropped_"))})
    for (shard, key), thumbs in wanted.items():
        for t in thumbs:
            if t.image is None and t.missing is None:
                t.missing = "shard unreadable" if shard in out.unreadable else "not found in shard"
            if (shard, key) in out.truth:
                t.truth, t.truth_class = out.truth[(shard, key)]
    return out


def truth_rates(rows: pa.Table, truth: dict[tuple[str, str], tuple[str, str | None]]) -> list[dict[str, Any]]:
    """Per group (kept, then each pruned reason): samples with known truth and the share of each label."""
    shard = rows.column("shard").to_pylist()
    key = rows.column("key").to_pylist()
    sel = rows.column("selected").to_numpy(zero_copy_only=False).astype(bool)
    reason = rows.column("reason").to_pylist()
    groups: dict[str, Counter[str]] = {}
    for s, k, kept, r in zip(shard, key, sel, reason, strict=True):
        t = truth.get((s, k))
        if t is None:
            continue
        groups.setdefault("kept" if kept else f"pruned: {r}", Counter())[t[0]] += 1
    order = sorted(groups, key=lambda g: (g != "kept", -sum(groups[g].values()), g))
    out = []
    for g in order:
        n = sum(groups[g].values())
        out.append({"group": g, "n": n, **{lab: groups[g][lab] / n for lab in TRUTH_LABELS}})
    return out


def rows_in(table: pa.Table, shards: Sequence[str]) -> pa.Table:
    """The rows of ``table`` whose shard is one of ``shards``."""
    return table.filter(pc.is_in(table.column("shard"), value_set=pa.array(list(shards), pa.string())))
