"""Baseline selectors: random, CLIP-score filtering (DataComp) and SemDeDup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from curate.errors import InputError, UsageError
from curate.rundir import check_selection_name
from curate.select.base import (
    DEFAULT_MEMORY,
    BlockScan,
    PartitionOutput,
    Pool,
    RankBy,
    Reasons,
    SelectContext,
    Selector,
    SelectorConfig,
    ThresholdOrBudget,
    register,
)
from curate.select.manage import input_rows, input_selection
from curate.select.partition import argmax_rows, default_kmeans_sample, sample_rows, train_kmeans

_BLOCK_ELEMENTS = 1 << 24


ROWDOT_ROWS = 1 << 13  # rows per product in rowdot: its temporaries are this many rows, not the block


def rowdot(a: np.ndarray, b: np.ndarray, a_rows: np.ndarray | None = None,
           b_rows: np.ndarray | None = None) -> np.ndarray:
    """``<a[a_rows[i]], b[b_rows[i]]>`` per i (``a_rows``/``b_rows`` None: row i), float64 accumulation.

    Rows are gathered and multiplied :data:`ROWDOT_ROWS` at a time; each value depends on its two rows
    only, so the chunking does not change it (and the caller needs no gathered copy of a block)."""
    import torch

    n = len(a) if a_rows is None else len(a_rows)
    out = np.empty(n, np.float64)
    for s in range(0, n, ROWDOT_ROWS):
        e = min(n, s + ROWDOT_ROWS)
        aa = a[s:e] if a_rows is None else a[a_rows[s:e]]
        bb = b[s:e] if b_rows is None else b[b_rows[s:e]]
        out[s:e] = (torch.from_numpy(np.ascontiguousarray(aa)) * torch.from_numpy(np.ascontiguousarray(bb))).sum(
            1, dtype=torch.float64).numpy()
    return out


def block_uniform(seed: int, start: int, n: int) -> np.ndarray:
    """Values ``start .. start+n`` of ``default_rng(seed).random(pool size)``, without drawing the others."""
    rng = np.random.default_rng(seed)
    rng.bit_generator.advance(start)
    return rng.random(n)


@dataclass(frozen=True)
class RandomConfig(SelectorConfig):
    """Options of ``--method random``.

    Args:
        within: draw only among the samples kept by this earlier selection of the run (filter, then
            sample: e.g. a quality filter wider than the budget, then an even draw to the budget).
    """

    within: str | None = None

    def validate(self) -> None:
        if self.within is not None:
            check_selection_name(self.within)


@register
class RandomSelector(Selector):
    """Uniform random subset: the ``budget`` rows with the largest ``default_rng(seed).random(pool)``,
    among all rows or only those kept by the ``--within`` selection."""

    name = "random"
    summary = "uniform random subset (seeded); --within NAME draws among an earlier selection's samples"
    config_class = RandomConfig
    columns: ClassVar[dict[str, str]] = {"score": "f8"}
    seeded = True
    config: RandomConfig

    def __init__(self, config: SelectorConfig | None = None) -> None:
        super().__init__(config)
        if self.config.within is not None:
            self.reads_ids = True  # type: ignore[misc]  # the input's rows are checked against the pool's uids

    def option_tags(self) -> list[str]:
        return [] if self.config.within is None else [f"in-{self.config.within}"]

    def input_selections(self) -> list[tuple[str, str]]:
        return [] if self.config.within is None else [(self.config.within, "--within")]

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        shared: dict[str, Any] = {"seed": ctx.seed}
        if self.config.within is not None:
            sel = input_selection(ctx.run_root, self.config.within, len(source), "--within")
            shared["within"] = str(sel.scores)
            shared["parents"] = [sel.parent(ctx.run_root, kept=(sel.header.get("counts") or {}).get("kept"))]
        return shared

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        n = len(chunk)
        u = block_uniform(shared["seed"], start, n)  # the same draw with or without --within
        reasons = Reasons(n)
        if "within" not in shared:
            return BlockScan({"score": u}, np.ones(n, bool), reasons)
        assert self.config.within is not None
        t = input_rows(self.config.within, shared["within"], start, chunk.ids.column("uid"), ["selected"])
        inside = t.column("selected").to_numpy(zero_copy_only=False).astype(bool)
        reasons.set(~inside, f"not_in:{self.config.within}")
        return BlockScan({"score": np.where(inside, u, np.nan)}, inside, reasons)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        return RankBy("score", budget)

    def parents(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return list(shared.get("parents", []))


@dataclass(frozen=True)
class ClipScoreConfig(SelectorConfig):
    """Options of ``--method clip-score``.

    Args:
        threshold: keep every sample with ``clip_score >= threshold`` (DataComp) instead of a budget.
    """

    threshold: float | None = None

    def validate(self) -> None:
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise UsageError(f"--threshold must be a finite number, got {self.threshold}")


@register
class ClipScoreSelector(ThresholdOrBudget):
    """CLIP-score filtering: the top fraction/count by ``clip_score``, or ``clip_score >= threshold``."""

    name = "clip-score"
    summary = "top samples by image-caption CLIP score, or --threshold (DataComp)"
    config_class = ClipScoreConfig
    needs = frozenset({"clip_score"})
    columns: ClassVar[dict[str, str]] = {"score": "f8"}
    config: ClipScoreConfig


    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        assert chunk.clip_score is not None
        cs = chunk.clip_score.astype(np.float64)
        ok = np.isfinite(cs)
        reasons = Reasons(len(chunk))
        reasons.set(~ok, "no_clip_score")
        return BlockScan({"score": np.where(ok, cs, np.nan)}, ok, reasons)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        if self.config.threshold is not None:
            return RankBy("score", None, minimum=self.config.threshold, reason="below_threshold")
        return RankBy("score", budget, info="effective_threshold")


KEEP_CHOICES = ("farthest", "closest", "random")


@dataclass(frozen=True)
class SemDedupConfig(SelectorConfig):
    """Options of ``--method semdedup``.

    Args:
        eps: remove a sample whose cosine similarity to a preferred member of its cluster is > 1 - eps.
        keep: which member of a group of near-duplicates survives: the one ``farthest`` from the cluster
            centroid, the ``closest``, or a ``random`` one.
        clusters: k-means clusters (default: round(sqrt(pool size))).
        kmeans_sample: rows k-means trains on (a seeded uniform sample; default 256 per cluster, at most 500k).
    """

    eps: float | None = None
    keep: str = "farthest"
    clusters: int | None = None
    kmeans_sample: int | None = None

    def validate(self) -> None:
        if self.eps is not None and not (0.0 <= self.eps <= 2.0):
            raise UsageError(f"--eps must be in [0, 2] (a cosine distance), got {self.eps}")
        if self.keep not in KEEP_CHOICES:
            raise UsageError(f"--keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")
        if self.clusters is not None and self.clusters < 1:
            raise UsageError(f"--clusters must be a positive integer, got {self.clusters}")
        if self.kmeans_sample is not None and self.kmeans_sample < 1:
            raise UsageError(f"--kmeans-sample must be a positive integer, got {self.kmeans_sample}")


def max_prior_similarity(x: Any) -> np.ndarray:
    """For rows in preference order: ``max_{i<j} <x_i, x_j>`` per row j (-inf for row 0), block-wise.

    ``x`` is a float32 matrix or lazily normalised :class:`~curate.select.clipcov.Rows`. Products run in
    torch, whose CPU results do not depend on the thread count (numpy's BLAS results do); their blocks
    and tiles depend only on the number of rows, so held and lazy rows give the same bits.
    """
    import torch

    from curate.select.clipcov import CROSS_TILE, Rows

    if isinstance(x, np.ndarray):
        x = Rows(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    n = len(x)
    bs = max(1, _BLOCK_ELEMENTS // max(min(n, CROSS_TILE), 1))
    out = np.full(n, -np.inf)
    tiled = n > CROSS_TILE
    for b0 in range(1, n, bs):
        b1 = min(n, b0 + bs)
        rows = x[b0:b1]
        best = None
        for c0 in range(0, b1, CROSS_TILE if tiled else b1):
            c1 = min(b1, c0 + CROSS_TILE) if tiled else b1
            sims = rows @ x[c0:c1].T  # rows b0..b1 against earlier-or-equal rows c0..c1
            later = torch.arange(c0, c1)[None, :] >= torch.arange(b0, b1)[:, None]
            sims.masked_fill_(later, -torch.inf)
            m = sims.max(dim=1).values
            del sims, later  # before the next tile's product: two tiles are never held at once
            best = m if best is None else torch.maximum(best, m)
        out[b0:b1] = best.numpy()
    return out


@register
class SemDedupSelector(Selector):
    """SemDeDup (Abbas et al. 2023): k-means, then drop near-duplicates within each cluster.

    Within a cluster, members are put in preference order (``keep``); a member is a duplicate when
    its cosine similarity to an EARLIER member exceeds 1 - eps. The score is ``1 - that similarity``
    (2 for the first member), so ``--eps E`` keeps ``score >= E`` and a budget keeps the top scores,
    which is the same as choosing the eps that hits the budget. Under a budget, pruned samples whose
    score is below that effective eps are ``duplicate``; those that tie with it are ``budget``.
    """

    name = "semdedup"
    summary = "semantic deduplication: k-means, then near-duplicates (cos > 1-eps) removed per cluster"
    config_class = SemDedupConfig
    needs = frozenset({"image"})
    budget_mode = "optional"
    columns: ClassVar[dict[str, str]] = {"score": "f8", "dup_sim": "f8", "centroid_sim": "f8", "partition": "i4"}
    partitioned = True
    own_partitions = True
    partition_parts = frozenset({"image"})
    config: SemDedupConfig

    def check_budget(self, budget: int | None) -> None:
        if (budget is None) == (self.config.eps is None):
            raise UsageError("--method semdedup needs exactly one of --fraction, --count or --eps")

    seeded = True  # k-means, and keep=random

    def tag(self) -> str:
        return f"eps{self.config.eps:g}" if self.config.eps is not None else ""

    def option_tags(self) -> list[str]:
        tags = [] if self.config.keep == "farthest" else [self.config.keep]
        return tags + ([f"k{self.config.clusters}"] if self.config.clusters is not None else [])

    def check_pool(self, pool_size: int) -> None:
        if self.config.clusters is not None and self.config.clusters > pool_size:
            raise UsageError(f"--clusters {self.config.clusters} exceeds the pool of {pool_size} samples")

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        from curate.select.source import gather_rows

        k = self.config.clusters or max(1, round(np.sqrt(len(source))))
        size = self.config.kmeans_sample or default_kmeans_sample(k)
        rows = sample_rows(len(source), size, ctx.seed)
        data = gather_rows(source, {"image"}, rows, lambda c: c.image_ok)
        if len(data) == 0:
            raise InputError("no sample has a valid image embedding; semdedup needs them")
        if k > len(data):
            raise UsageError(f"k-means with K={k} needs at least {k} valid samples, the pool has {len(data)}")
        centroids = train_kmeans(data, k, ctx.seed)
        return {"centroids": centroids, "n_partitions": k, "seed": ctx.seed, "carry": ("pref",),
                "kmeans_rows": len(data)}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        assert chunk.image is not None and chunk.image_ok is not None
        n = len(chunk)
        ok = chunk.image_ok
        reasons = Reasons(n)
        reasons.set(~ok, "bad_image_emb")
        centroids = shared["centroids"]
        labels = argmax_rows(chunk.image, centroids, ok)
        csim = np.full(n, np.nan)
        idx = np.flatnonzero(ok)
        csim[idx] = rowdot(chunk.image, centroids, idx, labels[idx])
        if self.config.keep == "farthest":
            pref = csim  # ascending similarity = farthest first
        elif self.config.keep == "closest":
            pref = -csim
        else:
            pref = block_uniform(shared["seed"], start, n)
        return BlockScan({"centroid_sim": csim, "partition": labels}, ok, reasons, partition=labels,
                         carry={"pref": pref})

    def reduce(self, sums: dict[str, np.ndarray], sizes: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
        if sizes.size == 0 or sizes.sum() == 0:
            raise InputError("no sample has a valid image embedding; semdedup needs them")
        return {}

    def partition(self, data: Any, shared: dict[str, Any]) -> PartitionOutput:
        n = len(data)
        order = np.argsort(data.carry["pref"], kind="stable")  # rows are in pool order: ties keep it
        memory = shared.get("memory", DEFAULT_MEMORY)  # copies up to half of it (10M: tasks 1.10 GB, §4)
        if data.holds(1, memory, reserve=memory // 2):
            prior = max_prior_similarity(data.matrix("image", order))
        else:
            from curate.select.clipcov import Rows

            prior = max_prior_similarity(Rows.lazy(data.raw16("image")[order], "cpu", None))
        score = np.empty(n)
        dup = np.empty(n)
        score[order] = np.minimum(1.0 - prior, 2.0)
        dup[order] = np.where(np.isfinite(prior), prior, np.nan)
        return PartitionOutput({"score": score, "dup_sim": dup})

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        if self.config.eps is not None:
            return RankBy("score", None, minimum=self.config.eps, reason="duplicate")
        # under a budget a pruned sample is a duplicate when --eps at the effective eps would prune it too
        # (an earlier cluster mate has cosine > 1 - eps); the rest tie with the last kept sample (cluster
        # heads included, score 2) and lost only to the budget
        return RankBy("score", budget, reason="budget", info="effective_eps", below="duplicate")

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        return {"clusters": int(shared["n_partitions"]), "keep": self.config.keep}
