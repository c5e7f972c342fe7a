"""ClipCov: cross-covariance preserving selection (docs/select.md: the objective, both variants, the decisions).

Per sample j of pseudo-class k (members V_k, n_k = |V_k|), with L2-normalised embeddings:

* easiness   e_j = <img_j, txt_j>
* cross      r_j = (Σ_{i∈V_k} max(0, <img_i, txt_j>) + Σ_{i∈V_k} max(0, <img_j, txt_i>)) / n_k
* label sim  ℓ_j = <txt_j, class_text_k>
* centre     a_j = <img_j, mean text of the pool>,  b_j = <txt_j, mean image of the pool> (means normalised)
* unary      u_j = r_j + 2·e_j + ℓ_j/2 − (a_j + b_j)

``variant="reference"`` reproduces the notebook's loop: one global ranking by score; after the pick that
makes (c_k + 1) a multiple of 200 (the 199th, 399th, ... pick of class k) class k's candidates lose
(Σ_{j∈new_k} M⁺[i,j] + M⁺[j,i]) / n_k, then Σ_{j∈sel_k} r_j / n_k and Σ_{j∈new_k} ℓ_j/2 / n_k, and the
ranking is rebuilt. ``variant="greedy"`` applies the same per-pick deductions once and at once (exact,
lazily evaluated marginal gains). Everything is block-wise: no n_k × n_k matrix is ever held whole.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.engines.base import Engine
from curate.errors import InputError, UsageError
from curate.progress import NullProgress, Progress
from curate.select.base import Decision, Pool, Reasons, Scores, SelectContext, Selector, SelectorConfig, register
from curate.select.partition import kmeans, model_class_text, parse_partition, read_class_names, zeroshot_labels

_log = logging.getLogger(__name__)

THRESHOLD = 0.0  # similarities <= THRESHOLD count as 0 (M⁺)
UPDATE_PERIOD = 200  # class k is refreshed when (c_k + 1) % UPDATE_PERIOD == 0
W_CROSS, W_EASY, W_LABEL, W_CENTRE = 1.0, 2.0, 0.5, 1.0
BLOCK_ELEMENTS = 1 << 24  # largest similarity block held at once (64 MiB in float32)
_CHUNK = 2048  # reference variant: picks examined per vectorised step
_TOP = 16  # greedy variant: candidates re-evaluated exactly before a class refresh
_MAX_PENDING = 128  # greedy variant: refresh a class after this many unapplied picks
_SMALL = 1 << 15  # products up to this many entries run on one CPU thread
CROSS_CHUNK_ELEMENTS = 1 << 28  # a class with more products is cut into chunks (engine work units)
MAX_CROSS_CHUNKS = 32


@dataclass(frozen=True)
class ClipCovConfig(SelectorConfig):
    """Options of ``--method clipcov``.

    Args:
        variant: ``reference`` (the reference notebook's stale-gain schedule) or ``greedy`` (exact gains).
        partition: ``imagenet`` (zero-shot ImageNet-1k pseudo-labels with the run's model) or ``kmeans:K``.
        classes: a file of class names (one per line) for zero-shot labels instead of ImageNet-1k.
        dtype: ``float32`` or ``float64`` for similarity blocks (float64 for exactness tests).
    """

    variant: str = "reference"
    partition: str = "imagenet"
    classes: str | None = None
    dtype: str = "float32"

    def validate(self) -> None:
        if self.variant not in ("reference", "greedy"):
            raise UsageError(f"--variant must be 'reference' or 'greedy', got {self.variant!r}")
        kind, _ = parse_partition(self.partition)
        if self.classes is not None and kind != "imagenet":
            raise UsageError("--classes gives zero-shot labels; it cannot be combined with --partition kmeans:K")
        if self.dtype not in ("float32", "float64"):
            raise UsageError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.classes is not None:
            read_class_names(self.classes)  # a missing, empty or repeating file: said before anything else


def torch_index_add(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``out[index[i]] += values[i]`` (torch ``index_add_``; ``np.add.at`` is slow for large inputs)."""
    import torch

    res = torch.from_numpy(out)
    res.index_add_(0, torch.from_numpy(np.asarray(index, np.int64)), torch.from_numpy(values))
    return res.numpy()


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return device


class Blocks:
    """Class-sorted image/text embeddings on a torch device, with block-wise similarity sums."""

    def __init__(self, img: np.ndarray, txt: np.ndarray, device: str, dtype: str) -> None:
        import torch

        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.img = torch.from_numpy(img).to(device=device, dtype=self.dtype)
        self.txt = torch.from_numpy(txt).to(device=device, dtype=self.dtype)
        self.device = device

    def rowdot(self, a: Any, b: Any, b_rows: Any = None) -> np.ndarray:
        """Row-wise dot products ``<a_i, b_i>`` (or ``<a_i, b[b_rows[i]]>``), block-wise, float64."""
        out = np.empty(a.shape[0], np.float64)
        step = 1 << 16
        for s in range(0, a.shape[0], step):
            bb = b[s : s + step] if b_rows is None else b[b_rows[s : s + step]]
            out[s : s + step] = (a[s : s + step] * bb).sum(1, dtype=self.torch.float64).cpu().numpy()
        return out

    def cross(self, s: int, e: int) -> np.ndarray:
        """r_j for the class occupying rows s:e (both sums from one pass over ``img_k @ txt_kᵀ``).

        The rows are taken in the chunks of :func:`cross_chunks`, each chunk's column sums starting
        from zero, so that an engine computing the chunks elsewhere gets the same bits.
        """
        t = self.torch
        n = e - s
        x, y = self.img[s:e], self.txt[s:e]
        rows = t.zeros(n, dtype=t.float64, device=self.device)
        cols = t.zeros(n, dtype=t.float64, device=self.device)
        for r0, r1 in cross_chunks(n):
            part_rows, part_cols = cross_part(x[r0:r1], y)
            rows[r0:r1] = part_rows
            cols += part_cols
        return ((rows + cols) / n).cpu().numpy()

    def redundancy(self, cand: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """Σ_{j∈picked} (M⁺[i, j] + M⁺[j, i]) for every i in ``cand`` (row indices), block-wise."""
        t = self.torch
        out = np.zeros(len(cand), np.float64)
        if len(cand) == 0 or len(picked) == 0:
            return out
        threads = t.get_num_threads()
        small = self.device == "cpu" and threads > 1 and len(cand) * len(picked) <= _SMALL
        if small:  # thread start-up costs more than these products (torch's results don't depend on it)
            t.set_num_threads(1)
        try:
            return self._redundancy(cand, picked, out)
        finally:
            if small:
                t.set_num_threads(threads)

    def _redundancy(self, cand: np.ndarray, picked: np.ndarray, out: np.ndarray) -> np.ndarray:
        t = self.torch
        pj = t.from_numpy(np.asarray(picked, np.int64)).to(self.device)
        txt_j, img_j = self.txt[pj], self.img[pj]
        bs = max(1, BLOCK_ELEMENTS // len(picked))
        for b in range(0, len(cand), bs):
            ci = t.from_numpy(np.asarray(cand[b : b + bs], np.int64)).to(self.device)
            a = (self.img[ci] @ txt_j.T).clamp_(min=THRESHOLD)  # M⁺[i, j]
            c = (self.txt[ci] @ img_j.T).clamp_(min=THRESHOLD)  # M⁺[j, i] = <img_j, txt_i>
            out[b : b + bs] = (a.sum(1, dtype=t.float64) + c.sum(1, dtype=t.float64)).cpu().numpy()
        return out


def cross_block_rows(n: int) -> int:
    """Rows of ``img_k`` per similarity block for a class of ``n`` samples (the block holds BLOCK_ELEMENTS)."""
    return max(1, BLOCK_ELEMENTS // n)


def cross_chunks(n: int) -> list[tuple[int, int]]:
    """Row ranges of a class of ``n`` samples whose cross sums are computed as separate units.

    Small classes are one chunk; a class with more than ``CROSS_CHUNK_ELEMENTS`` products is cut at
    block boundaries into at most ``MAX_CROSS_CHUNKS`` chunks, the units an engine spreads out.
    """
    bs = cross_block_rows(n)
    blocks = -(-n // bs)
    chunks = min(blocks, MAX_CROSS_CHUNKS, max(1, -(-(n * n) // CROSS_CHUNK_ELEMENTS)))
    step = -(-blocks // chunks) * bs
    return [(r0, min(n, r0 + step)) for r0 in range(0, n, step)]


def cross_part(x: Any, y: Any) -> tuple[Any, Any]:
    """For image rows ``x`` (a chunk of class k) and all captions ``y`` of class k: the chunk's row sums
    ``Σ_i' M⁺[j, i']`` and its column sums ``Σ_{i∈chunk} M⁺[i, j]`` (float64, block by block)."""
    import torch

    n = y.shape[0]
    bs = cross_block_rows(n)
    rows = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    cols = torch.zeros(n, dtype=torch.float64, device=x.device)
    for b in range(0, x.shape[0], bs):
        p = x[b : b + bs] @ y.T  # p[i, j] = <img_i, txt_j> = M_k[i, j]
        p.clamp_(min=THRESHOLD) if THRESHOLD == 0.0 else p.masked_fill_(p <= THRESHOLD, 0.0)
        # one cast, then two float64 sums: 2x faster on CPU than casting inside each sum (same values)
        p = p.double()
        rows[b : b + bs] = p.sum(1)  # Σ_i' M⁺[j, i'] for j = b..b+bs
        cols += p.sum(0)  # Σ_i M⁺[i, j]
    return rows, cols


def _cross_task(units: list[tuple[int, int, int, int]], img: np.ndarray, txt: np.ndarray, device: str,
                dtype: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Engine task: ``cross_part`` for each unit ``(s, e, r0, r1)`` (class rows s:e, chunk rows r0:r1)."""
    import torch

    out = []
    cache: tuple[int, int, Any] | None = None
    for s, e, r0, r1 in units:
        if cache is None or cache[:2] != (s, e):
            y = torch.from_numpy(np.array(txt[s:e])).to(device=device, dtype=getattr(torch, dtype))
            cache = (s, e, y)
        x = torch.from_numpy(np.array(img[s + r0 : s + r1])).to(device=device, dtype=getattr(torch, dtype))
        rows, cols = cross_part(x, cache[2])
        out.append((rows.cpu().numpy(), cols.cpu().numpy()))
    return out


def balanced_runs(costs: Sequence[float], parts: int) -> list[tuple[int, int]]:
    """Cut a sequence into at most ``parts`` contiguous runs of about equal total cost."""
    if not len(costs):
        return []
    cum = np.cumsum(np.asarray(costs, np.float64))
    edges = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="left") + 1
    edges = np.unique(np.r_[0, np.minimum(edges, len(costs)), len(costs)])
    return list(itertools.pairwise(edges.tolist()))


def distributed_cross(img: np.ndarray, txt: np.ndarray, bounds: np.ndarray, engine: Engine, device: str,
                      dtype: str, progress: Progress) -> np.ndarray:
    """r_j of every class with the chunk units run as engine tasks; same bits as :meth:`Blocks.cross`."""
    units = [(int(s), int(e), r0, r1) for s, e in itertools.pairwise(bounds) for r0, r1 in cross_chunks(int(e - s))]
    costs = [(r1 - r0) * (e - s) for s, e, r0, r1 in units]
    runs = balanced_runs(costs, 4 * engine.parallelism())
    tasks = [units[a:b] for a, b in runs]
    progress.start("clipcov: cross terms", total=len(tasks), unit="tasks")
    results = engine.map(_cross_task, tasks, {"img": img, "txt": txt, "device": device, "dtype": dtype}, progress)
    progress.finish()
    parts = iter([r for res in results for r in res])
    out = []
    for s, e in itertools.pairwise(bounds):
        n = int(e - s)
        rows = np.zeros(n, np.float64)
        cols = np.zeros(n, np.float64)
        for r0, r1 in cross_chunks(n):
            part_rows, part_cols = next(parts)
            rows[r0:r1] = part_rows
            cols += part_cols
        out.append((rows + cols) / n)
    return np.concatenate(out) if out else np.zeros(0)


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
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> ClipCovState:
    """Sort ``rows`` (default: all) by class and compute every per-sample term of the unary score.

    ``img``/``txt`` are L2-normalised; ``labels[i]`` indexes ``class_text`` (the class label embeddings).
    Empty classes are skipped. The pool means of the centre terms are taken over ``rows``. With a
    distributed ``engine`` the cross terms (the O(Σ n_k² d) part) run as its tasks, with the same bits.
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
    progress = progress or NullProgress()
    if engine is not None and engine.distributed:
        cross = distributed_cross(img_s, txt_s, bounds, engine, engine.worker_device(), dtype, progress)
    else:
        progress.start("clipcov: cross terms", total=len(perm))
        parts = []
        for s, e in itertools.pairwise(bounds):
            parts.append(blocks.cross(s, e))
            progress.advance(e - s)
        progress.finish()
        cross = np.concatenate(parts)
    del img_s, txt_s
    ct = t.from_numpy(np.ascontiguousarray(class_text[present])).to(blocks.device, blocks.dtype)
    label = blocks.rowdot(blocks.txt, ct, t.from_numpy(cls).to(blocks.device))
    t_mean, i_mean = blocks.txt.mean(0), blocks.img.mean(0)
    t_mean, i_mean = t_mean / t_mean.norm(), i_mean / i_mean.norm()
    centre = (blocks.img @ t_mean).double().cpu().numpy() + (blocks.txt @ i_mean).double().cpu().numpy()
    unary = W_CROSS * cross + W_EASY * easy + W_LABEL * label - W_CENTRE * centre
    return ClipCovState(blocks, bounds, cls, unary, cross, label, perm, easy, centre, present)


def select_reference(
    st: ClipCovState,
    budget: int,
    period: int = UPDATE_PERIOD,
    trace: list[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference notebook's loop (docs/select.md, ``--variant reference``).

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


class ClassGreedy:
    """The exact greedy pick sequence of one class, which depends on nothing outside the class.

    gain_i = u_i − (1/n_k) Σ_{j∈S_k} (M⁺[i,j] + M⁺[j,i] + r_j + ℓ_j/2). The last two terms are the
    same for every candidate of the class (an offset), the first only decreases as S_k grows, so stale
    gains bound the exact ones from above (lazy evaluation). ``take(m)`` returns the next ``m`` picks
    (rows of ``blocks``) and their gains; the merge of all classes by gain is the global greedy.
    """

    def __init__(self, blocks: Blocks, s: int, e: int, unary: np.ndarray, cross: np.ndarray,
                 label: np.ndarray) -> None:
        self.blocks, self.s = blocks, s
        self.size = float(e - s)
        self.base = unary.astype(np.float64).copy()  # u_i minus the redundancy applied so far (class-local)
        self.cross, self.label = cross, label
        self.selected = np.zeros(e - s, bool)
        self.offset = 0.0
        self.pending: list[int] = []
        self.order = np.argsort(-self.base, kind="stable")
        self.head = 0

    def _redundancy(self, cand: np.ndarray, picked: list[int]) -> np.ndarray:
        return self.blocks.redundancy(self.s + cand, self.s + np.asarray(picked, np.int64))

    def _refresh(self) -> None:
        members = np.flatnonzero(~self.selected)
        self.base[members] -= self._redundancy(members, self.pending) / self.size
        self.pending = []
        self.order = members[np.argsort(-self.base[members], kind="stable")]
        self.head = 0

    def _best(self) -> tuple[float, int] | None:
        if len(self.pending) >= _MAX_PENDING:
            self._refresh()
        while True:
            ok = self.order
            while self.head < len(ok) and self.selected[ok[self.head]]:
                self.head += 1
            win = ok[self.head : self.head + _TOP + len(self.pending) + 1]
            win = win[~self.selected[win]][: _TOP + 1]
            if len(win) == 0:
                return None
            top = win[:_TOP]
            exact = self.base[top]
            if self.pending:
                exact = exact - self._redundancy(top, self.pending) / self.size
            i = int(np.argmax(exact))
            bound = self.base[win[_TOP]] if len(win) > _TOP else -np.inf
            if exact[i] >= bound:
                return float(exact[i] - self.offset), int(top[i])
            self._refresh()

    def take(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The class's next ``m`` picks (fewer when it runs out): rows of ``blocks`` and gains."""
        rows, gains = [], []
        for _ in range(m):
            b = self._best()
            if b is None:
                break
            g, j = b
            rows.append(self.s + j)
            gains.append(g)
            self.selected[j] = True
            self.pending.append(j)
            self.offset += (self.cross[j] + self.label[j] / 2) / self.size
        return np.asarray(rows, np.int64), np.asarray(gains, np.float64)


def _greedy_task(classes: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                 device: str, dtype: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Engine task: the first ``m`` picks of each class ``(m, s, img, txt, unary, cross, label)``.

    A class's sequence is deterministic, so a longer request recomputes the same prefix and goes on.
    """
    out = []
    for m, s, img, txt, unary, cross, label in classes:
        blocks = Blocks(np.array(img), np.array(txt), device, dtype)
        rows, gains = ClassGreedy(blocks, 0, len(unary), unary, cross, label).take(m)
        out.append((rows + s, gains))
    return out


def select_greedy(
    st: ClipCovState, budget: int, progress: Progress | None = None, engine: Engine | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact greedy on the per-pick deductions: merge the classes' own greedy sequences by gain.

    Each class's sequence (:class:`ClassGreedy`) depends only on that class, so with a distributed
    ``engine`` the sequences are computed by its tasks, as far as the merge needs them, with the same bits.
    """
    n_cls = len(st.bounds) - 1
    sizes = np.diff(st.bounds)
    if engine is not None and engine.distributed:
        fetch = _remote_sequences(st, budget, engine)
    else:
        local = [ClassGreedy(st.blocks, s, e, st.unary[s:e], st.cross[s:e], st.label[s:e])
                 for s, e in itertools.pairwise(st.bounds)]

        def fetch(ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            return [local[k].take(1) for k in ks]

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


def _remote_sequences(st: ClipCovState, budget: int, engine: Engine) -> Any:
    """``fetch(ks)``: the next picks of classes ``ks``, computed by ``engine`` tasks.

    A class is first asked for about twice its share of the budget (at least 16 picks), then for twice
    as many as before whenever the merge has used them up; a task recomputes the class's sequence from
    its start (it is deterministic), so no state lives between tasks.
    """
    bounds = st.bounds
    sizes = np.diff(bounds)
    n = int(bounds[-1])
    img, txt = st.blocks.img.cpu().numpy(), st.blocks.txt.cpu().numpy()
    dtype = str(st.blocks.dtype).removeprefix("torch.")
    given = np.zeros(len(sizes), np.int64)

    def fetch(ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        want = [int(min(sizes[k], max(16, 2 * given[k], -(-2 * budget * int(sizes[k]) // n)))) for k in ks]
        payload = []
        for k, m in zip(ks, want, strict=True):
            s, e = int(bounds[k]), int(bounds[k + 1])
            payload.append((m, s, img[s:e], txt[s:e], st.unary[s:e], st.cross[s:e], st.label[s:e]))
        runs = balanced_runs([float(sizes[k]) * m for k, m in zip(ks, want, strict=True)], 4 * engine.parallelism())
        results = engine.map(_greedy_task, [payload[a:b] for a, b in runs],
                             {"device": engine.worker_device(), "dtype": dtype})
        out = []
        for k, (rows, gains) in zip(ks, (r for res in results for r in res), strict=True):
            out.append((rows[given[k] :], gains[given[k] :]))
            given[k] = len(rows)
        return out

    return fetch


@register
class ClipCov(Selector):
    """ClipCov (Joshi et al., AISTATS 2024): keep samples that preserve the image–caption cross-covariance."""

    name = "clipcov"
    summary = "cross-covariance preserving greedy per pseudo-class (docs/select.md)"
    config_class = ClipCovConfig
    needs = frozenset({"image", "text"})
    budget_mode = "required"
    config: ClipCovConfig

    def option_tags(self) -> list[str]:
        tags = [] if self.config.variant == "reference" else [self.config.variant]
        kind, k = parse_partition(self.config.partition)
        if kind == "kmeans":
            tags.append(f"km{k}")
        if self.config.classes is not None:  # zero-shot labels from a class list: named after its file
            tags.append(re.sub(r"[^A-Za-z0-9._+]", "_", Path(self.config.classes).stem)[:40] or "classes")
        if self.config.dtype != "float32":
            tags.append(self.config.dtype.replace("float", "fp"))
        return tags

    def uses_seed(self) -> bool:
        return parse_partition(self.config.partition)[0] == "kmeans"  # zero-shot labels use no randomness

    def check_pool(self, pool_size: int) -> None:
        _, k = parse_partition(self.config.partition)
        if k is not None and k > pool_size:
            raise UsageError(f"--partition kmeans:{k} needs at least {k} samples, the pool has {pool_size}")

    def _class_text(self, pool: Pool, ctx: SelectContext) -> tuple[np.ndarray, list[str] | None]:
        if ctx.class_text is not None:
            return np.asarray(ctx.class_text, np.float32), ctx.class_names
        names = read_class_names(self.config.classes) if self.config.classes else None
        return model_class_text(ctx.run_root, names, device=pick_device(ctx.device))

    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        assert pool.image is not None and pool.text is not None
        n = len(pool)
        reasons = Reasons(n)
        eligible = pool.image_ok & pool.text_ok
        reasons.set(~pool.image_ok, "bad_image_emb")
        reasons.set(pool.image_ok & ~pool.text_present, "null_text")
        reasons.set(pool.image_ok & pool.text_present & ~pool.text_ok, "bad_text_emb")
        idx = np.flatnonzero(eligible)
        if len(idx) == 0:
            raise InputError("no sample has both a valid image and a valid text embedding; clipcov needs both")
        kind, k = parse_partition(self.config.partition)
        info: dict[str, Any] = {"partition": self.config.partition if not self.config.classes else "classes"}
        if kind == "kmeans":
            assert k is not None
            labels, _ = kmeans(pool.image, eligible, k, ctx.seed)
            class_text = np.zeros((k, pool.text.shape[1]), np.float32)  # class "label" = mean caption
            sel = slice(None) if len(idx) == n else idx  # avoid an N×d copy when every row is eligible
            class_text = torch_index_add(class_text, labels[idx], pool.text[sel])
            class_text /= np.maximum(np.linalg.norm(class_text, axis=1, keepdims=True), 1e-12)
            names = None
        else:
            class_text, names = self._class_text(pool, ctx)
            labels = zeroshot_labels(pool.image, eligible, class_text, ctx.engine)
        info["classes"] = int(class_text.shape[0])
        st = prepare(
            pool.image, pool.text, labels, class_text, idx, pick_device(ctx.device), self.config.dtype, ctx.progress,
            ctx.engine,
        )
        pool.image = pool.text = None  # the class-sorted copies replace them (memory)
        cols: dict[str, np.ndarray] = {}
        for name, v in (
            ("score", st.unary),
            ("easiness", st.easy),
            ("cross", st.cross),
            ("label_sim", st.label),
            ("centre_sim", st.centre),
        ):
            full = np.full(n, np.nan)
            full[st.perm] = v
            cols[name] = full
        cols["partition"] = labels
        info["nonempty_classes"] = len(st.bounds) - 1
        return Scores(cols, eligible, reasons, state={"clipcov": st, "names": names}, info=info)

    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        assert budget is not None
        st: ClipCovState = scores.state["clipcov"]
        n_ok = len(st.perm)
        if budget > n_ok:
            dropped = ", ".join(f"{k}: {v}" for k, v in scores.reasons.counts().items() if k != "budget")
            raise InputError(
                f"clipcov can score {n_ok} samples ({dropped}) but the budget is {budget}; lower --count/--fraction"
            )
        info: dict[str, Any] = {"variant": self.config.variant}
        ctx.progress.start(f"clipcov: selecting ({self.config.variant})", total=budget)
        if self.config.variant == "reference":
            rows, gains, log = select_reference(st, budget, progress=ctx.progress)
            info["class_updates"] = len(log)
        else:
            rows, gains = select_greedy(st, budget, progress=ctx.progress, engine=ctx.engine)
        ctx.progress.finish()
        gain = np.full(len(pool), np.nan)
        gain[st.perm[rows]] = gains
        return Decision(order=st.perm[rows], columns={"gain": gain}, info=info)
