"""Per-sample CLIP losses and the loss recorder that hands them to ``curate bootstrap``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.fs import make_temp_file, remove_dead_temps_of
from curate.rundir import RunDir
from curate.schemas import LOSS_SCHEMA

if TYPE_CHECKING:
    import torch


def clip_loss_per_sample(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unreduced image→text (``loss_a``) and text→image (``loss_b``) InfoNCE losses of a batch.

    ``(loss_a.mean() + loss_b.mean()) / 2`` equals ``open_clip.loss.ClipLoss()`` on the same inputs.
    For a distributed trainer, pass the all-gathered features (as ClipLoss does with
    ``local_loss=False``) to rank over the global batch, and record the result once (rank 0).
    """
    import torch
    import torch.nn.functional as F

    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    if logit_bias is not None:
        logits_per_image = logits_per_image + logit_bias
        logits_per_text = logits_per_text + logit_bias
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    loss_a = F.cross_entropy(logits_per_image, labels, reduction="none")
    loss_b = F.cross_entropy(logits_per_text, labels, reduction="none")
    return loss_a, loss_b


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32).reshape(-1)


class LossRecorder:
    """Record per-sample losses of one round into ``RUN/losses/round-NNNN/part-<rank>.parquet``.

    Buffered (one Parquet row group per ``flush_rows`` rows) and atomic: rows stream into a hidden
    temporary file that is renamed on ``close()``; after an exception nothing is published. Each rank
    writes its own part. Batch ids are made unique across ranks as ``step * world_size + rank`` where
    ``step`` counts this recorder's ``add`` calls (or is passed explicitly).

    Record the global batch (all-gathered CLIP features) on rank 0 only to rank within the global
    batch as the reference does; or record each rank's local batch on every rank (per-GPU ranking).

    Example::

        with LossRecorder(run, round_, rank=rank, world_size=world) as rec:
            for images, texts, uids, weights in loader:
                ...
                la, lb = clip_loss_per_sample(img_f, txt_f, model.logit_scale.exp())
                rec.add(uids, la, lb)
    """

    def __init__(
        self,
        run: str | os.PathLike[str],
        round: int,
        rank: int = 0,
        world_size: int = 1,
        flush_rows: int = 1 << 18,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        self.path = RunDir(run).losses_dir(round) / f"part-{rank:05d}.parquet"
        self.rank, self.world_size, self.flush_rows = rank, world_size, flush_rows
        self.rows = 0
        self._step = 0
        self._buf: list[pa.RecordBatch] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._closed = False

    def add(self, uids: Any, loss_a: Any, loss_b: Any = None, batch: int | None = None) -> int:
        """Record one training batch; returns its batch id."""
        if self._closed:
            raise RuntimeError("LossRecorder is closed")
        step = self._step if batch is None else int(batch)
        self._step = step + 1
        bid = step * self.world_size + self.rank
        a = _to_numpy(loss_a)
        u = pa.array(uids.tolist() if hasattr(uids, "tolist") else list(uids), pa.string())
        if len(u) != len(a):
            raise ValueError(f"got {len(u)} uids and {len(a)} losses")
        b = pa.nulls(len(a), pa.float32()) if loss_b is None else pa.array(_to_numpy(loss_b))
        self._buf.append(
            pa.record_batch([u, pa.array(np.full(len(a), bid, np.int64)), pa.array(a), b], schema=LOSS_SCHEMA)
        )
        self._buffered += len(a)
        self.rows += len(a)
        if self._buffered >= self.flush_rows:
            self._flush()
        return bid

    @property
    def batches(self) -> int:
        """Batches added so far (the next ``batch`` id when ``add`` numbers them)."""
        return self._step

    def _flush(self) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_dead_temps_of(self.path)  # left by a killed earlier attempt
            # the writer's pid in the name (a rerun removes those of killed writers); the umask's mode
            self._tmp = make_temp_file(self.path.parent, f".{self.path.name}.{os.getpid()}-", ".tmp")
            self._writer = pq.ParquetWriter(str(self._tmp), LOSS_SCHEMA)
        if self._buf:
            self._writer.write_table(pa.Table.from_batches(self._buf, schema=LOSS_SCHEMA))
        self._buf, self._buffered = [], 0

    def close(self) -> Path:
        """Publish the part file (atomically) and return its path."""
        if not self._closed:
            self._flush()
            assert self._writer is not None and self._tmp is not None
            self._writer.close()
            os.replace(self._tmp, self.path)
            self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything recorded; publish nothing."""
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._closed = True

    def __enter__(self) -> LossRecorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
