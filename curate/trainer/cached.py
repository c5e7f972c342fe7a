"""The reference trainer's round protocol on an in-memory sample cache (for many small training runs).

``train_rounds`` (``reference.py``) streams JPEGs through webdataset + ``ManifestFilter`` every round:
right for real data, too slow for dozens of from-scratch runs on a CPU. Here the pool is decoded and
preprocessed ONCE (``SampleCache``: image tensors and caption tokens indexed by uid) and every round
follows the same protocol:

1. the round's manifest decides which uids are trained on (a static selection, or ``bootstrap_round``
   for SCAN / InfoBatch / none);
2. the manifest's rows are shuffled with a generator seeded by ``(seed, round)``;
3. fixed-size batches (the last one partial) go through ``reference.train_one_round``: the same
   per-sample CLIP losses, manifest weights in the loss (InfoBatch), ``logit_scale`` clamp and
   ``LossRecorder`` hand-over as the reference trainer.

Differences from the reference, on purpose: the whole manifest is permuted (the reference shuffles
shard order plus a 1000-sample buffer), and the learning rate follows a schedule indexed by epoch
fraction (``round + step / steps_in_round``: linear warm-up, then cosine) so that arms whose rounds
have different lengths see the same learning rate at the same point of training. ``schedule="constant"``
gives the reference trainer's constant rate.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.errors import InputError, UsageError
from curate.io.manifest import Manifest
from curate.models import LoadedModel
from curate.trainer.losses import LossRecorder
from curate.trainer.reference import train_one_round

SCHEDULES = ("cosine", "constant")
_logger = logging.getLogger(__name__)


def _warn_dropped(stats: Counter[str], what: str) -> None:
    dropped = {k.removeprefix("dropped_"): v for k, v in sorted(stats.items()) if k.startswith("dropped_") and v}
    if dropped:
        _logger.warning("%s skipped %d bad sample(s): %s", what, sum(dropped.values()),
                        ", ".join(f"{k}={v}" for k, v in dropped.items()))


@dataclass
class SampleCache:
    """Preprocessed images ``[n, 3, H, W]`` and caption tokens ``[n, ctx]`` of a pool, one row per uid."""

    uids: np.ndarray  # str, pool order
    images: torch.Tensor
    tokens: torch.Tensor
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.uids) == len(self.images) == len(self.tokens)):
            raise ValueError(f"cache sizes differ: {len(self.uids)} uids, {len(self.images)} images, "
                             f"{len(self.tokens)} token rows")
        self._index = {str(u): i for i, u in enumerate(self.uids)}
        if len(self._index) != len(self.uids):
            raise InputError("the sample cache has duplicate uids")

    def __len__(self) -> int:
        return len(self.uids)

    def rows(self, uids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Cache rows of ``uids``; ``InputError`` naming the first uid the cache does not hold."""
        try:
            return np.fromiter((self._index[str(u)] for u in uids), np.int64, count=len(uids))
        except KeyError as exc:
            raise InputError(f"uid {exc.args[0]} of the manifest is not in the sample cache") from None

    @classmethod
    def build(cls, shards: Sequence[str], loaded: LoadedModel, stats: Counter[str] | None = None) -> SampleCache:
        """Decode and preprocess every valid sample of ``shards``.

        Bad samples are skipped and counted as in embed: ``dropped_<reason>`` and ``shard_<problem>`` in
        ``stats`` (a sample without a caption is ``dropped_missing_caption``: CLIP training needs one).
        """
        from curate.io.shards import ErrorPolicy, SampleError, decode_image, iter_shards

        stats = stats if stats is not None else Counter()
        policy = ErrorPolicy()
        uids, images, captions = [], [], []
        for s in iter_shards(shards, policy, stats):
            if s.image_bytes is None or s.caption is None:
                stats["dropped_missing_image" if s.image_bytes is None else "dropped_missing_caption"] += 1
                continue
            try:
                images.append(loaded.preprocess(decode_image(s.image_bytes, max_pixels=policy.max_pixels)))
            except SampleError as exc:
                stats[f"dropped_{exc.reason}"] += 1
                continue
            captions.append(s.caption)
            uids.append(s.uid)
        _warn_dropped(stats, "the sample cache")
        if not uids:
            raise InputError(f"no samples with an image and a caption in {len(shards)} shard(s)")
        tokens = torch.cat([loaded.tokenizer(captions[i : i + 4096]) for i in range(0, len(captions), 4096)])
        return cls(np.asarray(uids), torch.stack(images), tokens)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the cache as one ``.npz`` (atomic)."""
        from curate.fs import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, uids=self.uids.astype(str), images=self.images.numpy(), tokens=self.tokens.numpy())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SampleCache:
        with np.load(path) as z:
            return cls(z["uids"], torch.from_numpy(z["images"]), torch.from_numpy(z["tokens"]))


@dataclass
class CachedTrainConfig:
    """Optimisation settings shared by every arm of a comparison."""

    rounds: int  # epochs; the learning-rate schedule spans exactly these
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 1.0  # linear learning-rate warm-up, in epochs (cosine schedule)
    schedule: str = "cosine"
    seed: int = 0

    def validate(self) -> None:
        if self.rounds < 1:
            raise UsageError(f"rounds must be >= 1, got {self.rounds}")
        if self.batch_size < 2:
            raise UsageError(f"batch_size must be >= 2 (contrastive batches), got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr <= 0 or self.warmup < 0:
            raise UsageError("lr must be > 0 and warmup >= 0")

    def lr_at(self, epoch: float) -> float:
        """Learning rate at ``epoch`` (a fraction: round + step / steps in the round)."""
        if self.schedule == "constant":
            return self.lr
        if epoch < self.warmup:
            return self.lr * (epoch + 1e-3) / self.warmup
        span = max(self.rounds - self.warmup, 1e-9)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min((epoch - self.warmup) / span, 1.0)))


@dataclass
class RoundPlan:
    """What one round trains on: a manifest, and whether its per-sample losses must be recorded."""

    manifest: Manifest
    phase: str = "static"
    record_losses: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


#: ``plan(round) -> RoundPlan``; called once per round, in order.
Planner = Callable[[int], RoundPlan]


def static_plan(manifest: Manifest) -> Planner:
    """The same (static selection) manifest every round."""
    return lambda _round: RoundPlan(manifest)


def bootstrap_plan(
    run: str | os.PathLike[str],
    method: str,
    knobs: dict[str, Any] | None = None,
    seed: int = 0,
    init: str | None = None,
    command: str = "train_cached",
) -> Planner:
    """Each round's manifest from ``bootstrap_round`` on ``run`` (which needs the previous round's losses)."""
    from curate.bootstrap import bootstrap_round

    def plan(r: int) -> RoundPlan:
        res = bootstrap_round(run, r, method=method if r == 0 else None, knobs=(knobs or {}) if r == 0 else {},
                              seed=seed if r == 0 else None, init=init if r == 0 else None, command=command)
        return RoundPlan(res.manifest, res.summary["phase"], bool(res.summary["record_losses"]), res.summary)

    return plan


@dataclass
class CachedRoundLog:
    round: int
    phase: str
    kept: int
    steps: int
    samples: int
    mean_loss: float
    seconds: float


class _NoRecorder:
    """Stands in for ``LossRecorder`` in rounds whose losses nobody reads."""

    def add(self, *args: Any, **kwargs: Any) -> int:
        return 0


def _batches(
    cache: SampleCache, rows: np.ndarray, weights: torch.Tensor, cfg: CachedTrainConfig,
    optimizer: torch.optim.Optimizer, round_: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]]:
    """Seeded shuffle, fixed-size batches; sets the learning rate of the step each batch is used for."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + round_)
    perm = torch.randperm(len(rows), generator=gen).numpy()
    n_steps = math.ceil(len(rows) / cfg.batch_size)
    for i in range(n_steps):
        lr = cfg.lr_at(round_ + i / n_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pos = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        idx = torch.from_numpy(rows[pos])
        yield cache.images[idx], cache.tokens[idx], [str(u) for u in cache.uids[rows[pos]]], weights[pos]


def make_optimizer(model: torch.nn.Module, cfg: CachedTrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter (as the reference trainer); the fused CPU kernel when torch has it."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_cached(
    loaded: LoadedModel,
    cache: SampleCache,
    cfg: CachedTrainConfig,
    plan: Planner,
    run: str | os.PathLike[str] | None = None,
    on_round: Callable[[CachedRoundLog], None] | None = None,
) -> list[CachedRoundLog]:
    """Train ``loaded.model`` for ``cfg.rounds`` rounds; each round's samples come from ``plan(round)``.

    Losses of rounds whose plan asks for them are written to ``run`` with ``LossRecorder`` (a
    bootstrap plan needs ``run``). The model's initial weights are the caller's business (seed torch
    before building it). Returns one log per round.
    """
    cfg.validate()
    model = loaded.model
    optimizer = make_optimizer(model, cfg)
    logs = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + r)
        p = plan(r)
        table = p.manifest.table
        rows = cache.rows(table.column("uid").to_numpy(zero_copy_only=False))
        weights = torch.from_numpy(table.column("weight").to_numpy().astype(np.float32))
        if p.record_losses and run is None:
            raise UsageError("this plan records per-sample losses; pass run=")
        batches = _batches(cache, rows, weights, cfg, optimizer, r)
        if p.record_losses:
            assert run is not None
            with LossRecorder(run, r) as rec:
                steps, samples, loss = train_one_round(model, lambda t: t, optimizer, batches, rec, loaded.device)
        else:
            steps, samples, loss = train_one_round(model, lambda t: t, optimizer, batches, _NoRecorder(),  # type: ignore[arg-type]
                                                   loaded.device)
        log = CachedRoundLog(r, p.phase, len(rows), steps, samples, loss, time.perf_counter() - t0)
        logs.append(log)
        if on_round is not None:
            on_round(log)
    return logs
