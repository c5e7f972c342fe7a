"""The trainer kit: what an external training loop needs to take part in ``curate bootstrap``.

- ``TarSamples``: curate's shard reader as a webdataset stage (for ``tarfile_to_samples``): faster, and
  damage is skipped and counted, never the end of an epoch.
- ``ManifestFilter``: a webdataset stage keeping a manifest's samples before decoding (+ uid, weight).
- ``DecodePairs``: decodes only image (pixel-bounded) and caption of kept samples; never unpickles.
- ``shard_urls``: the shard URLs that still hold kept samples of a manifest.
- ``clip_loss_per_sample``: unreduced image→text and text→image InfoNCE losses (mean = ClipLoss).
- ``LossRecorder``: writes ``RUN/losses/round-NNNN/part-<rank>.parquet``.
- ``train_rounds``: the reference trainer (``curate/trainer/reference.py``), used by examples and the demo.

Torch is imported only by the functions that need it.
"""

from __future__ import annotations

from typing import Any

from curate.io.manifest import shard_urls
from curate.trainer.decode import DecodePairs
from curate.trainer.losses import LossRecorder, clip_loss_per_sample
from curate.trainer.manifest_filter import ManifestFilter, build_index
from curate.trainer.read import TarSamples

__all__ = ["DecodePairs", "LossRecorder", "ManifestFilter", "TarSamples", "TrainConfig", "build_index",
           "clip_loss_per_sample", "shard_urls", "train_rounds"]


def __getattr__(name: str) -> Any:
    if name in ("train_rounds", "TrainConfig"):
        from curate.trainer import reference

        return getattr(reference, name)
    raise AttributeError(name)
