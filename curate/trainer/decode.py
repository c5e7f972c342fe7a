"""``DecodePairs``: the trainer kit's safe decode stage for webdataset pipelines.

webdataset's ``decode("pil...")`` runs a handler for every member of a sample, including ones that
unpickle (``.pyd``, ``.pickle``) or ``torch.load`` (``.pth``) attacker-controlled bytes. This stage
decodes only what a CLIP trainer needs, the image (through curate's decoder, which enforces the pixel
limit) and the caption, and skips samples that fail, counting them by reason like ``curate embed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from curate.io.shards import DEFAULT_MAX_PIXELS, IMAGE_EXTS, SampleError, decode_image


class DecodePairs:
    """Map kept samples to ``(preprocess(image), caption, uid, weight)``; skip and count bad ones.

    Use it right after ``ManifestFilter`` (and a shuffle)::

        wds.DataPipeline(..., wds.tarfile_to_samples(), ManifestFilter(m), wds.shuffle(1000),
                         DecodePairs(preprocess), wds.batched(256))

    ``dropped`` counts skipped samples by reason (``missing_image``, ``missing_caption``,
    ``caption_not_utf8``, ``corrupt_image``, ``decompression_bomb``) in the process that iterates.
    """

    def __init__(
        self,
        preprocess: Callable[[Any], Any],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        uid_key: str = "__uid__",
        weight_key: str = "__weight__",
    ) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.uid_key, self.weight_key = uid_key, weight_key
        self.dropped: Counter[str] = Counter()

    def _one(self, sample: dict[str, Any]) -> tuple[Any, str, str, float] | None:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            self.dropped["missing_image"] += 1
            return None
        raw = sample.get("txt")
        if raw is None:
            self.dropped["missing_caption"] += 1
            return None
        try:
            caption = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
        except UnicodeDecodeError:
            self.dropped["caption_not_utf8"] += 1
            return None
        try:
            image = decode_image(sample[ext], max_pixels=self.max_pixels)
        except SampleError as exc:
            self.dropped[exc.reason] += 1
            return None
        return self.preprocess(image), caption, sample[self.uid_key], float(sample.get(self.weight_key, 1.0))

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, str, str, float]]:
        for s in samples:
            out = self._one(s)
            if out is not None:
                yield out
