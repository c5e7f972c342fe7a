"""``curate shards validate``: per-shard sample counts and problems, without a model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from curate.io.shards import (
    DEFAULT_MAX_PIXELS,
    ErrorPolicy,
    SampleError,
    count_drop,
    decode_image,
    expand_shards,
    iter_shard,
    shard_name,
)


@dataclass
class ShardReport:
    """What validation found in one shard."""

    shard: str
    url: str
    samples: int
    problems: dict[str, int] = field(default_factory=dict)
    captions: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: the shard and its problems (``00003: corrupt_image=2, shard_truncated_tar=1``)."""
        probs = ", ".join(f"{k}={v}" for k, v in self.problems.items()) or "ok"
        return f"{self.shard}: {probs}"


def validate_shard(url: str, decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> ShardReport:
    """Read every sample of a shard (decoding images if ``decode``) and count problems by kind."""
    stats: Counter[str] = Counter()
    policy = ErrorPolicy(strict=False, max_pixels=max_pixels, warn=False)  # the report lists every problem
    n = captions = 0
    for s in iter_shard(url, policy, stats):
        if decode:
            try:
                decode_image(s.image_bytes or b"", None, max_pixels)
            except SampleError as exc:
                count_drop(stats, exc.reason, s.shard, s.key, policy)
                continue
        n += 1
        captions += s.caption is not None
    problems = {
        k.removeprefix("dropped_"): v for k, v in sorted(stats.items()) if k.startswith(("dropped_", "shard_"))
    }
    if 0 < captions < n:
        problems["missing_caption"] = n - captions
    return ShardReport(shard_name(url), url, n, problems, captions)


def validate_shards(
    spec: str | list[str], decode: bool = True, workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[ShardReport]:
    """Validate shards in parallel processes; yields reports in shard order."""
    urls = expand_shards(spec)
    if workers <= 1 or len(urls) == 1:
        for u in urls:
            yield validate_shard(u, decode, max_pixels)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(validate_shard, urls, [decode] * len(urls), [max_pixels] * len(urls))
