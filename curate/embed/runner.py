"""Run the embed stage: resumable per shard, atomic per-shard outputs, every drop counted."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from curate.choices import CAPTION_MODES
from curate.embed.batches import ShardBatches, ShardDone, WorkerFailure
from curate.embed.preprocess import FastImageTransform, fast_transform, normalize_pixels
from curate.embed.state import (
    STEP,
    ShardState,
    aggregate_stats,
    retryable,
    run_lock,
    run_shard_urls,
    shard_states,
)
from curate.engines import Engine, ItemWorker, get_engine, make_engine, parse_devices
from curate.engines.devices import check_device
from curate.errors import CurateError, Interrupted, UsageError
from curate.fs import sweep_dead_temps, write_json
from curate.io.shards import DEFAULT_MAX_PIXELS, ErrorPolicy, expand_shards, shard_name
from curate.io.tables import fixed_list, write_embedding_table
from curate.models import PRECISIONS, SAMPLE_MODEL, LoadedModel, autocast_dtype, load_model
from curate.progress import NullProgress, Progress, set_total
from curate.rundir import RunDir
from curate.schemas import EMBEDDINGS_FORMAT_VERSION, embedding_schema

_logger = logging.getLogger(__name__)
_SCHEMAS = ("local-dir:", "hf-hub:")  # model names that bring their own weights
_MAX_IN_FLIGHT = 8  # encoded batches waiting for the writer thread (bounds host and GPU memory)
_HAS_IN_ORDER = "in_order" in inspect.signature(DataLoader).parameters


@dataclass
class EmbedConfig:
    """Options of ``curate embed`` (see its ``--help``)."""

    shards: list[str] | str
    run: str
    model: str = "sample"
    pretrained: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int | None = None  # decode worker processes (None: see ``decode_workers``)
    threads: int | None = None  # CPU threads of a CPU model (None: see ``_model_threads``)
    precision: str = "auto"
    captions: str = "auto"
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True
    fast_preprocess: bool = True
    refresh: bool = False
    engine: str = "local"
    devices: str | None = None  # local engine: one process per device ("all", "0,1", "cpu,cpu")
    ray_address: str | None = None  # ray engine: cluster address; None starts a local Ray for the call
    ray_num_cpus: int | None = None  # ray engine: CPUs of the local Ray instance curate starts

    def validate(self) -> None:
        """Check option values before any work (one-line ``UsageError`` on a bad one)."""
        self.make_engine()
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1 (got {self.threads})")
        if self.captions not in CAPTION_MODES:
            raise UsageError(f"--captions must be one of {', '.join(CAPTION_MODES)} (got {self.captions!r})")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be >= 1 (got {self.max_pixels})")
        if self.pretrained is None and self.model != SAMPLE_MODEL and not self.model.startswith(_SCHEMAS):
            raise UsageError(f"--model {self.model} needs --pretrained (an open_clip tag or a checkpoint file): "
                             "embeddings from random weights are meaningless")
        check_device(self.device)

    def device_list(self) -> list[str]:
        """``--devices`` as torch device strings (empty: this process only)."""
        if self.devices is None:
            return []
        if self.device != "auto":
            raise UsageError("use either --device (this process) or --devices (one process per device), not both")
        devices = parse_devices(self.devices)
        if len({d.split(":")[0] for d in devices}) > 1:
            raise UsageError(f"--devices {self.devices!r} mixes CPU and GPU devices (their tables would record "
                             "different precisions); use only GPUs or only cpu")
        return devices

    def make_engine(self, devices: list[str] | None = None) -> Engine:
        """The engine this config asks for (validated, not started); ``devices``: ``device_list()``."""
        get_engine(self.engine)  # unknown name: one-line error listing the choices
        devices = self.device_list() if devices is None else devices
        return make_engine(self.engine, device=self.device, devices=devices if len(devices) > 1 else None,
                           address=self.ray_address, num_cpus=self.ray_num_cpus,
                           items_per_task=max(1, self.workers or 2) if self.engine == "ray" else None)



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
    changed: list[str] = field(default_factory=list)  # embedded shards whose input changed (not refreshed)
    refreshed: list[str] = field(default_factory=list)  # changed shards re-embedded by this call (--refresh)
    missing: list[str] = field(default_factory=list)  # embedded shards whose input is gone
    failed: list[str] = field(default_factory=list)  # shards that could not be read (retried by the next run)

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

    @property
    def rows(self) -> int:
        return sum(len(p["uid"]) for p in self.parts)

    def table(self, shard: str, dim: int, metadata: dict[str, Any]) -> pa.Table:
        """The shard's rows in tar order as an Arrow table (text columns null where there is no caption)."""
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
            text_arr = pa.FixedSizeListArray.from_arrays(text_arr.values, dim, mask=pa.array(~has[order]))
        return pa.Table.from_arrays(
            [
                pa.array([cat["uid"][i] for i in order], pa.string()),
                pa.array([shard] * len(order), pa.string()),
                pa.array([cat["key"][i] for i in order], pa.string()),
                pa.array(pos[order], pa.int32()),
                pa.array([cat["content_hash"][i] for i in order], pa.string()),
                fixed_list(img[order]),
                text_arr,
                pa.array(score[order], mask=~has[order], type=pa.float32()),
            ],
            schema=schema,
        )


def _forward(model: LoadedModel, batch: dict[str, Any], pixels: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Encode one decoded batch on the model's device (asynchronously on CUDA).

    Returns unit-norm image embeddings, text embeddings of the rows with a caption (or None), and the
    row indices of those captions.
    """
    images = batch["images"]
    if batch["pixels"] == "uint8":
        assert pixels is not None
        images = normalize_pixels(images.to(model.device, non_blocking=True), *pixels,
                                  channels_last=model.device.type == "cuda")
    img = model.encode_images(images)
    rows = torch.from_numpy(np.asarray(batch["text_rows"], dtype=np.int64))
    txt = model.encode_tokens(batch["tokens"]) if len(rows) else None
    return img, txt, rows


def _to_host(batch: dict[str, Any], img: torch.Tensor, txt: torch.Tensor | None, rows: torch.Tensor
             ) -> dict[str, Any]:
    """One encoded batch as host arrays: float16 embeddings, float32 CLIP score (image · text, unit norm)."""
    img = img.cpu()
    n, d = img.shape
    full_txt = torch.zeros(n, d)
    has = np.zeros(n, dtype=bool)
    if txt is not None:
        full_txt[rows] = txt.cpu()
        has[rows.numpy()] = True
    score = (img * full_txt).sum(-1).numpy().astype(np.float32)
    return {
        "uid": batch["uid"],
        "key": batch["key"],
        "content_hash": batch["content_hash"],
        "position": np.asarray(batch["position"], dtype=np.int32),
        "image_emb": img.numpy().astype(np.float16),
        "text_emb": full_txt.numpy().astype(np.float16),
        "has_text": has,
        "clip_score": score,
    }


class _Outputs:
    """Everything after the forward pass, run in one writer thread in submission order.

    Copies results to the host (waiting for the GPU there, not in the loop that feeds it), gathers
    each shard's rows, and writes its table atomically when the shard's ``ShardDone`` comes through.
    """

    def __init__(self, run: RunDir, dim: int, provenance: dict[str, Any], fingerprints: dict[str, Any]) -> None:
        self.run, self.dim, self.provenance, self.fingerprints = run, dim, provenance, fingerprints
        self.buffers: dict[str, _ShardBuffer] = {}
        self.written: dict[str, int] = {}  # rows written per finished shard
        self.failed: list[str] = []

    def add(self, batch: dict[str, Any], img: torch.Tensor, txt: torch.Tensor | None, rows: torch.Tensor) -> None:
        self.buffers.setdefault(batch["shard"], _ShardBuffer()).add(_to_host(batch, img, txt, rows))

    def finish(self, done: ShardDone) -> None:
        buf = self.buffers.pop(done.shard, _ShardBuffer())
        if retryable(done.stats):  # not marked done: the next run tries the shard again
            self.failed.append(done.shard)
            write_json(self.run.shard_stats_file(STEP, done.shard), {**done.stats, "written": 0})
            return
        stats = {**done.stats, "written": buf.rows}
        meta = {**self.provenance, "shard": done.shard, "source": self.fingerprints.get(done.shard), "stats": stats}
        table = buf.table(done.shard, self.dim, meta)
        _write_shard(self.run, done.shard, table, stats)
        self.written[done.shard] = table.num_rows


def _model_identity(rec: dict[str, Any]) -> tuple[Any, ...]:
    return rec.get("model"), rec.get("arch"), rec.get("pretrained_sha256") or rec.get("pretrained")


def _check_compatible(prev: dict[str, Any], model: LoadedModel, cfg: EmbedConfig, root: Path) -> None:
    """A run holds embeddings of one model: refuse to add shards embedded with another."""
    if not prev or "model" not in prev:
        return
    if _model_identity(prev) != _model_identity(model.info):
        raise UsageError(
            f"{root} was embedded with model {prev.get('model')} (pretrained={prev.get('pretrained_arg')}); "
            f"use the same --model/--pretrained or a new --run folder"
        )
    if prev.get("draft", True) != cfg.draft:
        raise UsageError(f"{root} was embedded with draft decoding {'on' if prev.get('draft') else 'off'}; "
                         "use the same setting or a new --run folder")


def _provenance(model: LoadedModel, cfg: EmbedConfig, draft: int | None, fast: FastImageTransform | None,
                device_type: str | None = None) -> dict[str, Any]:
    """What the tables record about how they were made; ``device_type``: the workers' device, when the
    model was loaded here only to describe it."""
    info = model.info
    precision = model.precision_name
    if device_type is not None:
        dtype = autocast_dtype(cfg.precision, torch.device(device_type))
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")  # type: ignore[arg-type]
    return {
        "format_version": EMBEDDINGS_FORMAT_VERSION,
        "dim": model.embed_dim,
        **{k: info[k] for k in ("model", "arch", "pretrained", "pretrained_sha256", "image_size", "mean",
                                "std", "interpolation", "resize_mode", "context_length", "open_clip")},
        "precision": precision,
        "device_type": device_type or model.device.type,
        "draft_decode": bool(draft),
        # the fast path is used only where it equals open_clip's transform bit for bit (see preprocess.py)
        "preprocess": "curate-fast" if fast else "open_clip",
        "normalized": True,
    }


def _merge_states(run: RunDir, urls: list[str]) -> list[ShardState]:
    """States of the run's earlier shards (run.json) followed by this call's new ones; this call's URL wins."""
    names = {shard_name(u) for u in urls}
    earlier = [u for u in run_shard_urls(run) if shard_name(u) not in names]
    return shard_states(run, [*earlier, *urls])


def run_embed(cfg: EmbedConfig, progress: Progress | None = None) -> EmbedResult:
    """Embed every shard of ``cfg.shards`` that the run has not finished yet.

    With ``cfg.refresh``, shards whose input changed since they were embedded (size or mtime) are
    embedded again and their tables replaced atomically; without it they are only reported. The work
    runs in this process, in one process per device (``cfg.devices``) or on Ray (``cfg.engine``); every
    way writes the same tables (docs/engines.md).
    """
    cfg.validate()
    progress = progress or NullProgress()
    urls = _absolute(expand_shards(cfg.shards))
    run = RunDir(cfg.run)
    prev = run.load().get(STEP) or {}
    devices = cfg.device_list()
    with cfg.make_engine(devices) as engine:
        parallel = engine.distributed or len(devices) > 1  # workers other than this process load the model
        # the device the model runs on in a worker (this process when there is one worker)
        device = engine.worker_device() if engine.distributed else (devices[0] if devices else cfg.device)
        # workers elsewhere load their own copy; this one (on the CPU) gives the provenance and the checks
        model = load_model(cfg.model, cfg.pretrained, device="cpu" if parallel else device, precision=cfg.precision)
        _check_compatible(prev, model, cfg, run.root)
        with run_lock(run, STEP):
            sweep_dead_temps(run.embeddings_dir, run.stats_file(STEP).with_suffix(""))
            states, changed, missing, refresh, todo = _shard_work(run, urls, cfg.refresh)
            worker = EmbedWorker(cfg, str(run.root.resolve()), _draft_size(model, cfg), cfg.fast_preprocess)
            worker.expect = _provenance(model, cfg, worker.draft, worker.fast_for(model),
                                        device_type=_device_type(device) if parallel else None)
            if not parallel:
                worker.model = model  # this process: no second load
            record = {**worker.expect, "pretrained_arg": cfg.pretrained, "draft": cfg.draft, "captions": cfg.captions}
            run.update(STEP, {**record, "shards": [s.record() for s in states]},
                       command=f"embed ({len(todo)} of {len(urls)} shards to do)")
            start = time.perf_counter()
            try:
                results = engine.run_items(worker, [_work_item(s) for s in todo], progress) if todo else []
            except KeyboardInterrupt:
                done = sum(run.embedding_file(shard_name(u)).exists() for u in urls)
                raise Interrupted(f"interrupted: {done} of {len(urls)} shards done; "
                                  "rerun the same command to resume") from None
            seconds = time.perf_counter() - start
            written = sum(r["written"] for r in results)
            failed = [s.name for s, r in zip(todo, results, strict=True) if r["failed"]]
            states = shard_states(run, [s.url for s in states])
            run.update(STEP, {**record, "shards": [s.record() for s in states]})
            agg = aggregate_stats(run, [s.name for s in states])
            write_json(run.stats_file(STEP), agg)
    return EmbedResult(
        run=str(run.root), shards_total=len(urls), shards_done=len(todo), shards_skipped=len(urls) - len(todo),
        samples_written=written, seconds=seconds, stats=agg["totals"],
        changed=[s.name for s in changed if s.name not in refresh], refreshed=sorted(refresh), missing=missing,
        failed=failed,
    )


def _shard_work(run: RunDir, urls: list[str], refresh_changed: bool
                ) -> tuple[list[ShardState], list[ShardState], list[str], set[str], list[ShardState]]:
    """The run's shard states, the changed ones, the missing ones, those to refresh, and those to embed."""
    states = _merge_states(run, urls)
    mine = {shard_name(u) for u in urls}
    changed = [s for s in states if s.changed and not s.missing]
    missing = [s.name for s in states if s.done and s.missing]
    refresh = {s.name for s in changed if s.name in mine} if refresh_changed else set()
    todo = [s for s in states if s.name in mine and (not s.done or s.name in refresh)]
    return states, changed, missing, refresh, todo


@dataclass
class EmbedPlan:
    """What ``run_embed`` would do (``curate embed --dry-run``): nothing is loaded or written."""

    run: str
    run_exists: bool
    model: str
    pretrained: str | None
    shards_total: int
    todo: list[str]  # shards to embed (new, unfinished, or changed with --refresh)
    skipped: list[str]  # shards already embedded
    changed: list[str] = field(default_factory=list)  # embedded shards whose input changed (not refreshed)
    refreshed: list[str] = field(default_factory=list)  # changed shards that --refresh would re-embed
    missing: list[str] = field(default_factory=list)  # embedded shards whose input is gone
    run_model: dict[str, Any] = field(default_factory=dict)  # model and pretrained the run was embedded with

    def summary(self) -> dict[str, Any]:
        return asdict(self) | {"dry_run": True}


def plan_embed(cfg: EmbedConfig) -> EmbedPlan:
    """Check the options and the shard list and say which shards ``run_embed`` would embed; write nothing.

    The model is not loaded, so a model that differs from the run's is reported (``run_model``), not refused.
    """
    cfg.validate()
    urls = _absolute(expand_shards(cfg.shards))
    run = RunDir(cfg.run)
    prev = run.load().get(STEP) or {}
    cfg.device_list()
    _, changed, missing, refresh, todo = _shard_work(run, urls, cfg.refresh)
    names = [shard_name(u) for u in urls]
    todo_names = {s.name for s in todo}
    return EmbedPlan(
        run=str(run.root), run_exists=run.exists(), model=cfg.model, pretrained=cfg.pretrained,
        shards_total=len(urls), todo=[s.name for s in todo], skipped=[n for n in names if n not in todo_names],
        changed=[s.name for s in changed if s.name not in refresh], refreshed=sorted(refresh), missing=missing,
        run_model={k: prev[k] for k in ("model", "pretrained_arg") if k in prev},
    )


def _absolute(urls: list[str]) -> list[str]:
    """Local shard paths made absolute: run.json and the tables then name shards that later commands
    (report, reshard, a resumed embed) find from any working directory. URLs and ``pipe:`` stay as given."""
    return [u if "://" in u or u.startswith("pipe:") else os.path.abspath(u) for u in urls]


def _draft_size(model: LoadedModel, cfg: EmbedConfig) -> int | None:
    """JPEG draft-decoding target (the model's shorter input side), or None when draft decoding is off."""
    if not cfg.draft:
        return None
    size = model.info.get("image_size")
    return min(size) if isinstance(size, list) else size


def _device_type(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _work_item(state: ShardState) -> dict[str, Any]:
    """A shard as work for a worker: where to read it (local paths are absolute, see ``_absolute``), its
    name, and the fingerprint recorded with its table."""
    return {"url": state.url, "name": state.name,
            "source": {k: v for k, v in state.current.items() if k != "missing"}}


class EmbedWorker(ItemWorker):
    """Embeds shards into a run folder: the same worker in this process, in ``--devices`` processes and in
    Ray actors. Picklable until :meth:`open` loads the model; each shard's table is written by the worker.
    """

    label = "embed"
    unit = "img"

    def __init__(self, cfg: EmbedConfig, run_root: str, draft: int | None, fast: bool) -> None:
        self.cfg, self.run_root, self.draft, self.fast = cfg, run_root, draft, fast
        self.expect: dict[str, Any] = {}  # provenance the driver recorded: a worker must match it
        self.model: LoadedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None}

    def fast_for(self, model: LoadedModel) -> FastImageTransform | None:
        return fast_transform(model.preprocess, model.info) if self.fast else None

    def open(self, device: str) -> None:
        if self.model is None:
            cfg = self.cfg
            self.model = load_model(cfg.model, cfg.pretrained, device=device, precision=cfg.precision)
        got = _provenance(self.model, self.cfg, self.draft, self.fast_for(self.model))
        diff = sorted(k for k in set(got) | set(self.expect) if got.get(k) != self.expect.get(k))
        if self.expect and diff:
            raise CurateError(f"a worker loaded {self.cfg.model} differently from the driver ({', '.join(diff)}: "
                              f"{[got.get(k) for k in diff]} vs {[self.expect.get(k) for k in diff]}); "
                              "check that every node has the same checkpoint and package versions")

    def close(self) -> None:
        self.model = None

    def process(self, items: Sequence[Any], progress: Progress) -> list[Any]:
        assert self.model is not None, "open() first"
        fingerprints = {it["name"]: it["source"] for it in items}
        out = _embed_shards(RunDir(self.run_root), self.model, self.cfg, [it["url"] for it in items], fingerprints,
                            self.draft, self.expect, progress, self.fast_for(self.model))
        return [{"written": out.written.get(it["name"], 0), "failed": it["name"] in out.failed} for it in items]

    def progress_units(self, result: Any) -> float:
        return float(result["written"])


def _embed_shards(
    run: RunDir, model: LoadedModel, cfg: EmbedConfig, urls: list[str], fingerprints: dict[str, Any],
    draft: int | None, provenance: dict[str, Any], progress: Progress, fast: FastImageTransform | None,
) -> _Outputs:
    """Decode in worker processes, encode in this one, finish and write shards in a writer thread."""
    policy = ErrorPolicy(strict=cfg.strict, max_pixels=cfg.max_pixels)
    on_cpu = model.device.type == "cpu"  # CPU models: the workers normalise; CUDA: the GPU does, from uint8
    ds = ShardBatches(urls, fast or model.preprocess, model.tokenizer, cfg.batch_size, policy,
                      cfg.captions, draft, int(model.info.get("context_length") or 77),
                      pixels="uint8" if fast else "float",
                      normalize=(model.info["mean"], model.info["std"]) if fast and on_cpu else None)
    workers = min(decode_workers(cfg.workers, model.device.type, torch.get_num_threads()), len(urls))
    loader = DataLoader(
        ds, batch_size=None, num_workers=workers, collate_fn=_identity,
        pin_memory=model.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
        **({"in_order": False} if workers > 1 and _HAS_IN_ORDER else {}),
    )
    pixels = None
    if fast:
        pixels = (torch.tensor(model.info["mean"], device=model.device),
                  torch.tensor(model.info["std"], device=model.device))
    outputs = _Outputs(run, model.embed_dim, provenance, fingerprints)
    queue: deque[Future[None]] = deque()
    threads = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(cfg.threads or _model_threads(threads, workers))
    progress.start("embed", total=None, unit="img")
    estimate = _TotalEstimate(len(urls))
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-embed-out") as writer:
            for item in loader:
                if isinstance(item, WorkerFailure):
                    item.reraise()
                if isinstance(item, ShardDone):
                    queue.append(writer.submit(outputs.finish, item))
                    set_total(progress, estimate.shard_done(item.shard))
                else:
                    queue.append(writer.submit(outputs.add, item, *_forward(model, item, pixels)))
                    progress.advance(len(item["uid"]))
                    estimate.add(item["shard"], len(item["uid"]))
                while queue and (queue[0].done() or len(queue) > _MAX_IN_FLIGHT):
                    queue.popleft().result()  # re-raises a writer error here
            while queue:
                queue.popleft().result()
    finally:
        torch.set_num_threads(threads)
        progress.finish()
    return outputs


class _TotalEstimate:
    """Images a call will embed, estimated from its finished shards (for the progress ETA)."""

    def __init__(self, shards: int) -> None:
        self.shards, self.finished, self.finished_images, self.seen = shards, 0, 0, 0
        self.open: dict[str, int] = {}

    def add(self, shard: str, n: int) -> None:
        self.open[shard] = self.open.get(shard, 0) + n
        self.seen += n

    def shard_done(self, shard: str) -> float:
        self.finished += 1
        self.finished_images += self.open.pop(shard, 0)
        return max(float(self.seen), self.finished_images / self.finished * self.shards)


def decode_workers(workers: int | None, device_type: str, share: int) -> int:
    """Decode worker processes: ``--workers`` when given, else by where the model runs.

    A GPU model leaves the CPU to decoding, and decoding then sets the pace (BENCHMARKS §6), so it gets
    every core of this process's share (``share``: torch's threads, which ``--devices`` divides among its
    processes) but one, from 2 up to 32. A CPU model is most of the work and needs the cores itself: 2.
    """
    if workers is not None:
        return workers
    if device_type == "cuda":
        return max(2, min(share - 1, 32))
    return 2


def _model_threads(threads: int, workers: int) -> int:
    """Threads of a CPU model while ``workers`` decode processes run beside it (unless ``--threads`` says).

    With passive OpenMP waits (``OMP_WAIT_POLICY=PASSIVE``, which the CLI sets) the model gets every core:
    it is most of the work, and the workers' share interleaves (BENCHMARKS §6: 1.2× the images/s of
    leaving the workers their cores, also with the cores busy with other jobs). With spinning waits,
    threads that wait for a core taken by a worker make every small op of the model take milliseconds
    (measured: 2.2 ms -> 24-215 ms per tiny batch on 2 busy cores), so the workers keep their cores.
    """
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return max(1, min(threads, _cores()))
    return max(1, min(threads, _cores() - workers))


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _write_shard(run: RunDir, shard: str, table: pa.Table, stats: dict[str, int]) -> None:
    """The table (with its stats in the metadata) marks the shard done; then a JSON copy of the stats."""
    write_embedding_table(run.embedding_file(shard), table)
    write_json(run.shard_stats_file(STEP, shard), stats)


