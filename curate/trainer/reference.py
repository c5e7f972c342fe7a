"""The reference trainer: a small, readable open_clip training loop that takes part in ``curate bootstrap``.

Per round: ``bootstrap_round`` writes the round's manifest → one epoch over the manifest's samples
(webdataset + ``ManifestFilter``), recording per-sample losses with ``LossRecorder`` → checkpoint →
next round. ``examples/reference_trainer.py`` is the command-line wrapper; the demo and the quality
benchmark call ``train_rounds`` directly.
"""

from __future__ import annotations

import logging
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
from curate.models import LoadedModel, load_model
from curate.progress import NullProgress, Progress
from curate.run import RunDir
from curate.trainer.decode import DecodePairs
from curate.trainer.losses import LossRecorder, clip_loss_per_sample
from curate.trainer.manifest_filter import ManifestFilter, shard_urls
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


def _save(model: torch.nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path


def train_rounds(
    cfg: TrainConfig,
    progress: Progress | None = None,
    on_round: Callable[[RoundLog], None] | None = None,
) -> list[RoundLog]:
    """Train ``cfg.rounds`` rounds, continuing after the run's latest bootstrap round.

    The model starts from ``cfg.pretrained`` or, when the run already has checkpoints, from the latest
    one (``RUN/checkpoints/round-NNNN.safetensors``), so calling this again resumes.
    """
    progress = progress or NullProgress()
    run = RunDir(cfg.run)
    state = load_state(run.root)
    start = 0 if state is None else int(state["round"]) + 1
    ckpt_dir = run.root / "checkpoints"
    pretrained = cfg.pretrained
    if start > 0 and (ckpt_dir / f"round-{start - 1:04d}.safetensors").exists():
        pretrained = str(ckpt_dir / f"round-{start - 1:04d}.safetensors")
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model, pretrained, device=cfg.device, precision="fp32")
    model = loaded.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    logs = []
    for r in range(start, start + cfg.rounds):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + r)
        res = bootstrap_round(
            run.root, r, method=cfg.method, knobs=cfg.knobs if r == 0 else {}, seed=cfg.seed if r == 0 else None,
            init=cfg.init if r == 0 else None, command="train_rounds",
        )
        urls = shard_urls(res.manifest, urls=cfg.shards, run=run.root)
        loader = _round_loader(urls, res.manifest_path, loaded, cfg, r)
        progress.start(f"round {r} ({res.summary['phase']})", total=len(res.manifest))
        with LossRecorder(run.root, r) as rec:
            steps, samples, mean_loss = train_one_round(
                model, loaded.tokenizer, optimizer, loader, rec, loaded.device, cfg.max_steps, progress
            )
        progress.finish()
        ckpt = _save(model, ckpt_dir / f"round-{r:04d}.safetensors") if cfg.save_checkpoints else None
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
