"""The fast image path of embed: resize and crop in the decode workers, normalise whole batches.

open_clip's eval transform turns each PIL image into a normalised float tensor one image at a time
(resize, center crop, to-tensor, normalise). The fast path does the same geometry with the same PIL
resampling in the decode workers, but ships ``uint8`` HWC pixels (4× less to copy between processes,
pinned and copied to the GPU without blocking), then converts and normalises a whole batch at once
on the model's device, with the same float operations in the same order.

It is only used when it reproduces the model's own transform exactly: ``fast_transform`` compares
both on probe images of several shapes and falls back to open_clip's transform otherwise (other resize
modes, custom transforms). JPEG draft decoding (reduced DCT scale, ``curate.io.shards.decode_image``)
is separate: it changes pixels slightly, and its effect on embeddings is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

#: open_clip interpolation names -> PIL resampling filters.
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
#: Shapes (width, height) of the probe images the fast path must reproduce exactly.
_PROBE_SHAPES = ((97, 131), (131, 97), (64, 64), (300, 200), (33, 80), (640, 480), (17, 17))


@dataclass(frozen=True)
class FastImageTransform:
    """Resize the short side to ``size`` (or squash to ``size``×``size``), center-crop, return uint8 HWC."""

    size: int
    resample: int = Image.Resampling.BICUBIC
    mode: str = "shortest"  # or "squash"

    def resized_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step."""
        if self.mode == "squash":
            return self.size, self.size
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = self.resized_shape(*img.size)
        if (w, h) != img.size:
            img = img.resize((w, h), self.resample)
        if (w, h) != (self.size, self.size):
            top, left = round((h - self.size) / 2.0), round((w - self.size) / 2.0)
            img = img.crop((left, top, left + self.size, top + self.size))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def normalize_pixels(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC pixels -> normalised float32 NCHW on ``images``' device (as to-tensor + normalise).

    ``channels_last`` keeps NHWC memory order (what convolutions on CUDA prefer); otherwise the result is
    contiguous NCHW, laid out in uint8 first so that the float passes run over contiguous memory.
    """
    x = images.permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x.float().div_(255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def _probe_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in _PROBE_SHAPES]


def fast_transform(preprocess: Callable[[Any], torch.Tensor], info: dict[str, Any]) -> FastImageTransform | None:
    """A ``FastImageTransform`` that reproduces ``preprocess`` bit for bit, or None when none does."""
    size = info.get("image_size")
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            return None
        size = size[0]
    mode = info.get("resize_mode") or "shortest"
    resample = _RESAMPLE.get(info.get("interpolation") or "bicubic")
    if not isinstance(size, int) or mode not in ("shortest", "squash") or resample is None:
        return None
    if not info.get("mean") or not info.get("std"):
        return None
    fast = FastImageTransform(size, resample, mode)
    mean, std = torch.tensor(info["mean"]), torch.tensor(info["std"])
    for img in _probe_images():
        try:
            want = preprocess(img)
        except Exception:  # a transform that can't take these probes: don't second-guess it
            return None
        got = normalize_pixels(fast(img)[None], mean, std)[0]
        if want.shape != got.shape or not torch.equal(want, got):
            return None
    return fast
