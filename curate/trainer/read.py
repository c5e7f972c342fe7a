"""``TarSamples``: curate's shard reader as a webdataset pipeline stage, in place of ``tarfile_to_samples``.

It yields the same sample dicts (``__key__``, ``__url__`` and one bytes field per member extension), so
``ManifestFilter`` and ``DecodePairs`` (or webdataset's own stages) follow it unchanged. What it adds:
2.5–3.3× less CPU time per sample (BENCHMARKS §6, "Shard reading"), and damage handling that never
stops a training epoch and never loses samples silently. A damaged member header costs only that member,
where ``tarfile`` ends the shard; bad samples and shards are skipped and counted by reason, as in
``curate embed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from curate.io.shards import ErrorPolicy, iter_shard


class TarSamples:
    """Map shard dicts (``{"url": ...}``, as ``wds.SimpleShardList`` yields) to sample dicts::

        wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker, TarSamples(),
                         ManifestFilter(manifest), wds.shuffle(1000), DecodePairs(preprocess), ...)

    ``stats`` counts what was read and dropped (``seen``, ``dropped_<reason>``, ``shard_<problem>``;
    see ``curate.io.shards.DROP_REASONS``) in the process that iterates. ``strict=True`` raises
    ``StrictModeError`` on the first problem instead.
    """

    def __init__(self, strict: bool = False) -> None:
        self.policy = ErrorPolicy(strict=strict)  # nothing is decoded here: the pixel limit is DecodePairs'
        self.stats: Counter[str] = Counter()

    def __call__(self, source: Iterable[dict[str, Any] | str]) -> Iterator[dict[str, Any]]:
        for item in source:
            url = item if isinstance(item, str) else item["url"]
            for s in iter_shard(url, self.policy, self.stats):
                yield {"__key__": s.key, "__url__": url, **s.members}
