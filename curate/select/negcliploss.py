"""negCLIPLoss (Wang et al., NeurIPS 2024): the CLIP score corrected by the sample's contrastive
normalisation term, estimated over K seeded random batches of the pool (docs/select.md).

Per eligible sample i (L2-normalised image v and caption t, proxy-model temperature τ) and random
batch B containing i::

    R_B(i) = τ/2 · ( log Σ_{j∈B} exp(<v_i, t_j>/τ) + log Σ_{j∈B} exp(<v_j, t_i>/τ) )
    negCLIPLoss(i) = <v_i, t_i> − (1/K) Σ_k R_{B_k}(i)

which is τ times the negative CLIP training loss of i averaged over its K batches.

Pipeline: pass 1 gives each row its clip score and, for each repetition k, a batch drawn uniformly
from ``M = ceil(N / batch_size)`` batches (a ``(n, K)`` partition: partition ``k·M + b``); pass 2
computes, per batch, both log-sum-exps of every member from tiles of ``img_B @ txt_Bᵀ``; the combine
stage adds each row's K terms in partition order and ``finish`` forms the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from curate.errors import CurateError, InputError, UsageError
from curate.select.base import (
    DEFAULT_MEMORY,
    BlockScan,
    PartitionOutput,
    Pool,
    RankBy,
    Reasons,
    SelectContext,
    SelectorConfig,
    ThresholdOrBudget,
    register,
)

BATCH_SIZE = 32768  # the reference's batch (the proxy model's training batch in DataComp)
REPEATS = 10  # the reference's K (the paper: K >= 5 is consistently better than CLIP score)
TILE_ELEMENTS = 1 << 24  # similarities per tile (64 MiB in float32)
COLUMN_TILE = 1 << 16  # captions per column tile of a batch
_STREAM = 0x6E63_4C4C  # seeds the batch draws apart from every other seeded choice


@dataclass(frozen=True)
class NegClipLossConfig(SelectorConfig):
    """Options of ``--method negcliploss``.

    Args:
        batch_size: B, the batch size of the contrastive term (``ceil(N / B)`` batches per repetition).
        repeats: K, the random batches each sample is scored in (averaged).
        temperature: τ; default: ``1 / exp(logit_scale)`` of the model that embedded the run.
        threshold: keep every sample with ``negCLIPLoss >= threshold`` instead of a budget.
        dtype: ``float32`` or ``float64`` similarity tiles (float64 for exactness tests).
    """

    batch_size: int = BATCH_SIZE
    repeats: int = REPEATS
    temperature: float | None = None
    threshold: float | None = None
    dtype: str = "float32"

    def validate(self) -> None:
        if self.batch_size < 2:
            raise UsageError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.repeats < 1:
            raise UsageError(f"--repeats must be a positive integer, got {self.repeats}")
        if self.temperature is not None and not (np.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--temperature must be a positive number, got {self.temperature}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise UsageError(f"--threshold must be a finite number, got {self.threshold}")
        if self.dtype not in ("float32", "float64"):
            raise UsageError(f"dtype must be float32 or float64, got {self.dtype!r}")


def model_temperature(run_root: Any) -> float:
    """``1 / exp(logit_scale)`` of the model that embedded the run (``run.json`` → ``embed``)."""
    from curate.models import load_model_from_run

    try:
        loaded = load_model_from_run(run_root, device="cpu")
    except CurateError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"negcliploss needs the temperature of the run's model, which could not be loaded "
                         f"({first}); pass --temperature T") from None
    scale = getattr(loaded.model, "logit_scale", None)
    if scale is None:
        raise UsageError("the run's model has no logit_scale; pass --temperature T")
    return float(1.0 / float(np.exp(float(scale.detach().float().cpu().reshape(-1)[0]))))


def batch_draws(seed: int, k: int, start: int, n: int, batches: int) -> np.ndarray:
    """The batch (0 .. batches-1) of pool rows ``start .. start+n`` in repetition ``k``: row r takes
    ``floor(u · batches)`` for the r-th value u of ``default_rng([seed, _STREAM, k]).random()``, so a
    row's batches depend only on the seed and its pool row (not on blocks or engines)."""
    rng = np.random.default_rng([int(seed), _STREAM, int(k)])
    rng.bit_generator.advance(start)
    return np.minimum((rng.random(n) * batches).astype(np.int64), batches - 1).astype(np.int32)


def batch_lse(img: Any, txt: Any, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """For one batch (rows of :class:`~curate.select.clipcov.Rows`): ``log Σ_j exp(<v_i, t_j>/τ)`` (images
    against every caption) and ``log Σ_j exp(<v_j, t_i>/τ)`` (captions against every image), float64.

    Tiles of ``img @ txtᵀ``: rows in runs of ``TILE_ELEMENTS / min(m, COLUMN_TILE)``, captions in tiles of
    ``COLUMN_TILE``. A tile's log-sum-exps are taken in the rows' dtype (max-shifted, so logits of ±1/τ
    are safe; float32 is twice as fast as float64 and errs by about 1e-7 of the logits) and merged in
    float64 with ``logaddexp`` in tile order. The tiles depend only on the batch size m, so held and
    lazily normalised rows give the same bits.

    On CPU the log-sum-exps run on one thread. Threaded, a process's first ``logsumexp`` now and then
    gave other bits for the first thread's half of the rows (4 of 1,500 forked processes on an Intel
    Xeon, with two CPU-bound programs beside them); on one thread, 3,000 of 3,000 gave the same bits.
    The product (``2d`` flops per similarity) stays threaded and dominates the cost."""
    import torch

    from curate.engines.devices import torch_threads

    m = len(img)
    cols = [(c, min(m, c + COLUMN_TILE)) for c in range(0, m, COLUMN_TILE)]
    step = max(1, TILE_ELEMENTS // min(m, COLUMN_TILE))
    dev = img.device if img.held is None else img.held.device
    row = torch.full((m,), -torch.inf, dtype=torch.float64, device=dev)
    col = torch.full((m,), -torch.inf, dtype=torch.float64, device=dev)
    inv = 1.0 / temperature
    held = [txt[c0:c1] for c0, c1 in cols] if len(cols) == 1 or txt.held is not None else None
    one = dev == "cpu" or getattr(dev, "type", None) == "cpu"
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        x = img[r0:r1]
        for i, (c0, c1) in enumerate(cols):
            y = held[i] if held is not None else txt[c0:c1]
            z = (x @ y.T).mul_(inv)  # logits <v_i, t_j> / τ
            with torch_threads(1, when=one):  # see the docstring: the product is threaded, these are not
                r, c = torch.logsumexp(z, dim=1).double(), torch.logsumexp(z, dim=0).double()
            row[r0:r1] = torch.logaddexp(row[r0:r1], r)
            col[c0:c1] = torch.logaddexp(col[c0:c1], c)
            del z, r, c  # before the next tile's product: two tiles are never held at once
    return row.cpu().numpy(), col.cpu().numpy()


@register
class NegClipLossSelector(ThresholdOrBudget):
    """negCLIPLoss: top samples by the clip score minus the batch-normalisation term (docs/select.md)."""

    name = "negcliploss"
    summary = "top samples by CLIP score minus its contrastive normalisation over K random batches (Wang et al. 2024)"
    config_class = NegClipLossConfig
    needs = frozenset({"image", "text"})
    columns: ClassVar[dict[str, str]] = {"score": "f8", "clip_score": "f8", "norm_term": "f8"}
    partitioned = True
    partition_parts = frozenset({"image", "text"})
    pass2_combine = "sum"
    config: NegClipLossConfig


    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        from curate.engines.devices import device_name

        tau = self.config.temperature if self.config.temperature is not None else model_temperature(ctx.run_root)
        batches = max(1, math.ceil(len(source) / self.config.batch_size))
        return {"temperature": float(tau), "batches": batches, "n_partitions": batches * self.config.repeats,
                "seed": ctx.seed, "device": device_name(ctx.device)}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        from curate.select.baselines import rowdot

        assert chunk.image is not None and chunk.text is not None
        assert chunk.image_ok is not None and chunk.text_ok is not None and chunk.text_present is not None
        n = len(chunk)
        reasons = Reasons(n)
        ok = chunk.image_ok & chunk.text_ok
        reasons.set(~chunk.image_ok, "bad_image_emb")
        reasons.set(chunk.image_ok & ~chunk.text_present, "null_text")
        reasons.set(chunk.image_ok & chunk.text_present & ~chunk.text_ok, "bad_text_emb")
        clip = np.full(n, np.nan)
        idx = np.flatnonzero(ok)
        clip[idx] = rowdot(chunk.image, chunk.text, idx, idx)
        m = int(shared["batches"])
        part = np.full((n, self.config.repeats), -1, np.int32)
        for k in range(self.config.repeats):
            part[ok, k] = k * m + batch_draws(shared["seed"], k, start, n, m)[ok]
        return BlockScan({"clip_score": clip}, ok, reasons, partition=part)

    def reduce(self, sums: dict[str, np.ndarray], sizes: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
        if sizes.size == 0 or sizes.sum() == 0:
            raise InputError("no sample has both a valid image and a valid caption embedding; negcliploss needs both")
        return {"mean_batch": float(sizes.sum() / max(1, int((sizes > 0).sum()))),
                "largest_batch": int(sizes.max())}

    def partition(self, data: Any, shared: dict[str, Any]) -> PartitionOutput:
        import torch

        from curate.select.clipcov import Rows

        dtype = getattr(torch, self.config.dtype)
        dev = shared.get("device", "cpu")
        memory = shared.get("memory", DEFAULT_MEMORY)  # a batch's copies up to half of it
        if data.holds(2, memory, reserve=memory // 2):
            img = Rows(torch.from_numpy(data.matrix("image")).to(dev, dtype))
            txt = Rows(torch.from_numpy(data.matrix("text")).to(dev, dtype))
        else:  # a batch larger than the budget: its float16 rows, normalised a tile at a time
            img = Rows.lazy(data.raw16("image"), dev, dtype)
            txt = Rows.lazy(data.raw16("text"), dev, dtype)
        row, col = batch_lse(img, txt, shared["temperature"])
        return PartitionOutput({"lse": row + col})

    def finish(self, p1: dict[str, np.ndarray], p2: dict[str, np.ndarray], count: np.ndarray,
               shared: dict[str, Any]) -> dict[str, np.ndarray]:
        clip = np.asarray(p1["clip_score"], np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = shared["temperature"] / 2.0 * (p2["lse"] / count) if "lse" in p2 else np.full(len(clip), np.nan)
        ok = p1["__eligible"] & (count > 0)
        norm = np.where(ok, norm, np.nan)
        return {"score": np.where(ok, clip - norm, np.nan), "norm_term": norm}

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        if self.config.threshold is not None:
            return RankBy("score", None, minimum=self.config.threshold, reason="below_threshold")
        return RankBy("score", budget, info="effective_threshold")

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        return {"temperature": shared["temperature"], "batch_size": self.config.batch_size,
                "repeats": self.config.repeats, "batches_per_repeat": int(shared["batches"]),
                "mean_batch": shared.get("mean_batch"), "largest_batch": shared.get("largest_batch")}
