"""``curate losses``: per-sample losses of a saved checkpoint over a round's manifest.

For trainers with no per-sample hook (open_clip's own ``open_clip_train.main``): after the trainer
finished round N and saved a checkpoint, this computes both CLIP losses of every sample of round N's
manifest with that checkpoint and writes them where ``curate bootstrap --round N+1`` reads them.

Batch composition is fixed: manifest order (shard, then position in the tar), ``batch_size`` samples per
batch, so a rerun gives the same batches. Losses come from the model in eval mode without augmentation
(the reference records the training-mode loss of the training step instead; see docs/bootstrap.md).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curate.errors import InputError, UsageError
from curate.io.manifest import read_manifest, shard_urls
from curate.io.shards import ErrorPolicy, SampleError, decode_image, iter_shard
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir
from curate.trainer.losses import LossRecorder, clip_loss_per_sample
from curate.trainer.manifest_filter import ManifestFilter


@dataclass
class LossesResult:
    path: Path
    rows: int
    batches: int
    missing: int  # manifest samples not found or dropped while reading
    seconds: float
    stats: dict[str, int]


def load_weights(model: torch.nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """Load a checkpoint into ``model`` strictly: safetensors, or ``torch.load(weights_only=True)``.

    Accepts open_clip_train checkpoints (``{"state_dict": ...}``, ``module.`` prefixes from DDP).
    """
    path = str(Path(checkpoint).expanduser())
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused by weights_only), SafetensorError, OSError, ...
        from curate.models import checkpoint_error

        raise checkpoint_error(checkpoint, exc) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"not a checkpoint curate can load safely: {checkpoint} (it holds no state dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"checkpoint {checkpoint} does not fit the model: {str(exc).splitlines()[0]}") from None


def _existing_parts(run: RunDir, round_: int) -> list[Path]:
    d = run.losses_dir(round_)
    return sorted(d.glob("*.parquet")) if d.is_dir() else []


def compute_losses(
    run_root: str | os.PathLike[str],
    round_: int,
    checkpoint: str,
    model: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    precision: str = "auto",
    shards: str | list[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> LossesResult:
    """Write ``RUN/losses/round-NNNN/part-00000.parquet`` from ``checkpoint`` (see the module docstring).

    ``model`` defaults to the run's embedding model architecture; ``checkpoint`` is loaded by
    ``curate.models.load_model`` (safetensors or ``torch.load(weights_only=True)``).
    """
    if batch_size < 2:
        raise UsageError("--batch-size must be >= 2 (a contrastive loss needs negatives)")
    progress = progress or NullProgress()
    run = RunDir(run_root)
    mpath, model, existing = _check_round(run, round_, checkpoint, model, shards, overwrite)
    manifest = read_manifest(mpath)
    urls = shard_urls(manifest, urls=shards, run=run.root)
    loaded = _load_checkpoint(model, checkpoint, device, precision)
    filt = ManifestFilter(mpath)  # memory-mapped index: bounded memory for large manifests
    scale = loaded.model.logit_scale.exp().float()
    bias = getattr(loaded.model, "logit_bias", None)
    for p in existing:
        p.unlink()
    stats: Counter[str] = Counter()
    t0 = time.perf_counter()
    progress.start(f"losses round {round_}", total=len(manifest))
    with LossRecorder(run.root, round_) as rec:
        for batch in _batches(_kept_pairs(urls, filt, loaded.preprocess, stats), batch_size):
            img = loaded.encode_images(torch.stack([x for _, x, _ in batch]))
            txt = loaded.encode_texts([c for _, _, c in batch])
            with torch.no_grad():
                la, lb = clip_loss_per_sample(img, txt, scale.to(img.device), bias)
            rec.add([u for u, _, _ in batch], la, lb)
            progress.advance(len(batch))
    progress.finish()
    if rec.rows == 0:
        rec.path.unlink(missing_ok=True)
        raise InputError(f"no sample of round {round_}'s manifest could be read from {len(urls)} shard(s)")
    return LossesResult(
        path=rec.path, rows=rec.rows, batches=rec.batches, missing=len(manifest) - rec.rows,
        seconds=time.perf_counter() - t0, stats=dict(stats),
    )


def _check_round(run: RunDir, round_: int, checkpoint: str, model: str | None, shards: str | list[str] | None,
                 overwrite: bool) -> tuple[Path, str, list[Path]]:
    """The round's manifest, the model name and the loss parts to replace; one-line errors before any work."""
    rec_run = run.require()
    mpath = run.manifest_file(round_)
    if not mpath.exists():
        raise InputError(f"no manifest for round {round_} ({mpath}); run 'curate bootstrap --round {round_}' first")
    existing = _existing_parts(run, round_)
    if existing and not overwrite:
        raise InputError(
            f"{run.losses_dir(round_)} already holds {len(existing)} loss part(s); pass --force to replace them"
        )
    if model is None:
        model = (rec_run.get("embed") or {}).get("model")
        if model is None:
            raise UsageError("pass --model (the run has no embed section to take the architecture from)")
    if not Path(checkpoint).expanduser().exists():
        raise InputError(f"checkpoint not found: {checkpoint}")
    if shards is None and not run.shard_urls():
        raise UsageError("the run records no shard URLs; pass --shards SPEC")
    return mpath, model, existing


def _load_checkpoint(model: str, checkpoint: str, device: str, precision: str) -> Any:
    """The model ``model`` with the checkpoint's weights (a local-dir / hf-hub model brings its own, replaced)."""
    from curate.models import load_model

    if model.startswith(("local-dir:", "hf-hub:")):  # these bring weights; the checkpoint replaces them
        loaded = load_model(model, device=device, precision=precision)
        load_weights(loaded.model, checkpoint)
        return loaded
    return load_model(model, pretrained=checkpoint, device=device, precision=precision)


def _kept_pairs(urls: list[str], filt: ManifestFilter, preprocess: Any,
                stats: Counter[str]) -> Iterator[tuple[str, Any, str]]:
    """``(uid, image tensor, caption)`` of every manifest sample readable from ``urls``; others are counted."""
    policy = ErrorPolicy()
    for url in urls:
        for s in iter_shard(url, policy, stats):
            hit = filt.lookup(s.shard, s.key)
            if hit is None:
                continue
            if s.caption is None or s.image_bytes is None:
                stats["dropped_missing_caption"] += 1
                continue
            try:
                image = decode_image(s.image_bytes, max_pixels=policy.max_pixels)
            except SampleError as exc:
                stats[f"dropped_{exc.reason}"] += 1
                continue
            yield hit[0], preprocess(image), s.caption


def _batches(items: Iterator[tuple[str, Any, str]], size: int) -> Iterator[list[tuple[str, Any, str]]]:
    batch: list[tuple[str, Any, str]] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
