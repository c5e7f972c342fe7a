"""Decode workers: turn shards into preprocessed, tokenised batches (runs in DataLoader workers)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate.embed.preprocess import normalize_pixels
from curate.errors import CurateError
from curate.io.shards import (
    ErrorPolicy,
    RawSample,
    SampleError,
    caption_for_tokenizer,
    count_drop,
    decode_image,
    iter_shard,
    shard_name,
)

_PEEK = 16  # samples looked at to decide whether a shard has captions (mode "auto")


@dataclass
class ShardDone:
    """End-of-shard marker: counts of what happened to the shard's samples."""

    shard: str
    url: str
    stats: dict[str, int]


@dataclass
class WorkerFailure:
    """A ``CurateError`` raised in a decode worker, carried to the main process intact.

    DataLoader re-raises worker exceptions with a traceback as the message; the CLI shows one line,
    so the original error is passed as data and raised again by the consumer.
    """

    error_type: type[CurateError]
    message: str

    def reraise(self) -> None:
        raise self.error_type(self.message)


def _with_caption_mode(samples: Iterator[RawSample], mode: str) -> tuple[Iterator[RawSample], bool]:
    """Decide whether this shard has captions; return the (re-chained) samples and the decision."""
    if mode == "ignore":
        return samples, False
    if mode == "required":
        return samples, True
    head = list(itertools.islice(samples, _PEEK))
    return itertools.chain(head, samples), any(s.caption is not None for s in head)


class ShardBatches(IterableDataset):
    """Yields dict batches (one shard per batch) and a ``ShardDone`` after each shard.

    Shards are split across DataLoader workers as ``shards[worker::num_workers]``; within a shard the
    batch composition is fixed (consecutive valid samples), so outputs do not depend on worker count.
    """

    def __init__(
        self,
        urls: list[str],
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        batch_size: int,
        policy: ErrorPolicy,
        captions: str = "auto",
        draft_size: int | None = None,
        context_length: int = 77,
        pixels: str = "float",
        normalize: tuple[list[float], list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.urls = urls
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.policy = policy
        self.captions = captions
        self.draft_size = draft_size
        self.context_length = context_length
        self.pixels = pixels  # what ``preprocess`` returns: "float" CHW tensors, or "uint8" HWC pixels
        # (mean, std): normalise uint8 batches here (CPU models: the workers have time to spare)
        self.normalize = normalize

    def _batch(self, rows: list[tuple[RawSample, torch.Tensor]], has_text: bool) -> dict[str, Any]:
        samples = [r[0] for r in rows]
        text_rows = [i for i, s in enumerate(samples) if has_text and s.caption is not None]
        texts = [caption_for_tokenizer(samples[i].caption or "", self.context_length) for i in text_rows]
        tokens = self.tokenizer(texts) if text_rows else None
        return {
            "shard": samples[0].shard,
            "uid": [s.uid for s in samples],
            "key": [s.key for s in samples],
            "position": np.array([s.position for s in samples], dtype=np.int32),
            "content_hash": [s.content_hash for s in samples],
            **self._images(torch.stack([r[1] for r in rows])),
            "tokens": tokens,
            "text_rows": np.array(text_rows, dtype=np.int64),
        }

    def _images(self, stacked: torch.Tensor) -> dict[str, Any]:
        if self.pixels == "uint8" and self.normalize is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32) for v in self.normalize)
            return {"images": normalize_pixels(stacked, mean, std), "pixels": "float"}
        return {"images": stacked, "pixels": self.pixels}

    def iter_shard_batches(self, url: str) -> Iterator[dict[str, Any] | ShardDone]:
        stats: Counter[str] = Counter()
        samples, has_text = _with_caption_mode(iter_shard(url, self.policy, stats), self.captions)
        rows: list[tuple[RawSample, torch.Tensor]] = []
        shard = None
        for s in samples:
            shard = s.shard
            if has_text and s.caption is None:
                count_drop(stats, "missing_caption", s.shard, s.key, self.policy)
                continue
            try:
                img = decode_image(s.image_bytes or b"", self.draft_size, self.policy.max_pixels)
                tensor = self.preprocess(img)
            except SampleError as exc:
                count_drop(stats, exc.reason, s.shard, s.key, self.policy, str(exc))
                continue
            rows.append((s, tensor))
            if len(rows) == self.batch_size:
                yield self._batch(rows, has_text)
                rows = []
        if rows:
            yield self._batch(rows, has_text)
        yield ShardDone(shard or shard_name(url), url, dict(stats))

    def __iter__(self) -> Iterator[dict[str, Any] | ShardDone]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        try:
            for url in self.urls[wid::nw]:
                yield from self.iter_shard_batches(url)
        except CurateError as exc:
            yield WorkerFailure(type(exc), str(exc))
