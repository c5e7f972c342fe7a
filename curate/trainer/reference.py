"""The reference trainer: a small, readable open_clip training loop that takes part in ``curate bootstrap``.

Per round: ``bootstrap_round`` writes the round's manifest → one epoch over the manifest's samples
(webdataset + ``ManifestFilter``), recording per-sample losses with ``LossRecorder`` → checkpoint →
next round. ``examples/reference_trainer.py`` is the command-line wrapper; the demo and the quality
benchmark call ``train_rounds`` directly.

Resuming. A round is finished when its model checkpoint ``RUN/checkpoints/round-NNNN.safetensors`` exists:
it is written last, after the round's losses and the optimizer state (``round-NNNN.optimizer.pt``).
``train_rounds`` starts after the last finished round (``resume_round``), from that round's weights and
optimizer state; a round that was interrupted is trained again from its start. Every round seeds torch
and its data order from ``(seed, round)``, so a resumed run gives the manifests, losses and weights of an
uninterrupted one (on the same machine and thread count; the timings differ).
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from curate.bootstrap import bootstrap_round, load_state
from curate.errors import InputError, UsageError
from curate.fs import atomic_path, remove_dead_temps_of
from curate.io.manifest import shard_urls
from curate.models import LoadedModel, load_model
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir
from curate.trainer.decode import DecodePairs
from curate.trainer.losses import LossRecorder, clip_loss_per_sample
from curate.trainer.manifest_filter import ManifestFilter
from curate.trainer.read import TarSamples

_logger = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """Options of the reference trainer (one run folder, ``rounds`` rounds from the next undone one)."""

    run: str
    rounds: int  # rounds to train in this call
    model: str = "sample"  # curate.models name (architecture, local-dir:, or 'sample')
    pretrained: str | None = None  # checkpoint to start from (default: the model's own weights)
    method: str | None = None  # bootstrap method; None = the run's (scan for a new run)
    knobs: dict[str, Any] = field(default_factory=dict)  # bootstrap knobs (e.g. {"warmup_rounds": 1})
    seed: int = 0
    init: str | None = None  # starting selection (``--init``)
    shards: str | list[str] | None = None  # shard URLs/spec; default: the run's embedded shards
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.1
    device: str = "cpu"
    workers: int = 0  # DataLoader workers (0 = in process, deterministic)
    shuffle_buffer: int = 1000
    max_steps: int | None = None  # per round (for smoke tests)
    save_checkpoints: bool = True
    start: int | None = None  # first round to train; None: after the last finished round (see resume_round)
    allow_partial: bool = False  # round 0 on a run whose embed has pending shards (see bootstrap_round)


@dataclass
class RoundLog:
    round: int
    phase: str
    kept: int
    steps: int
    samples: int
    mean_loss: float
    seconds: float
    manifest: str
    checkpoint: str | None
    summary: dict[str, Any]


def _round_loader(
    urls: Sequence[str], manifest: Path, loaded: LoadedModel, cfg: TrainConfig, round_: int
) -> torch.utils.data.DataLoader:
    """One epoch over the manifest's samples: filter before decode, seeded shuffles, fixed-size batches."""
    seed = cfg.seed * 100_003 + round_
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(urls), seed=seed),
        wds.split_by_worker,
        TarSamples(),  # curate's reader: as wds.tarfile_to_samples, faster, and reads past a damaged header
        ManifestFilter(manifest),
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(seed)),
        DecodePairs(loaded.preprocess),  # decodes only image + caption (never .pyd/.pth members)
        wds.batched(cfg.batch_size, partial=True, collation_fn=_collate),
    )
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=cfg.workers)


def _collate(samples: list[tuple[Any, ...]]) -> tuple[torch.Tensor, list[str], list[str], torch.Tensor]:
    images, texts, uids, weights = zip(*samples, strict=True)
    return torch.stack(images), list(texts), list(uids), torch.tensor(weights, dtype=torch.float32)


def train_one_round(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, list[str], list[str], torch.Tensor]] | Any,
    recorder: LossRecorder,
    device: torch.device,
    max_steps: int | None = None,
    progress: Progress | None = None,
) -> tuple[int, int, float]:
    """Train one epoch; record each sample's two losses. Returns (steps, samples, mean loss)."""
    model.train()
    steps = samples = 0
    total = 0.0
    for images, texts, uids, weights in batches:
        if max_steps is not None and steps >= max_steps:
            break
        images, weights = images.to(device), weights.to(device)
        tokens = tokenizer(texts).to(device)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
        bias = getattr(model, "logit_bias", None)
        loss_a, loss_b = clip_loss_per_sample(img, txt, scale, bias)
        # Mean of (a+b)/2 equals open_clip's ClipLoss; InfoBatch weights rescale the kept easy samples.
        loss = (weights * (loss_a + loss_b) / 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        recorder.add(uids, loss_a, loss_b)
        steps += 1
        samples += len(uids)
        total += float(loss.detach())
        if progress is not None:
            progress.advance(len(uids))
    return steps, samples, total / max(steps, 1)


def checkpoint_path(run: RunDir, round_: int) -> Path:
    """The model weights after round ``round_`` (safetensors; ``curate losses`` and ``load_model`` read it)."""
    return run.root / "checkpoints" / f"round-{round_:04d}.safetensors"


def optimizer_path(run: RunDir, round_: int) -> Path:
    """The optimizer state after round ``round_`` (``torch.save``; read back weights-only)."""
    return run.root / "checkpoints" / f"round-{round_:04d}.optimizer.pt"


def resume_round(run_root: str | os.PathLike[str]) -> int:
    """The round to train next: one after the last finished round (the last with a checkpoint), 0 for none.

    Only rounds the bootstrap state has reached count (a checkpoint of a round it does not know is stale).
    """
    run = RunDir(run_root)
    state = load_state(run.root)
    latest = -1 if state is None else int(state["round"])
    done = -1
    while done + 1 <= latest and checkpoint_path(run, done + 1).exists():
        done += 1
    return done + 1


def check_start(run_root: str | os.PathLike[str], start: int) -> None:
    """Whether training can start at round ``start``: its previous round is finished, and the bootstrap
    rounds have not gone past it (only the latest round can be decided again)."""
    run = RunDir(run_root)
    state = load_state(run.root)
    latest = -1 if state is None else int(state["round"])
    if start < 0:
        raise UsageError(f"--start must be >= 0, got {start}")
    if start > 0 and not checkpoint_path(run, start - 1).exists():
        raise InputError(f"cannot start at round {start}: round {start - 1} has no checkpoint "
                         f"({checkpoint_path(run, start - 1)}); the next round to train is {resume_round(run.root)}")
    if start < latest:
        raise InputError(f"cannot start at round {start}: the run's bootstrap is at round {latest}, and only the "
                         f"latest round can be decided again; start at {latest} or {resume_round(run.root)}, or "
                         "use a new run folder")


def _save_round(run: RunDir, round_: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Path:
    """The optimizer state, then the weights (their file marks the round finished); each atomically."""
    from safetensors.torch import save_file

    remove_dead_temps_of(optimizer_path(run, round_), checkpoint_path(run, round_))  # left by a killed earlier attempt
    buf = io.BytesIO()  # torch.save names the records inside after the file: a buffer keeps the bytes stable
    torch.save(optimizer.state_dict(), buf)
    with atomic_path(optimizer_path(run, round_)) as tmp:
        tmp.write_bytes(buf.getvalue())
    path = checkpoint_path(run, round_)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def _restore(run: RunDir, round_: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The weights and optimizer state after round ``round_`` (weights only: nothing in them runs code)."""
    from curate.models import checkpoint_error
    from curate.trainer.offline import load_weights

    load_weights(model, checkpoint_path(run, round_))
    opt = optimizer_path(run, round_)
    if not opt.exists():
        _logger.warning("no optimizer state for round %d (%s): the optimizer starts afresh", round_, opt)
        return
    try:
        optimizer.load_state_dict(torch.load(opt, map_location="cpu", weights_only=True))
    except Exception as exc:  # a corrupt or foreign file: one line, never a hint to load it unsafely
        raise checkpoint_error(opt, exc) from None


class RoundProgress:
    """Progress inside a round as lines (``round 3 (mutate): 1,280/2,100 samples, 42.0 samples/s, ETA 19s``)
    written to ``write`` once ``every_s`` seconds have passed since the last line, or, with ``every_batches``,
    after that many batches, whichever comes first: readable in batch and Slurm logs, not a flood."""

    def __init__(self, write: Callable[[str], None], every_s: float = 30.0, every_batches: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every_s, self.every_batches, self.clock = write, every_s, every_batches, clock
        self.task, self.total, self.unit = "", None, "samples"
        self.done = 0.0
        self._t0 = self._last = 0.0
        self._batches = 0

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.task, self.total, self.unit, self.done = task, total, unit, 0.0
        self._t0 = self._last = self.clock()
        self._batches = 0

    def advance(self, n: float = 1) -> None:
        self.done += n
        self._batches += 1
        now = self.clock()
        due = now - self._last >= self.every_s
        if self.every_batches is not None:
            due = due or self._batches >= self.every_batches
        if due:
            self._last, self._batches = now, 0
            self.write(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self._t0, 1e-9)
        text = f"{self.task}: {self.done:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {self.unit}"
        text += f", {rate:,.1f} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def finish(self) -> None:
        return None


def _duration(seconds: float) -> str:
    s = round(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def train_rounds(
    cfg: TrainConfig,
    progress: Progress | None = None,
    on_round: Callable[[RoundLog], None] | None = None,
) -> list[RoundLog]:
    """Train ``cfg.rounds`` rounds from round ``cfg.start``, by default after the last finished round.

    The model starts from ``cfg.pretrained`` or, after a finished round, from its checkpoint and optimizer
    state (``RUN/checkpoints/round-NNNN.*``), so calling this again resumes; an interrupted round is
    trained again from its start (see the module docstring).
    """
    progress = progress or NullProgress()
    run = RunDir(cfg.run)
    run.require()
    start = resume_round(run.root) if cfg.start is None else cfg.start
    check_start(run.root, start)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model, cfg.pretrained, device=cfg.device, precision="fp32")
    model = loaded.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if start > 0:
        _restore(run, start - 1, model, optimizer)
    logs = []
    for r in range(start, start + cfg.rounds):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + r)
        res = bootstrap_round(
            run.root, r, method=cfg.method, knobs=cfg.knobs if r == 0 else {}, seed=cfg.seed if r == 0 else None,
            init=cfg.init if r == 0 else None, command="train_rounds", allow_partial=cfg.allow_partial,
        )
        urls = shard_urls(res.manifest, urls=cfg.shards, run=run.root)
        loader = _round_loader(urls, res.manifest_path, loaded, cfg, r)
        progress.start(f"round {r} ({res.summary['phase']})", total=len(res.manifest))
        with LossRecorder(run.root, r) as rec:
            steps, samples, mean_loss = train_one_round(
                model, loaded.tokenizer, optimizer, loader, rec, loaded.device, cfg.max_steps, progress
            )
        progress.finish()
        ckpt = _save_round(run, r, model, optimizer) if cfg.save_checkpoints else None
        log = RoundLog(
            round=r, phase=res.summary["phase"], kept=len(res.manifest), steps=steps, samples=samples,
            mean_loss=mean_loss, seconds=time.perf_counter() - t0, manifest=str(res.manifest_path),
            checkpoint=str(ckpt) if ckpt else None, summary=res.summary,
        )
        _logger.info("round %d %s: kept %d, %d steps, loss %.4f", r, log.phase, log.kept, steps, mean_loss)
        logs.append(log)
        if on_round is not None:
            on_round(log)
    return logs
