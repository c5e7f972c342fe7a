"""ClipCov: cross-covariance preserving selection (specs/clipcov.md §7, reference behaviour §1.2).

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
from dataclasses import dataclass
from typing import Any

import numpy as np

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
_SMALL = 1 << 15  # products up to this many entries run in numpy on CPU


@dataclass(frozen=True)
class ClipCovConfig(SelectorConfig):
    """Options of ``--method clipcov``.

    Args:
        variant: ``reference`` (the notebook's stale-gain schedule, spec §1.2) or ``greedy`` (exact gains).
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
        # zero-copy numpy views for the many tiny products of the greedy loop (CPU only)
        self.host = (self.img.numpy(), self.txt.numpy()) if self.img.device.type == "cpu" else None

    def rowdot(self, a: Any, b: Any, b_rows: Any = None) -> np.ndarray:
        """Row-wise dot products ``<a_i, b_i>`` (or ``<a_i, b[b_rows[i]]>``), block-wise, float64."""
        out = np.empty(a.shape[0], np.float64)
        step = 1 << 16
        for s in range(0, a.shape[0], step):
            bb = b[s : s + step] if b_rows is None else b[b_rows[s : s + step]]
            out[s : s + step] = (a[s : s + step] * bb).sum(1, dtype=self.torch.float64).cpu().numpy()
        return out

    def cross(self, s: int, e: int) -> np.ndarray:
        """r_j for the class occupying rows s:e (both sums from one pass over ``img_k @ txt_kᵀ``)."""
        n = e - s
        x, y = self.img[s:e], self.txt[s:e]
        rows = self.torch.zeros(n, dtype=self.torch.float64, device=self.device)
        cols = self.torch.zeros(n, dtype=self.torch.float64, device=self.device)
        bs = max(1, BLOCK_ELEMENTS // n)
        for b in range(0, n, bs):
            p = x[b : b + bs] @ y.T  # p[i, j] = <img_i, txt_j> = M_k[i, j]
            p.clamp_(min=THRESHOLD) if THRESHOLD == 0.0 else p.masked_fill_(p <= THRESHOLD, 0.0)
            rows[b : b + bs] = p.sum(1, dtype=self.torch.float64)  # Σ_i' M⁺[j, i'] for j = b..b+bs
            cols += p.sum(0, dtype=self.torch.float64)  # Σ_i M⁺[i, j]
        return ((rows + cols) / n).cpu().numpy()

    def redundancy(self, cand: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """Σ_{j∈picked} (M⁺[i, j] + M⁺[j, i]) for every i in ``cand`` (row indices), block-wise."""
        t = self.torch
        out = np.zeros(len(cand), np.float64)
        if len(cand) == 0 or len(picked) == 0:
            return out
        if self.host is not None and len(cand) * len(picked) <= _SMALL:  # torch's per-op cost dominates
            img, txt = self.host
            a = np.maximum(img[cand] @ txt[picked].T, THRESHOLD if THRESHOLD == 0.0 else -np.inf)
            c = np.maximum(txt[cand] @ img[picked].T, THRESHOLD if THRESHOLD == 0.0 else -np.inf)
            return a.sum(1, dtype=np.float64) + c.sum(1, dtype=np.float64)
        pj = t.from_numpy(np.asarray(picked, np.int64)).to(self.device)
        txt_j, img_j = self.txt[pj], self.img[pj]
        bs = max(1, BLOCK_ELEMENTS // len(picked))
        for b in range(0, len(cand), bs):
            ci = t.from_numpy(np.asarray(cand[b : b + bs], np.int64)).to(self.device)
            a = (self.img[ci] @ txt_j.T).clamp_(min=THRESHOLD)  # M⁺[i, j]
            c = (self.txt[ci] @ img_j.T).clamp_(min=THRESHOLD)  # M⁺[j, i] = <img_j, txt_i>
            out[b : b + bs] = (a.sum(1, dtype=t.float64) + c.sum(1, dtype=t.float64)).cpu().numpy()
        return out


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
) -> ClipCovState:
    """Sort ``rows`` (default: all) by class and compute every per-sample term of the unary score.

    ``img``/``txt`` are L2-normalised; ``labels[i]`` indexes ``class_text`` (the class label embeddings).
    Empty classes are skipped. The pool means of the centre terms are taken over ``rows``.
    """
    rows = np.arange(len(img)) if rows is None else np.asarray(rows)
    perm = rows[np.argsort(labels[rows], kind="stable")]
    present, first = np.unique(labels[perm], return_index=True)
    bounds = np.r_[first, len(perm)]
    cls = np.repeat(np.arange(len(present)), np.diff(bounds))
    blocks = Blocks(img[perm], txt[perm], device, dtype)
    t = blocks.torch
    easy = blocks.rowdot(blocks.img, blocks.txt)
    progress = progress or NullProgress()
    progress.start("clipcov: cross terms", total=len(perm))
    parts = []
    for s, e in itertools.pairwise(bounds):
        parts.append(blocks.cross(s, e))
        progress.advance(e - s)
    progress.finish()
    cross = np.concatenate(parts)
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
    """The §1.2 loop.

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


def select_greedy(st: ClipCovState, budget: int, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact greedy on the per-pick deductions (lazy: stale scores bound the exact ones from above).

    gain_i = u_i − (1/n_k) Σ_{j∈S_k} (M⁺[i,j] + M⁺[j,i] + r_j + ℓ_j/2). The last two terms are the
    same for every candidate of class k (an offset), the first only decreases as S_k grows.
    """
    n_cls = len(st.bounds) - 1
    sizes = np.diff(st.bounds).astype(np.float64)
    base = st.unary.astype(np.float64).copy()  # u_i minus the redundancy applied so far
    selected = np.zeros(len(base), bool)
    offset = np.zeros(n_cls, np.float64)
    pending: list[list[int]] = [[] for _ in range(n_cls)]
    order_k = [s + np.argsort(-base[s:e], kind="stable") for s, e in itertools.pairwise(st.bounds)]
    head = np.zeros(n_cls, np.int64)

    def refresh(k: int) -> None:
        s, e = st.bounds[k], st.bounds[k + 1]
        members = s + np.flatnonzero(~selected[s:e])
        base[members] -= st.blocks.redundancy(members, np.asarray(pending[k])) / sizes[k]
        pending[k] = []
        order_k[k] = members[np.argsort(-base[members], kind="stable")]
        head[k] = 0

    def best(k: int) -> tuple[float, int] | None:
        if len(pending[k]) >= _MAX_PENDING:
            refresh(k)
        while True:
            ok = order_k[k]
            while head[k] < len(ok) and selected[ok[head[k]]]:
                head[k] += 1
            win = ok[head[k] : head[k] + _TOP + len(pending[k]) + 1]
            win = win[~selected[win]][: _TOP + 1]
            if len(win) == 0:
                return None
            top = win[:_TOP]
            exact = base[top]
            if pending[k]:
                exact = exact - st.blocks.redundancy(top, np.asarray(pending[k])) / sizes[k]
            i = int(np.argmax(exact))
            bound = base[win[_TOP]] if len(win) > _TOP else -np.inf
            if exact[i] >= bound:
                return float(exact[i] - offset[k]), int(top[i])
            refresh(k)

    heap: list[tuple[float, int, int]] = []
    for k in range(n_cls):
        b = best(k)
        if b is not None:
            heap.append((-b[0], k, b[1]))
    heapq.heapify(heap)
    picks = np.empty(budget, np.int64)
    gains = np.empty(budget, np.float64)
    for t in range(budget):
        if progress is not None and t % 1024 == 0:
            progress.advance(min(1024, budget - t))
        neg, k, j = heapq.heappop(heap)
        picks[t], gains[t] = j, -neg
        selected[j] = True
        pending[k].append(j)
        offset[k] += (st.cross[j] + st.label[j] / 2) / sizes[k]
        b = best(k)
        if b is not None:
            heapq.heappush(heap, (-b[0], k, b[1]))
    return picks, gains


@register
class ClipCov(Selector):
    """ClipCov (Joshi et al., AISTATS 2024): keep samples that preserve the image–caption cross-covariance."""

    name = "clipcov"
    summary = "cross-covariance preserving greedy per pseudo-class (specs/clipcov.md)"
    config_class = ClipCovConfig
    needs = frozenset({"image", "text"})
    budget_mode = "required"
    config: ClipCovConfig

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
            labels = zeroshot_labels(pool.image, eligible, class_text)
        info["classes"] = int(class_text.shape[0])
        st = prepare(
            pool.image, pool.text, labels, class_text, idx, pick_device(ctx.device), self.config.dtype, ctx.progress
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
            rows, gains = select_greedy(st, budget, progress=ctx.progress)
        ctx.progress.finish()
        gain = np.full(len(pool), np.nan)
        gain[st.perm[rows]] = gains
        return Decision(order=st.perm[rows], columns={"gain": gain}, info=info)
