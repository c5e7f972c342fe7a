"""Run the embed stage: resumable per shard, atomic per-shard outputs, every drop counted."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from curate.embed.batches import CAPTION_MODES, ShardBatches, ShardDone
from curate.errors import UsageError
from curate.io.shards import DEFAULT_MAX_PIXELS, ErrorPolicy, expand_shards, fingerprint, shard_name
from curate.io.tables import EMBEDDINGS_FORMAT_VERSION, embedding_schema, fixed_list, write_table
from curate.models import LoadedModel, load_model
from curate.progress import NullProgress, Progress
from curate.run import RunDir, read_json, write_json

_logger = logging.getLogger(__name__)
STEP = "embed"


@dataclass
class EmbedConfig:
    """Options of ``curate embed`` (see its ``--help``)."""

    shards: list[str] | str
    run: str
    model: str = "sample"
    pretrained: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int = 2
    precision: str = "auto"
    captions: str = "auto"
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.captions not in CAPTION_MODES:
            raise UsageError(f"--captions must be one of {', '.join(CAPTION_MODES)} (got {self.captions!r})")
        if self.max_pixels < 1:
            raise UsageError("--max-pixels must be positive")


@dataclass
class EmbedResult:
    """What an embed call did."""

    run: str
    shards_total: int
    shards_done: int
    shards_skipped: int
    samples_written: int
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples_written / self.seconds if self.seconds > 0 else 0.0


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class _ShardBuffer:
    """Accumulates one shard's embedded rows until its ``ShardDone`` arrives."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []

    def add(self, part: dict[str, Any]) -> None:
        self.parts.append(part)

    def table(self, shard: str, dim: int, metadata: dict[str, Any]) -> pa.Table:
        schema = embedding_schema(dim, metadata)
        if not self.parts:
            return schema.empty_table()
        cat = {k: [x for p in self.parts for x in p[k]] for k in ("uid", "key", "content_hash")}
        pos = np.concatenate([p["position"] for p in self.parts])
        img = np.concatenate([p["image_emb"] for p in self.parts])
        txt = np.concatenate([p["text_emb"] for p in self.parts])
        has = np.concatenate([p["has_text"] for p in self.parts])
        score = np.concatenate([p["clip_score"] for p in self.parts])
        order = np.argsort(pos, kind="stable")
        text_arr = fixed_list(txt[order])
        if not has.all():
            mask = pa.array(~has[order])
            text_arr = pa.FixedSizeListArray.from_arrays(text_arr.values, dim, mask=mask)
        return pa.Table.from_arrays(
            [
                pa.array([cat["uid"][i] for i in order]),
                pa.array([shard] * len(order)),
                pa.array([cat["key"][i] for i in order]),
                pa.array(pos[order]),
                pa.array([cat["content_hash"][i] for i in order]),
                fixed_list(img[order]),
                text_arr,
                pa.array(score[order], mask=~has[order], type=pa.float32()),
            ],
            schema=schema,
        )


def _embed_batch(model: LoadedModel, batch: dict[str, Any]) -> dict[str, Any]:
    img = model.encode_images(batch["images"])
    n, d = img.shape
    txt = torch.zeros(n, d)
    has = np.zeros(n, dtype=bool)
    rows = np.asarray(batch["text_rows"], dtype=np.int64)
    if len(rows):
        txt[torch.from_numpy(rows)] = model.encode_tokens(batch["tokens"]).cpu()
        has[rows] = True
    img = img.cpu()
    score = (img * txt).sum(-1).numpy().astype(np.float32)
    return {
        "uid": batch["uid"],
        "key": batch["key"],
        "content_hash": batch["content_hash"],
        "position": np.asarray(batch["position"], dtype=np.int32),
        "image_emb": img.numpy().astype(np.float16),
        "text_emb": txt.numpy().astype(np.float16),
        "has_text": has,
        "clip_score": score,
    }


def _check_compatible(run: RunDir, model: LoadedModel, cfg: EmbedConfig) -> None:
    prev = run.load().get(STEP)
    if not prev:
        return
    same = (prev.get("model"), prev.get("arch"), prev.get("pretrained_sha256") or prev.get("pretrained")) == (
        model.info["model"], model.info["arch"], model.info["pretrained_sha256"] or model.info["pretrained"]
    )
    if not same or prev.get("draft") != cfg.draft:
        raise UsageError(
            f"{run.root} was embedded with model {prev.get('model')} (pretrained={prev.get('pretrained_arg')}); "
            "use the same model or a new --run folder"
        )


def aggregate_stats(run: RunDir, shard_names: list[str]) -> dict[str, Any]:
    """Sum the per-shard stats of ``shard_names`` into one record (``RUN/stats/embed.json``)."""
    total: Counter[str] = Counter()
    per_shard: dict[str, dict[str, int]] = {}
    for name in shard_names:
        p = run.shard_stats_file(STEP, name)
        if p.exists():
            s = read_json(p)
            per_shard[name] = s
            total.update({k: v for k, v in s.items() if isinstance(v, int)})
    total["shards"] = len(per_shard)
    return {"totals": dict(sorted(total.items())), "shards": per_shard}


def run_embed(cfg: EmbedConfig, progress: Progress | None = None) -> EmbedResult:
    """Embed every shard of ``cfg.shards`` that the run has not finished yet."""
    cfg.validate()
    progress = progress or NullProgress()
    urls = expand_shards(cfg.shards)
    run = RunDir(cfg.run)
    model = load_model(cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision)
    _check_compatible(run, model, cfg)
    names = [shard_name(u) for u in urls]
    todo = [u for u, n in zip(urls, names, strict=True) if not run.embedding_file(n).exists()]
    dim = model.embed_dim
    policy = ErrorPolicy(strict=cfg.strict, max_pixels=cfg.max_pixels)
    size = model.info.get("image_size")
    draft = (min(size) if isinstance(size, list) else size) if cfg.draft else None
    provenance = {
        "format_version": EMBEDDINGS_FORMAT_VERSION,
        "dim": dim,
        **{k: model.info[k] for k in ("model", "arch", "pretrained", "pretrained_sha256", "image_size", "mean",
                                      "std", "interpolation", "resize_mode", "context_length", "open_clip")},
        "precision": cfg.precision,
        "device_type": model.device.type,
        "draft_decode": bool(draft),
        "normalized": True,
    }
    record = {
        **provenance,
        "pretrained_arg": cfg.pretrained,
        "draft": cfg.draft,
        "captions": cfg.captions,
        "shards": [{"name": n, **fingerprint(u)} for u, n in zip(urls, names, strict=True)],
    }
    run.root.mkdir(parents=True, exist_ok=True)
    run.update(STEP, record, command=f"embed ({len(todo)} of {len(urls)} shards to do)")
    start = time.perf_counter()
    written = 0
    if todo:
        ds = ShardBatches(todo, model.preprocess, model.tokenizer, cfg.batch_size, policy, cfg.captions, draft)
        workers = min(cfg.workers, len(todo))
        loader = DataLoader(
            ds, batch_size=None, num_workers=workers, collate_fn=_identity,
            pin_memory=model.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
            prefetch_factor=4 if workers else None,
        )
        buffers: dict[str, _ShardBuffer] = {}
        pending: list[Future[None]] = []
        progress.start("embed", total=None, unit="img")
        with ThreadPoolExecutor(max_workers=1) as writer:
            for item in loader:
                if isinstance(item, ShardDone):
                    buf = buffers.pop(item.shard, _ShardBuffer())
                    table = buf.table(item.shard, dim, {**provenance, "shard": item.shard})
                    stats = {**item.stats, "written": table.num_rows}
                    written += table.num_rows
                    pending.append(writer.submit(_write_shard, run, item.shard, table, stats))
                    pending = [f for f in pending if not f.done() or f.result()]
                    continue
                buffers.setdefault(item["shard"], _ShardBuffer()).add(_embed_batch(model, item))
                progress.advance(len(item["uid"]))
            for f in pending:
                f.result()
        progress.finish()
    seconds = time.perf_counter() - start
    agg = aggregate_stats(run, names)
    write_json(run.stats_file(STEP), agg)
    return EmbedResult(
        run=str(run.root), shards_total=len(urls), shards_done=len(todo), shards_skipped=len(urls) - len(todo),
        samples_written=written, seconds=seconds, stats=agg["totals"],
    )


def _write_shard(run: RunDir, shard: str, table: pa.Table, stats: dict[str, int]) -> None:
    """Stats first, then the table: the table's presence marks the shard as done."""
    write_json(run.shard_stats_file(STEP, shard), stats)
    write_table(run.embedding_file(shard), table)


def embed_config_dict(cfg: EmbedConfig) -> dict[str, Any]:
    """The config as a JSON-able dict."""
    d = asdict(cfg)
    d["run"] = os.fspath(Path(cfg.run))
    return d
