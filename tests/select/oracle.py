"""The in-memory selection of curate 0.1, kept as the test oracle of the partitioned pipeline.

Everything here works on whole-pool numpy arrays in one process: ``load_round_pool`` reads every embedding,
``prepare`` sorts the pool by class, ``select_reference`` runs the reference notebook's loop with ONE
global ranking rebuilt at every class refresh, ``select_greedy`` merges the classes' greedy sequences.
The pipeline computes the same things partition by partition and merges scalars; the exactness tests
compare the two bit for bit. The only arithmetic shared with the product is the per-class kernel
(``Blocks``: cross terms, redundancy, row dot products) and ``ClassGreedy``.

Where the pipeline defines a pool-wide quantity block by block, this oracle does the same: the pool
means (float64 sums per block of ``source.BLOCK_ROWS`` pool rows, added in block order) and the k-means labels
(one torch product per pool block).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.io.tables import embedding_files, read_embeddings, table_metadata
from curate.progress import Progress
from curate.schemas import ID_COLUMNS
from curate.select import source
from curate.select.base import Pool
from curate.select.clipcov import (
    UPDATE_PERIOD,
    W_CENTRE,
    W_CROSS,
    W_EASY,
    W_LABEL,
    Blocks,
    ClassGreedy,
)
from curate.select.partition import _argmax_task, argmax_rows, default_kmeans_sample, sample_rows, train_kmeans
from curate.select.pool import embedding_matrix

_CHUNK = 2048  # picks examined per vectorised step


def zeroshot_labels(
    image: np.ndarray, valid: np.ndarray, class_text: np.ndarray
) -> np.ndarray:
    """``argmax_k <image_j, class_text_k>`` per sample (block-wise); -1 for invalid rows.

    One product per pool block, as the pipeline does.
    """
    if class_text.ndim != 2 or class_text.shape[1] != image.shape[1]:
        raise InputError(
            f"class embeddings have shape {class_text.shape} but image embeddings have dim {image.shape[1]}; "
            "encode the classes with the run's model"
        )
    ct = np.ascontiguousarray(class_text, dtype=np.float32)
    labels = np.full(len(image), -1, dtype=np.int32)
    rows = source.BLOCK_ROWS
    spans = [(s, min(len(image), s + rows)) for s in range(0, len(image), rows)]
    for span in spans:
        labels[span[0] : span[1]] = _argmax_task(span, image, ct)
    labels[~valid] = -1
    return labels


def kmeans(x: np.ndarray, valid: np.ndarray, k: int, seed: int, niter: int = 20,
           sample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spherical faiss k-means trained on the valid rows of the seeded sample (all rows when the pool is
    not larger than it): ``(labels with -1 for invalid, centroids (k, d))``."""
    rows = sample_rows(len(x), sample or default_kmeans_sample(k), seed)
    idx = np.flatnonzero(valid) if rows is None else rows[valid[rows]]
    if k > len(idx):
        raise UsageError(f"k-means with K={k} needs at least {k} valid samples, the pool has {len(idx)}")
    centroids = train_kmeans(x[idx], k, seed, niter)
    labels = np.full(len(x), -1, dtype=np.int32)
    rows = source.BLOCK_ROWS
    for s in range(0, len(x), rows):
        e = min(len(x), s + rows)
        labels[s:e] = argmax_rows(x[s:e], centroids, valid[s:e])
    return labels, centroids


def load_round_pool(run_root: str | os.PathLike[str], parts: Iterable[str] = ()) -> Pool:
    """Read the run's embedding tables: ids always, plus ``image``/``text``/``clip_score`` as asked."""
    parts = set(parts)
    cols = list(ID_COLUMNS)
    cols += [c for p, c in (("image", "image_emb"), ("text", "text_emb"), ("clip_score", "clip_score")) if p in parts]
    table = read_embeddings(run_root, cols)
    if table.num_rows == 0:
        raise InputError(f"no samples in {run_root}/embeddings")
    files = embedding_files(run_root)
    pool = Pool(ids=table.select(list(ID_COLUMNS)), meta=table_metadata(files[0]) if files else {})
    if pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise InputError(f"duplicate uids in {run_root}/embeddings")
    if "image" in parts:
        pool.image, pool.image_ok = embedding_matrix(table.column("image_emb"))
    if "text" in parts:
        pool.text, pool.text_ok = embedding_matrix(table.column("text_emb"))
        pool.text_present = table.column("text_emb").is_valid().to_numpy(zero_copy_only=False)
    if "clip_score" in parts:
        pool.clip_score = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32)
    return pool


def block_means(img: np.ndarray, txt: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit pool means of image and text over ``rows``: float64 sums per pool block, in block order."""
    ok = np.zeros(len(img), bool)
    ok[rows] = True
    si = np.zeros(img.shape[1])
    st = np.zeros(txt.shape[1])
    for s in range(0, len(img), source.BLOCK_ROWS):
        e = min(len(img), s + source.BLOCK_ROWS)
        idx = np.flatnonzero(ok[s:e]) + s
        si = si + img[idx].sum(0, dtype=np.float64)
        st = st + txt[idx].sum(0, dtype=np.float64)
    return si / np.linalg.norm(si), st / np.linalg.norm(st)


def kmeans_class_text(txt: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Normalised mean caption per cluster (float64 sums per pool block, rows added one after another,
    blocks added in block order)."""
    total = np.zeros((k, txt.shape[1]))
    for s in range(0, len(txt), source.BLOCK_ROWS):
        e = min(len(txt), s + source.BLOCK_ROWS)
        lab = labels[s:e]
        idx = np.flatnonzero(lab >= 0)
        part = np.zeros_like(total)
        for i in idx:  # each caption onto its cluster's sum, in row order
            part[lab[i]] += txt[s + i].astype(np.float64)
        total = total + part
    return total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)


def _group_cumcount(c: np.ndarray) -> np.ndarray:
    """0-based running count of each value of ``c`` (vectorised)."""
    o = np.argsort(c, kind="stable")
    cs = c[o]
    start = np.r_[0, np.flatnonzero(cs[1:] != cs[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(cs)]))
    out = np.empty(len(c), np.int64)
    out[o] = np.arange(len(c)) - first
    return out



@dataclass
class ClipCovState:
    """Class-sorted arrays the selection loop works on (row r of ``blocks`` = sorted sample r)."""

    blocks: Blocks
    bounds: np.ndarray  # class c occupies rows bounds[c]:bounds[c+1]
    cls: np.ndarray  # class index (0..C-1) of each sorted row
    unary: np.ndarray
    cross: np.ndarray
    label: np.ndarray
    perm: np.ndarray  # sorted row -> pool index
    easy: np.ndarray
    centre: np.ndarray
    classes: np.ndarray  # class index c -> label value (row of class_text)


def prepare(
    img: np.ndarray,
    txt: np.ndarray,
    labels: np.ndarray,
    class_text: np.ndarray,
    rows: np.ndarray | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    pool_means: tuple[np.ndarray, np.ndarray] | None = None,
) -> ClipCovState:
    """Sort ``rows`` (default: all) by class and compute every per-sample term of the unary score.

    ``img``/``txt`` are L2-normalised; ``labels[i]`` indexes ``class_text`` (the class label embeddings).
    Empty classes are skipped. The pool means of the centre terms are taken over ``rows``: float64
    sums per block of BLOCK_ROWS pool rows, added in block order, normalised (the pipeline's arithmetic).
    """
    rows = np.arange(len(img)) if rows is None else np.asarray(rows)
    perm = rows[np.argsort(labels[rows], kind="stable")]
    present, first = np.unique(labels[perm], return_index=True)
    bounds = np.r_[first, len(perm)]
    cls = np.repeat(np.arange(len(present)), np.diff(bounds))
    img_s, txt_s = img[perm], txt[perm]
    blocks = Blocks(img_s, txt_s, device, dtype)
    t = blocks.torch
    easy = blocks.rowdot(blocks.img, blocks.txt)
    cross = np.concatenate([blocks.cross(s, e) for s, e in itertools.pairwise(bounds)])
    del img_s, txt_s
    ct = t.from_numpy(np.ascontiguousarray(class_text[present])).to(blocks.device, blocks.dtype)
    label = blocks.rowdot(blocks.txt, ct, t.from_numpy(cls).to(blocks.device))
    if pool_means is None:
        pool_means = block_means(img, txt, rows)
    i_mean, t_mean = (t.from_numpy(m).to(blocks.device, blocks.dtype)[None, :] for m in pool_means)
    zero = t.zeros(len(perm), dtype=t.int64)
    centre = blocks.rowdot(blocks.img, t_mean, zero) + blocks.rowdot(blocks.txt, i_mean, zero)
    unary = W_CROSS * cross + W_EASY * easy + W_LABEL * label - W_CENTRE * centre
    return ClipCovState(blocks, bounds, cls, unary, cross, label, perm, easy, centre, present)


def select_reference(
    st: ClipCovState,
    budget: int,
    period: int = UPDATE_PERIOD,
    trace: list[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference notebook's loop over the whole pool (one global ranking).

    Returns (sorted rows in pick order, score of each pick when picked, update log rows
    ``(class, c_k, picks so far)``). ``trace``, when given, receives one dict per update with the
    class's unselected members and their scores before and after it (for tests and debugging).
    """
    n_cls = len(st.bounds) - 1
    sizes = np.diff(st.bounds).astype(np.float64)
    score = st.unary.astype(np.float64).copy()
    selected = np.zeros(len(score), bool)
    counts = np.zeros(n_cls, np.int64)
    last = np.zeros(n_cls, np.int64)  # pick index after class k's last update (new_k = its picks since)
    sel_cross = np.zeros(n_cls, np.float64)
    ranking = np.argsort(-score, kind="stable")
    ptr, done = 0, 0
    picks: list[np.ndarray] = []
    gains: list[np.ndarray] = []
    log = []
    while done < budget:
        cand = ranking[ptr : ptr + min(budget - done, _CHUNK)]
        c = st.cls[cand]
        after = counts[c] + _group_cumcount(c) + 1  # c_k after picking each candidate
        fire = (after + 1) % period == 0
        f = int(np.argmax(fire)) if fire.any() else len(cand) - 1
        take = cand[: f + 1]
        selected[take] = True
        picks.append(take)
        gains.append(score[take])
        np.add.at(counts, c[: f + 1], 1)
        done += len(take)
        if progress is not None:
            progress.advance(len(take))
        ptr += len(take)
        if not fire.any():
            continue
        k = int(c[f])
        log.append((k, int(counts[k]), done))
        s, e = st.bounds[k], st.bounds[k + 1]
        so_far = np.concatenate(picks)
        since = so_far[last[k] :]
        nk = since[st.cls[since] == k]
        last[k] = done
        members = s + np.flatnonzero(~selected[s:e])
        before = score[members].copy() if trace is not None else None
        score[members] -= st.blocks.redundancy(members, nk) / sizes[k]
        sel_cross[k] += st.cross[nk].sum()
        score[members] -= sel_cross[k] / sizes[k]
        score[members] -= (st.label[nk] / 2).sum() / sizes[k]
        if trace is not None:
            trace.append({"class": k, "new": nk, "members": members, "before": before, "after": score[members]})
        # rebuild the ranking: only class k moved; merge its re-sorted members into the rest
        rest = ranking[ptr:]
        rest = rest[st.cls[rest] != k]
        mk = members[np.argsort(-score[members], kind="stable")]
        at = np.searchsorted(-score[rest], -score[mk], side="right")
        ranking, ptr = np.insert(rest, at, mk), 0
    order = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    return order, np.concatenate(gains) if gains else np.zeros(0), np.asarray(log, np.int64).reshape(-1, 3)


def select_greedy(
    st: ClipCovState, budget: int, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact greedy on the per-pick deductions: merge the classes' own greedy sequences by gain.

    Each class's sequence (:class:`ClassGreedy`) depends only on that class.
    """
    n_cls = len(st.bounds) - 1
    sizes = np.diff(st.bounds)
    local = [ClassGreedy(st.blocks, s, e, st.unary[s:e], st.cross[s:e], st.label[s:e])
             for s, e in itertools.pairwise(st.bounds)]

    def fetch(ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [local[k].take(1)[:2] for k in ks]

    buf: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0))] * n_cls
    pos = np.zeros(n_cls, np.int64)  # next unmerged entry of buf[k]
    taken = np.zeros(n_cls, np.int64)  # entries of class k fetched so far
    heap: list[tuple[float, int, int]] = []

    def refill(ks: list[int]) -> None:
        ks = [k for k in ks if taken[k] < sizes[k]]
        for k, got in zip(ks, fetch(ks), strict=True):
            buf[k], pos[k] = got, 0
            taken[k] += len(got[0])

    def push(k: int) -> None:
        if pos[k] >= len(buf[k][0]):
            refill([k])
        if pos[k] < len(buf[k][0]):
            heapq.heappush(heap, (-float(buf[k][1][pos[k]]), k, int(buf[k][0][pos[k]])))

    refill(list(range(n_cls)))
    for k in range(n_cls):
        push(k)
    picks = np.empty(budget, np.int64)
    gains = np.empty(budget, np.float64)
    for t in range(budget):
        if progress is not None and t % 1024 == 0:
            progress.advance(min(1024, budget - t))
        neg, k, j = heapq.heappop(heap)
        picks[t], gains[t] = j, -neg
        pos[k] += 1
        push(k)
    return picks, gains


# --------------------------------------------------------------------------------------------------
# Whole selections, as columns in pool order (what scores.parquet holds)
# --------------------------------------------------------------------------------------------------
def _top_k(values: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    idx = np.flatnonzero(eligible)
    return idx[np.argsort(-values[idx], kind="stable")[:k]]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return (torch.from_numpy(np.ascontiguousarray(a)) * torch.from_numpy(np.ascontiguousarray(b))).sum(
        1, dtype=torch.float64).numpy()


def select(run: Any, method: str, budget: int | None, seed: int = 0, class_text: np.ndarray | None = None,
           **opts: Any) -> dict[str, np.ndarray]:
    """The oracle's selection: ``selected``, ``rank`` (-1 = not picked) and the method's columns."""
    if method == "random":
        pool = load_round_pool(run)
        n = len(pool)
        score = np.random.default_rng(seed).random(n)
        order = _top_k(score, np.ones(n, bool), budget)
        cols = {"score": score}
    elif method == "clip-score":
        pool = load_round_pool(run, {"clip_score"})
        cs = pool.clip_score.astype(np.float64)
        ok = np.isfinite(cs)
        score = np.where(ok, cs, np.nan)
        t = opts.get("threshold")
        order = _top_k(score, ok & (score >= t), int((ok & (score >= t)).sum())) if t is not None else \
            _top_k(score, ok, budget)
        cols = {"score": score}
    elif method == "semdedup":
        pool = load_round_pool(run, {"image"})
        n = len(pool)
        ok = pool.image_ok
        k = opts.get("clusters") or max(1, round(np.sqrt(n)))
        labels, centroids = kmeans(pool.image, ok, k, seed)
        idx = np.flatnonzero(ok)
        csim = np.full(n, np.nan)
        csim[idx] = _rowdot(pool.image[idx], centroids[labels[idx]])
        keep = opts.get("keep", "farthest")
        pref = {"farthest": csim, "closest": -csim}.get(keep)
        if pref is None:
            pref = np.random.default_rng(seed).random(n)
        order_c = idx[np.lexsort((pref[idx], labels[idx]))]
        lab = labels[order_c]
        starts = np.r_[0, np.flatnonzero(lab[1:] != lab[:-1]) + 1, len(order_c)]
        from curate.select.baselines import max_prior_similarity

        prior = np.empty(len(order_c))
        for s, e in itertools.pairwise(starts):
            prior[s:e] = max_prior_similarity(pool.image[order_c[s:e]])
        score = np.full(n, np.nan)
        score[order_c] = np.minimum(1.0 - prior, 2.0)
        dup = np.full(n, np.nan)
        dup[order_c] = np.where(np.isfinite(prior), prior, np.nan)
        eps = opts.get("eps")
        order = _top_k(score, ok & (score >= eps), int((ok & (score >= eps)).sum())) if eps is not None else \
            _top_k(score, ok, budget)
        cols = {"score": score, "dup_sim": dup, "centroid_sim": csim, "partition": labels}
    elif method == "clipcov":
        pool = load_round_pool(run, {"image", "text"})
        n = len(pool)
        eligible = pool.image_ok & pool.text_ok
        idx = np.flatnonzero(eligible)
        part = opts.get("partition", "imagenet")
        dtype = opts.get("dtype", "float32")
        if part.startswith("kmeans:"):
            k = int(part.split(":")[1])
            labels, _ = kmeans(pool.image, eligible, k, seed)
            ct = kmeans_class_text(pool.text, labels, k)
        else:
            assert class_text is not None
            ct = np.asarray(class_text, np.float32)
            labels = zeroshot_labels(pool.image, eligible, ct)
        st = prepare(pool.image, pool.text, labels, ct, idx, dtype=dtype)
        if opts.get("variant", "reference") == "reference":
            rows, gains, _ = select_reference(st, budget)
        else:
            rows, gains = select_greedy(st, budget)
        order = st.perm[rows]
        cols = {}
        for name, v in (("score", st.unary), ("easiness", st.easy), ("cross", st.cross), ("label_sim", st.label),
                        ("centre_sim", st.centre)):
            full = np.full(n, np.nan)
            full[st.perm] = v
            cols[name] = full
        cols["partition"] = labels
        gain = np.full(n, np.nan)
        gain[order] = gains
        cols["gain"] = gain
    else:
        raise ValueError(method)
    rank = np.full(len(pool), -1, np.int64)
    rank[order] = np.arange(len(order))
    return {"selected": rank >= 0, "rank": rank, **cols}


def ids(run: Any) -> pa.Table:
    """The pool's ids in pool order."""
    return load_round_pool(run).ids
