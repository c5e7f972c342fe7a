"""Selection towards a target set of images: NormSim (Wang et al., NeurIPS 2024) and DataComp's
image-based filter (Gadre et al., NeurIPS 2023). docs/select.md has the definitions.

The target is the image embeddings of another curate run, or of an embedding table, made with the
same model as the pool (checked from the tables' metadata). It is read a tile at a time: no task
holds more than one tile of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curate.errors import InputError, UsageError
from curate.select.base import (
    BlockScan,
    KeepWhere,
    Pool,
    RankBy,
    Reasons,
    SelectContext,
    Selector,
    SelectorConfig,
    ThresholdOrBudget,
    register,
)

TARGET_TILE = 8192  # target rows read and multiplied at a time
TILE_ELEMENTS = 1 << 24  # similarities per product (64 MiB in float32)
CENTRE_TILE = 1 << 16  # k-means centroids per product
#: embedding metadata that must agree between the pool and the target: model, weights, preprocessing
IDENTITY_KEYS = ("model", "arch", "weights", "image_size", "mean", "std", "interpolation", "resize_mode", "dim")
NORMS = ("2", "inf")
#: DataComp's image-based baseline: 100,000 clusters for its small pool of 12.8M samples (128 per cluster)
SAMPLES_PER_CLUSTER = 128
MAX_CLUSTERS = 100_000


# --------------------------------------------------------------------------------------------------
# The target
# --------------------------------------------------------------------------------------------------
def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta.get(k) for k in IDENTITY_KEYS if k != "weights"}
    out["weights"] = meta.get("pretrained_sha256") or meta.get("pretrained")
    return out


def _describe(meta: dict[str, Any]) -> str:
    return f"{meta.get('model')} (pretrained={meta.get('pretrained')})"


def open_target(path: str, pool: Any) -> Any:
    """The target's embedding tables as a :class:`~curate.select.source.PoolSource`: a curate run folder
    (``RUN/embeddings/*.parquet``) or one embedding table (``.parquet``). Refused, with one line, when it
    holds no image embeddings or was embedded by another model than the pool ``pool``."""
    from curate.io.tables import embedding_files
    from curate.select.source import PoolSource

    p = Path(path).expanduser()
    if p.is_dir():
        files = embedding_files(p)
        if not files:
            raise InputError(f"target {path} holds no embeddings (RUN/embeddings/*.parquet); "
                             f"run 'curate embed SHARDS --run {path}' with the run's model")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"target not found: {path} (give a curate run folder or an embeddings .parquet file)")
    try:
        src = PoolSource.from_files(p, files)
    except InputError as exc:
        raise InputError(f"target {path}: {exc}") from None
    if "image_emb" not in src.columns:
        raise InputError(f"target {path} has no image_emb column; give a table written by 'curate embed'")
    if not src.meta.get("model"):
        raise InputError(f"target {path} records no embedding model; embed the target with 'curate embed' "
                         "and the run's model")
    a, b = _identity(pool.meta), _identity(src.meta)
    diff = [k for k in IDENTITY_KEYS if a[k] != b[k]]
    if diff:
        raise InputError(f"target {path} was embedded with {_describe(src.meta)}, the run with "
                         f"{_describe(pool.meta)} ({', '.join(diff)} differ); embed the target with the run's model")
    return src


def target_tiles(target: Any) -> list[tuple[int, int]]:
    """Row ranges of the target read and multiplied at a time."""
    return target.blocks(TARGET_TILE)


def target_matrix(target: Any, s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Target rows ``s:e``: L2-normalised float32 image embeddings (zero rows where invalid) and validity."""
    from curate.select.pool import embedding_matrix

    return embedding_matrix(target.read(s, e, ["image_emb"]).column("image_emb"))


def _tag(path: str) -> str:
    """A selection-name-safe short form of the target's name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", Path(path).name.removesuffix(".parquet"))[:40].strip("-.") or "target"


# --------------------------------------------------------------------------------------------------
# NormSim
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NormSimConfig(SelectorConfig):
    """Options of ``--method normsim``.

    Args:
        target: a curate run folder or an embeddings ``.parquet`` table of the target images.
        norm: ``inf`` (NormSim-∞: the largest |cosine| to a target image) or ``2`` (NormSim-2: the
            2-norm of the cosines to all target images).
        threshold: keep every sample with ``score >= threshold`` instead of a budget.
    """

    target: str | None = None
    norm: str = "inf"
    threshold: float | None = None

    def validate(self) -> None:
        if not self.target:
            raise UsageError("--method normsim needs --target RUN_OR_TABLE (the target images' embeddings)")
        if self.norm not in NORMS:
            raise UsageError(f"--norm must be 2 or inf, got {self.norm!r}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise UsageError(f"--threshold must be a finite number, got {self.threshold}")


def gram(target: Any) -> tuple[np.ndarray, int]:
    """``Σ_t t tᵀ`` over the valid target embeddings (float64, tile by tile in order) and their count."""
    import torch

    d = target.dim
    g = torch.zeros((d, d), dtype=torch.float64)
    n = 0
    for s, e in target_tiles(target):
        x, ok = target_matrix(target, s, e)
        t = torch.from_numpy(x[ok]).double()
        g += t.T @ t
        n += int(ok.sum())
    return g.numpy(), n


def normsim_inf(x: np.ndarray, target: Any) -> np.ndarray:
    """``max_t |<x_i, t>|`` over the target, for the rows of ``x`` (float32 products; float64 out).

    Target tiles of ``TARGET_TILE`` rows, rows of ``x`` in runs of ``TILE_ELEMENTS / TARGET_TILE``: a max
    is exact in any order, and the tiles are fixed, so every engine gets the same bits."""
    import torch

    best = torch.zeros(len(x), dtype=torch.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    step = max(1, TILE_ELEMENTS // TARGET_TILE)
    for s, e in target_tiles(target):
        t = torch.from_numpy(target_matrix(target, s, e)[0])
        for r0 in range(0, len(x), step):
            m = (xt[r0 : r0 + step] @ t.T).abs_().amax(dim=1)
            best[r0 : r0 + step] = torch.maximum(best[r0 : r0 + step], m)
    return best.double().numpy()


@register
class NormSimSelector(ThresholdOrBudget):
    """NormSim: top samples by the similarity of their image to a target set (docs/select.md)."""

    name = "normsim"
    summary = "top samples by image similarity to a target set, NormSim-inf or -2 (--target; Wang et al. 2024)"
    config_class = NormSimConfig
    needs = frozenset({"image"})
    columns: ClassVar[dict[str, str]] = {"score": "f8"}
    config: NormSimConfig


    def option_tags(self) -> list[str]:
        assert self.config.target is not None
        return [self.config.norm, _tag(self.config.target)]

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        assert self.config.target is not None
        target = open_target(self.config.target, source)
        shared: dict[str, Any] = {"target_rows": len(target)}
        if self.config.norm == "2":
            g, n = gram(target)
            shared.update(gram=g, target_valid=n)
        else:
            shared.update(target=target, target_valid=None)
        return shared

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        import torch

        assert chunk.image is not None and chunk.image_ok is not None
        n = len(chunk)
        ok = chunk.image_ok
        reasons = Reasons(n)
        reasons.set(~ok, "bad_image_emb")
        score = np.full(n, np.nan)
        idx = np.flatnonzero(ok)
        x = chunk.image[idx]
        if self.config.norm == "2":
            x64 = torch.from_numpy(x).double()
            q = ((x64 @ torch.from_numpy(shared["gram"])) * x64).sum(1).numpy()
            score[idx] = np.sqrt(np.maximum(q, 0.0))
        else:
            score[idx] = normsim_inf(x, shared["target"])
        return BlockScan({"score": score}, ok, reasons)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        if self.config.threshold is not None:
            return RankBy("score", None, minimum=self.config.threshold, reason="below_threshold")
        return RankBy("score", budget, info="effective_threshold")

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        out = {"norm": self.config.norm, "target": self.config.target, "target_rows": shared["target_rows"]}
        if shared.get("target_valid") is not None:
            out["target_valid"] = shared["target_valid"]
        return out


# --------------------------------------------------------------------------------------------------
# DataComp's image-based filter
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFilterConfig(SelectorConfig):
    """Options of ``--method image-filter``.

    Args:
        target: a curate run folder or an embeddings ``.parquet`` table of the target images.
        clusters: k-means clusters of the pool (default: one per 128 samples, at most 100,000).
        kmeans_sample: rows k-means trains on (a seeded uniform sample; default 256 per cluster, at most 500k).
    """

    target: str | None = None
    clusters: int | None = None
    kmeans_sample: int | None = None

    def validate(self) -> None:
        if not self.target:
            raise UsageError("--method image-filter needs --target RUN_OR_TABLE (the target images' embeddings)")
        if self.clusters is not None and self.clusters < 1:
            raise UsageError(f"--clusters must be a positive integer, got {self.clusters}")
        if self.kmeans_sample is not None and self.kmeans_sample < 1:
            raise UsageError(f"--kmeans-sample must be a positive integer, got {self.kmeans_sample}")


def default_clusters(n: int) -> int:
    """DataComp's density: one cluster per 128 pool samples (100,000 for 12.8M), at most 100,000."""
    return int(min(MAX_CLUSTERS, max(1, round(n / SAMPLES_PER_CLUSTER))))


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``argmax_k <x_i, c_k>`` (first index on ties) and that similarity, for the rows of ``x``.

    Centroids in tiles of ``CENTRE_TILE``, rows in runs of ``TILE_ELEMENTS / min(K, CENTRE_TILE)``; a later
    tile wins only with a strictly larger similarity. Fixed tiles: the same labels on every engine."""
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    k = len(c)
    label = torch.zeros(len(x), dtype=torch.int64)
    best = torch.full((len(x),), -torch.inf, dtype=torch.float32)
    step = max(1, TILE_ELEMENTS // min(k, CENTRE_TILE))
    for c0 in range(0, k, CENTRE_TILE):
        ct = c[c0 : c0 + CENTRE_TILE]
        for r0 in range(0, len(x), step):
            v, i = (xt[r0 : r0 + step] @ ct.T).max(dim=1)
            better = v > best[r0 : r0 + step]
            best[r0 : r0 + step] = torch.where(better, v, best[r0 : r0 + step])
            label[r0 : r0 + step] = torch.where(better, i + c0, label[r0 : r0 + step])
    return label.numpy().astype(np.int32), best.double().numpy()


@register
class ImageFilterSelector(Selector):
    """DataComp's image-based filter: keep the pool samples whose k-means cluster is the nearest cluster
    of at least one target image (docs/select.md)."""

    name = "image-filter"
    summary = "DataComp image-based filter: pool samples in k-means clusters nearest to the target images (--target)"
    config_class = ImageFilterConfig
    needs = frozenset({"image"})
    budget_mode = "none"
    columns: ClassVar[dict[str, str]] = {"target_cluster": "bool", "centroid_sim": "f8", "partition": "i4"}
    config: ImageFilterConfig

    seeded = True  # k-means

    def option_tags(self) -> list[str]:
        assert self.config.target is not None
        return [_tag(self.config.target)] + ([f"k{self.config.clusters}"] if self.config.clusters is not None else [])

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        from curate.select.partition import default_kmeans_sample, sample_rows, train_kmeans
        from curate.select.source import gather_rows

        assert self.config.target is not None
        target = open_target(self.config.target, source)
        k = self.config.clusters or default_clusters(len(source))
        rows = sample_rows(len(source), self.config.kmeans_sample or default_kmeans_sample(k), ctx.seed)
        data = gather_rows(source, {"image"}, rows, lambda c: c.image_ok)
        if len(data) == 0:
            raise InputError("no sample has a valid image embedding; image-filter needs them")
        if k > len(data):
            raise UsageError(f"k-means with K={k} needs at least {k} valid samples, the pool has {len(data)}; "
                             "lower --clusters")
        centroids = train_kmeans(data, k, ctx.seed)
        hits = np.zeros(k, bool)
        valid = 0
        for s, e in target_tiles(target):
            x, ok = target_matrix(target, s, e)
            if ok.any():
                hits[nearest_centre(x[ok], centroids)[0]] = True
            valid += int(ok.sum())
        if not valid:
            raise InputError(f"target {self.config.target} has no valid image embedding")
        return {"centroids": centroids, "hits": hits, "clusters": k, "target_rows": len(target),
                "target_valid": valid, "kmeans_rows": len(data)}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        assert chunk.image is not None and chunk.image_ok is not None
        n = len(chunk)
        ok = chunk.image_ok
        reasons = Reasons(n)
        reasons.set(~ok, "bad_image_emb")
        labels = np.full(n, -1, np.int32)
        csim = np.full(n, np.nan)
        idx = np.flatnonzero(ok)
        labels[idx], csim[idx] = nearest_centre(chunk.image[idx], shared["centroids"])
        keep = np.zeros(n, bool)
        keep[idx] = shared["hits"][labels[idx]]
        reasons.set(ok & ~keep, "not_target_cluster")
        return BlockScan({"target_cluster": keep, "centroid_sim": csim, "partition": labels}, ok, reasons)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> KeepWhere:
        return KeepWhere("target_cluster")

    def check_result(self, kept: int) -> None:
        if kept == 0:
            raise InputError("image-filter kept no sample (no pool sample is in a target cluster)")

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        return {"clusters": int(shared["clusters"]), "target_clusters": int(shared["hits"].sum()),
                "target": self.config.target, "target_rows": shared["target_rows"],
                "target_valid": shared["target_valid"], "kmeans_rows": shared["kmeans_rows"]}
