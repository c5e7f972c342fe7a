"""Baseline selectors: random, CLIP-score filtering (DataComp) and SemDeDup."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from curate.engines.base import Engine
from curate.errors import InputError, UsageError
from curate.progress import NullProgress, Progress
from curate.select.base import (
    Decision,
    Pool,
    Reasons,
    Scores,
    SelectContext,
    Selector,
    SelectorConfig,
    register,
    top_k,
)
from curate.select.partition import kmeans

_BLOCK_ELEMENTS = 1 << 24
PRIOR_CHUNK_ELEMENTS = 1 << 28  # a cluster with more pairs is cut into chunks (engine work units)
MAX_PRIOR_CHUNKS = 32


def _need_eligible(scores: Scores, budget: int, method: str) -> None:
    n_ok = int(scores.eligible.sum())
    if budget > n_ok:
        dropped = ", ".join(f"{k}: {v}" for k, v in scores.reasons.counts().items() if k != "budget")
        raise InputError(f"{method} can rank {n_ok} samples ({dropped}) but the budget is {budget}; lower it")


@dataclass(frozen=True)
class RandomConfig(SelectorConfig):
    """``--method random`` has no options besides ``--seed``."""


@register
class RandomSelector(Selector):
    """Uniform random subset (numpy ``default_rng(seed)``); every sample is eligible."""

    name = "random"
    summary = "uniform random subset (seeded)"
    config_class = RandomConfig
    seeded = True

    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        key = np.random.default_rng(ctx.seed).random(len(pool))
        return Scores({"score": key}, np.ones(len(pool), bool), Reasons(len(pool)))

    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        assert budget is not None
        return Decision(order=top_k(scores.columns["score"], scores.eligible, budget))


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
class ClipScoreSelector(Selector):
    """CLIP-score filtering: the top fraction/count by ``clip_score``, or ``clip_score >= threshold``."""

    name = "clip-score"
    summary = "top samples by image-caption CLIP score, or --threshold (DataComp)"
    config_class = ClipScoreConfig
    needs = frozenset({"clip_score"})
    budget_mode = "optional"
    config: ClipScoreConfig

    def check_budget(self, budget: int | None) -> None:
        if (budget is None) == (self.config.threshold is None):
            raise UsageError("--method clip-score needs exactly one of --fraction, --count or --threshold")

    def tag(self) -> str:
        return f"t{self.config.threshold:g}" if self.config.threshold is not None else ""

    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        assert pool.clip_score is not None
        cs = pool.clip_score.astype(np.float64)
        ok = np.isfinite(cs)
        reasons = Reasons(len(pool))
        reasons.set(~ok, "no_clip_score")
        return Scores({"score": np.where(ok, cs, np.nan)}, ok, reasons)

    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        cs = scores.columns["score"]
        if self.config.threshold is not None:
            keep = scores.eligible & (cs >= self.config.threshold)
            return Decision(order=top_k(cs, keep, int(keep.sum())), reason="below_threshold")
        assert budget is not None
        _need_eligible(scores, budget, self.name)
        order = top_k(cs, scores.eligible, budget)
        return Decision(order=order, info={"effective_threshold": float(cs[order[-1]])})


KEEP_CHOICES = ("farthest", "closest", "random")


@dataclass(frozen=True)
class SemDedupConfig(SelectorConfig):
    """Options of ``--method semdedup``.

    Args:
        eps: remove a sample whose cosine similarity to a preferred member of its cluster is > 1 - eps.
        keep: which member of a group of near-duplicates survives: the one ``farthest`` from the cluster
            centroid, the ``closest``, or a ``random`` one.
        clusters: k-means clusters (default: round(sqrt(pool size))).
    """

    eps: float | None = None
    keep: str = "farthest"
    clusters: int | None = None

    def validate(self) -> None:
        if self.eps is not None and not (0.0 <= self.eps <= 2.0):
            raise UsageError(f"--eps must be in [0, 2] (a cosine distance), got {self.eps}")
        if self.keep not in KEEP_CHOICES:
            raise UsageError(f"--keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")
        if self.clusters is not None and self.clusters < 1:
            raise UsageError(f"--clusters must be a positive integer, got {self.clusters}")


def max_prior_similarity(x: np.ndarray) -> np.ndarray:
    """For rows in preference order: ``max_{i<j} <x_i, x_j>`` per row j (-inf for row 0), block-wise."""
    return _prior_rows(x, len(x), 0, len(x))


def _prior_block_rows(n: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(n, 1))


def prior_chunks(n: int) -> list[tuple[int, int]]:
    """Row ranges of a cluster of ``n`` members computed as separate units (block-aligned)."""
    bs = _prior_block_rows(n)
    blocks = -(-(n - 1) // bs) if n > 1 else 0
    chunks = min(max(blocks, 1), MAX_PRIOR_CHUNKS, max(1, -(-(n * n // 2) // PRIOR_CHUNK_ELEMENTS)))
    step = -(-max(blocks, 1) // chunks) * bs
    starts = [0, *range(1 + step, n, step)]
    return list(itertools.pairwise([*starts, n]))


def _prior_task(units: list[tuple[int, int, int, int]], image: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
    """Engine task: ``max_prior_similarity`` of each unit ``(s, e, lo, hi)`` (cluster = order[s:e])."""
    out = []
    for s, e, lo, hi in units:
        x = image[order[s : s + hi]]
        out.append(_prior_rows(x, e - s, lo, hi))
    return out


def _prior_rows(x: np.ndarray, n: int, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of ``max_prior_similarity`` of a cluster of ``n`` members whose first rows are ``x``.

    The blocks depend only on ``n``, and chunk bounds (:func:`prior_chunks`) lie on block starts, so
    chunks computed separately give the same bits as one call over the whole cluster. Products run in
    torch, whose CPU results do not depend on the thread count (numpy's BLAS results do).
    """
    import torch

    bs = _prior_block_rows(n)
    out = np.full(hi - lo, -np.inf)
    xt = torch.from_numpy(np.ascontiguousarray(x[:hi], dtype=np.float32))
    for b0 in range(max(lo, 1), hi, bs):
        b1 = min(hi, b0 + bs)
        sims = xt[b0:b1] @ xt[:b1].T  # rows b0..b1 against every earlier-or-equal row
        later = torch.arange(b1)[None, :] >= torch.arange(b0, b1)[:, None]
        sims.masked_fill_(later, -torch.inf)
        out[b0 - lo : b1 - lo] = sims.max(dim=1).values.numpy()
    return out


def cluster_priors(image: np.ndarray, order: np.ndarray, starts: np.ndarray, engine: Engine | None,
                   progress: Progress | None = None) -> np.ndarray:
    """``max_prior_similarity`` of every cluster ``order[s:e]``; engine tasks when it is distributed."""
    progress = progress or NullProgress()
    prior = np.empty(len(order))
    if engine is None or not engine.distributed:
        progress.start("semdedup: near-duplicates", total=len(order))
        for s, e in itertools.pairwise(starts):
            prior[s:e] = _prior_rows(image[order[s:e]], int(e - s), 0, int(e - s))
            progress.advance(int(e - s))
        progress.finish()
        return prior
    from curate.select.clipcov import balanced_runs

    units = [(int(s), int(e), lo, hi) for s, e in itertools.pairwise(starts) for lo, hi in prior_chunks(int(e - s))]
    costs = [(hi - lo) * hi for _, _, lo, hi in units]
    tasks = [units[a:b] for a, b in balanced_runs(costs, 4 * engine.parallelism())]
    progress.start("semdedup: near-duplicates", total=len(tasks), unit="tasks")
    results = engine.map(_prior_task, tasks, {"image": image, "order": order}, progress)
    progress.finish()
    for (s, _, lo, hi), part in zip(units, (r for res in results for r in res), strict=True):
        prior[s + lo : s + hi] = part
    return prior


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

    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        assert pool.image is not None and pool.image_ok is not None
        n = len(pool)
        ok = pool.image_ok
        reasons = Reasons(n)
        reasons.set(~ok, "bad_image_emb")
        n_ok = int(ok.sum())
        if n_ok == 0:
            raise InputError("no sample has a valid image embedding; semdedup needs them")
        k = self.config.clusters or max(1, round(np.sqrt(n_ok)))
        labels, centroids = kmeans(pool.image, ok, k, ctx.seed)
        idx = np.flatnonzero(ok)
        csim = np.full(n, np.nan)
        csim[idx] = np.einsum("ij,ij->i", pool.image[idx], centroids[labels[idx]])
        if self.config.keep == "farthest":
            pref = csim[idx]  # ascending similarity = farthest first
        elif self.config.keep == "closest":
            pref = -csim[idx]
        else:
            pref = np.random.default_rng(ctx.seed).random(len(idx))
        order = idx[np.lexsort((pref, labels[idx]))]  # by cluster, then preference
        lab = labels[order]
        starts = np.r_[0, np.flatnonzero(lab[1:] != lab[:-1]) + 1, len(order)]
        prior = cluster_priors(pool.image, order, starts, ctx.engine, ctx.progress)
        score = np.full(n, np.nan)
        score[order] = np.minimum(1.0 - prior, 2.0)
        dup = np.full(n, np.nan)
        dup[order] = np.where(np.isfinite(prior), prior, np.nan)
        cols = {"score": score, "dup_sim": dup, "centroid_sim": csim, "partition": labels}
        return Scores(cols, ok, reasons, info={"clusters": int(k), "keep": self.config.keep})

    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        score = scores.columns["score"]
        if self.config.eps is not None:
            keep = scores.eligible & (score >= self.config.eps)
            return Decision(order=top_k(score, keep, int(keep.sum())), reason="duplicate")
        assert budget is not None
        _need_eligible(scores, budget, self.name)
        order = top_k(score, scores.eligible, budget)
        eps = float(score[order[-1]])
        # A pruned sample is a duplicate when --eps at the effective eps would prune it too (an earlier
        # cluster mate has cosine > 1 - eps); the rest tie with the last kept sample (cluster heads
        # included, score 2) and lost only to the budget.
        scores.reasons.set(scores.eligible, "budget")
        scores.reasons.set(scores.eligible & (score < eps), "duplicate")
        return Decision(order=order, reason=None, info={"effective_eps": eps})
