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

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curate.engines.devices import device_name
from curate.errors import InputError, UsageError
from curate.select import partition as partition_module
from curate.select.base import (
    DEFAULT_MEMORY,
    BlockScan,
    MergeSequences,
    PartitionOutput,
    Pool,
    Reasons,
    SelectContext,
    Selector,
    SelectorConfig,
    register,
)
from curate.select.partition import Partitioner, parse_partition, read_class_names

_log = logging.getLogger(__name__)

THRESHOLD = 0.0  # similarities <= THRESHOLD count as 0 (M⁺)
DTYPES = ("auto", "float32", "float64", "float16", "bfloat16")
UPDATE_PERIOD = 200  # class k is refreshed when (c_k + 1) % UPDATE_PERIOD == 0
W_CROSS, W_EASY, W_LABEL, W_CENTRE = 1.0, 2.0, 0.5, 1.0
BLOCK_ELEMENTS = 1 << 24  # largest similarity block held at once (64 MiB in float32)
SUM_ELEMENTS = 1 << 18  # cross terms: a block is thresholded and summed in float64 this many values at a time
ROWDOT_ROWS = 1 << 13  # rows per product of row-wise dot products (a row's value does not depend on it)
GATHER_ELEMENTS = 1 << 20  # redundancy: candidate rows gathered (and their products) per block, in elements
_CHUNK = 2048  # reference variant: picks examined per vectorised step
_TOP = 16  # greedy variant: candidates re-evaluated exactly before a class refresh
_MAX_PENDING = 128  # greedy variant: refresh a class after this many unapplied picks
_SMALL = 1 << 15  # products up to this many entries run on one CPU thread
CROSS_CHUNK_ELEMENTS = 1 << 28  # a class with more products is cut into chunks
CROSS_TILE = 1 << 16  # captions per tile of the cross-term products
MAX_CROSS_CHUNKS = 32
SUM_ROWS = 1 << 13  # pass 1: rows added to the pool and class sums at once, as float64


@dataclass(frozen=True)
class ClipCovConfig(SelectorConfig):
    """Options of ``--method clipcov``.

    Args:
        variant: ``reference`` (the reference notebook's stale-gain schedule) or ``greedy`` (exact gains).
        partition: ``imagenet`` (zero-shot ImageNet-1k pseudo-labels with the run's model) or ``kmeans:K``.
        classes: a file of class names (one per line) for zero-shot labels instead of ImageNet-1k.
        dtype: the inputs of the similarity products: ``auto`` (float16 on a GPU, with float32
            accumulation; float32 on the CPU), ``float32``, ``float64`` (exactness tests), ``float16`` or
            ``bfloat16`` (on the CPU: the inputs rounded to it, then float32 products, as a GPU computes).
        kmeans_sample: rows ``kmeans:K`` trains on (a seeded uniform sample; default 256 per cluster, at most 500k).
        cross_sample: estimate each sample's cross term from a seeded random sample of this many members of
            its class (unbiased; classes no larger are exact). Off by default: the exact sum is O(n_k²).
    """

    variant: str = "reference"
    partition: str = "imagenet"
    classes: str | None = None
    dtype: str = "auto"
    kmeans_sample: int | None = None
    cross_sample: int | None = None

    def validate(self) -> None:
        if self.variant not in ("reference", "greedy"):
            raise UsageError(f"--variant must be 'reference' or 'greedy', got {self.variant!r}")
        Partitioner(self.partition, self.classes, self.kmeans_sample)  # validates the three together
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.cross_sample is not None and self.cross_sample < 1:
            raise UsageError(f"--cross-sample must be a positive integer, got {self.cross_sample}")
        if self.classes is not None:
            read_class_names(self.classes)  # a missing, empty or repeating file: said before anything else


def _HALF_DTYPES(torch: Any) -> tuple[Any, ...]:
    return (torch.float16, torch.bfloat16)


def mm(a: Any, b: Any) -> Any:
    """``a @ bᵀ``; half-precision inputs are multiplied with float32 accumulation and a float32 result
    (cuBLAS on a GPU; on the CPU the same model: the half values are exact in float32)."""
    import torch

    if a.dtype in (torch.float16, torch.bfloat16):
        if a.is_cuda:
            return torch.mm(a, b.T, out_dtype=torch.float32)
        return a.float() @ b.float().T
    return a @ b.T


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: float16 inputs on a GPU (float32 accumulation), float32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "float32"


class Rows:
    """A class's embeddings (one of image or text) as L2-normalised rows on a torch device.

    Either held whole (``Rows(tensor)``), or kept as the partition's float16 rows and normalised a
    slice or a gather at a time (:meth:`lazy`): a row's value is the same either way (normalising is
    per row), so the choice is a memory knob only.
    """

    def __init__(self, held: Any = None, raw: np.ndarray | None = None, device: str = "cpu",
                 dtype: Any = None) -> None:
        self.held, self.raw, self.device, self.dtype = held, raw, device, dtype
        self.shape = tuple(held.shape) if held is not None else tuple(raw.shape)  # type: ignore[union-attr]

    @classmethod
    def lazy(cls, raw: np.ndarray, device: str, dtype: Any) -> Rows:
        """Rows converted from ``raw`` (float16, not normalised) whenever they are read."""
        return cls(None, raw, device, dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> Any:
        if self.held is not None:
            return self.held[idx]
        import torch

        from curate.select.pool import normalise_rows

        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        m = normalise_rows(self.raw[idx])  # type: ignore[index]
        return torch.from_numpy(m).to(device=self.device, dtype=self.dtype)


class Blocks:
    """A class's image/text embeddings on a torch device, with block-wise similarity sums.

    Every product is cut into blocks whose shapes depend only on the class size, so the held and the
    lazy (:meth:`lazy`) forms give the same bits.
    """

    def __init__(self, img: np.ndarray | None, txt: np.ndarray | None, device: str, dtype: str) -> None:
        import torch

        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.device = device
        if img is not None and txt is not None:
            self.img = Rows(torch.from_numpy(img).to(device=device, dtype=self.dtype))
            self.txt = Rows(torch.from_numpy(txt).to(device=device, dtype=self.dtype))

    @classmethod
    def lazy(cls, img16: np.ndarray, txt16: np.ndarray, device: str, dtype: str) -> Blocks:
        """Blocks over float16 rows that are normalised a block at a time (memory: the float16 rows)."""
        b = cls(None, None, device, dtype)
        b.img, b.txt = Rows.lazy(img16, device, b.dtype), Rows.lazy(txt16, device, b.dtype)
        return b

    def rowdot(self, a: Any, b: Any, b_rows: Any = None) -> np.ndarray:
        """Row-wise dot products ``<a_i, b_i>`` (or ``<a_i, b[b_rows[i]]>``), block-wise, float64."""
        out = np.empty(len(a), np.float64)
        step = ROWDOT_ROWS
        one = b_rows is not None and len(b) == 1  # one row for all (a mean, a class): broadcast, not gathered
        for s in range(0, len(a), step):
            bb = b[s : s + step] if b_rows is None else b[0:1] if one else b[b_rows[s : s + step]]
            aa = a[s : s + step]
            if aa.dtype in _HALF_DTYPES(self.torch):  # half inputs: products and sums in float64
                aa, bb = aa.double(), bb.double()
            out[s : s + step] = (aa * bb).sum(1, dtype=self.torch.float64).cpu().numpy()
        return out

    def cross(self, s: int, e: int) -> np.ndarray:
        """r_j for the class occupying rows s:e (both sums from one pass over ``img_k @ txt_kᵀ``).

        The rows are taken in the chunks of :func:`cross_chunks`, each chunk's column sums starting
        from zero; captions in tiles of at most ``CROSS_TILE`` columns (one tile for most classes).
        """
        t = self.torch
        n = e - s
        rows = t.zeros(n, dtype=t.float64, device=self.device)
        cols = t.zeros(n, dtype=t.float64, device=self.device)
        tiles = cross_tiles(n)
        held = [self.txt[s + c0 : s + c1] for c0, c1 in tiles] if len(tiles) == 1 or self.txt.held is not None \
            else None
        for r0, r1 in cross_chunks(n):
            part_rows, part_cols = cross_part(self.img, self.txt, s, n, r0, r1, held)
            rows[r0:r1] = part_rows
            cols += part_cols
        return ((rows + cols) / n).cpu().numpy()

    def cross_sampled(self, n: int, sample: np.ndarray) -> np.ndarray:
        """r_j estimated from the class members ``sample`` (M rows, sorted): the mean of
        max(0, <img_i, txt_j>) + max(0, <img_j, txt_i>) over i in the sample, an unbiased estimate of the
        mean over the class. Cost n × M instead of n²."""
        t = self.torch
        m = len(sample)
        si = t.from_numpy(np.asarray(sample, np.int64)).to(self.device)
        img_s, txt_s = self.img[si], self.txt[si]
        out = t.zeros(n, dtype=t.float64, device=self.device)
        bs = max(1, BLOCK_ELEMENTS // m)
        for b in range(0, n, bs):
            a = mm(img_s, self.txt[b : b + bs]).clamp_(min=THRESHOLD).double().sum(0)  # Σ_{i∈S} M⁺[i, j]
            c = mm(self.img[b : b + bs], txt_s).clamp_(min=THRESHOLD).double().sum(1)  # Σ_{i∈S} M⁺[j, i]
            out[b : b + bs] = a + c
        return (out / m).cpu().numpy()

    def redundancy(self, cand: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """Σ_{j∈picked} (M⁺[i, j] + M⁺[j, i]) for every i in ``cand`` (row indices), block-wise."""
        from curate.engines.devices import torch_threads

        out = np.zeros(len(cand), np.float64)
        if len(cand) == 0 or len(picked) == 0:
            return out

        small = self.device == "cpu" and len(cand) * len(picked) <= _SMALL
        # thread start-up costs more than these products (torch's results don't depend on it)
        with torch_threads(1, when=small):
            return self._redundancy(cand, picked, out)

    def _redundancy(self, cand: np.ndarray, picked: np.ndarray, out: np.ndarray) -> np.ndarray:
        t = self.torch
        pj = t.from_numpy(np.asarray(picked, np.int64)).to(self.device)
        txt_j, img_j = self.txt[pj], self.img[pj]
        # a block's gathered rows (image and caption) and its two products stay within GATHER_ELEMENTS
        # each; a row's products do not depend on how many rows share its block
        bs = max(1, GATHER_ELEMENTS // max(len(picked), self.img.shape[1]))
        for b in range(0, len(cand), bs):
            ci = t.from_numpy(np.asarray(cand[b : b + bs], np.int64)).to(self.device)
            a = mm(self.img[ci], txt_j).clamp_(min=THRESHOLD)  # M⁺[i, j]
            c = mm(self.txt[ci], img_j).clamp_(min=THRESHOLD)  # M⁺[j, i] = <img_j, txt_i>
            out[b : b + bs] = (a.sum(1, dtype=t.float64) + c.sum(1, dtype=t.float64)).cpu().numpy()
        return out


def cross_tiles(n: int) -> list[tuple[int, int]]:
    """Column tiles of a class of ``n`` captions (one tile up to ``CROSS_TILE`` captions)."""
    return [(c, min(n, c + CROSS_TILE)) for c in range(0, n, CROSS_TILE)]


def cross_block_rows(n: int) -> int:
    """Rows of ``img_k`` per similarity block for a class of ``n`` samples (a block holds BLOCK_ELEMENTS)."""
    return max(1, BLOCK_ELEMENTS // min(n, CROSS_TILE))


def cross_chunks(n: int) -> list[tuple[int, int]]:
    """Row ranges of a class of ``n`` samples whose cross sums are computed as separate units.

    Small classes are one chunk; a class with more than ``CROSS_CHUNK_ELEMENTS`` products is cut at
    block boundaries into at most ``MAX_CROSS_CHUNKS`` chunks (each chunk's column sums start at zero).
    """
    bs = cross_block_rows(n)
    blocks = -(-n // bs)
    chunks = min(blocks, MAX_CROSS_CHUNKS, max(1, -(-(n * n) // CROSS_CHUNK_ELEMENTS)))
    step = -(-blocks // chunks) * bs
    return [(r0, min(n, r0 + step)) for r0 in range(0, n, step)]


def cross_part(img: Rows, txt: Rows, s: int, n: int, r0: int, r1: int,
               held: list[Any] | None = None) -> tuple[Any, Any]:
    """For image rows ``r0:r1`` of the class at rows ``s:s+n`` and all its captions: the chunk's row sums
    ``Σ_i' M⁺[j, i']`` and its column sums ``Σ_{i∈chunk} M⁺[i, j]`` (float64, block by block, captions
    tile by tile). ``held``: the caption tiles, when they are kept between calls."""
    import torch

    bs = cross_block_rows(n)
    tiles = cross_tiles(n)
    dev = img.device if img.held is None else img.held.device
    rows = torch.zeros(r1 - r0, dtype=torch.float64, device=dev)
    cols = torch.zeros(n, dtype=torch.float64, device=dev)
    per_slice = SUM_ELEMENTS if torch.device(dev).type == "cpu" else BLOCK_ELEMENTS  # a GPU: one per block
    # tiles outside, blocks inside: a tile is read (or normalised) once per chunk, not once per block;
    # every row and column sum still adds its parts in the same order (tiles in order, blocks in order)
    for i, (c0, c1) in enumerate(tiles):
        y = held[i] if held is not None else txt[s + c0 : s + c1]
        sub = max(1, per_slice // (c1 - c0))  # rows of a block thresholded and summed at once
        for b in range(r0, r1, bs):
            x = img[s + b : s + min(r1, b + bs)]
            p = mm(x, y)  # p[i, j] = <img_i, txt_j> = M_k[i, j]
            # on CPU the float64 copy and its sums run on slices of SUM_ELEMENTS that stay in cache, not
            # on a float64 copy of the whole block (BENCHMARKS §4, the kernel's rate); the slices depend
            # only on the class size and the device, so held and lazy rows give the same bits
            for q0 in range(0, len(x), sub):
                q = p[q0 : q0 + sub]
                q.clamp_(min=THRESHOLD) if THRESHOLD == 0.0 else q.masked_fill_(q <= THRESHOLD, 0.0)
                q = q.double()  # one cast, then two float64 sums: faster on CPU than casting in each sum
                j0 = b - r0 + q0
                if i == 0:
                    rows[j0 : j0 + len(q)] = q.sum(1)  # Σ_i' M⁺[j, i'] for the slice's rows j
                else:
                    rows[j0 : j0 + len(q)] += q.sum(1)
                cols[c0:c1] += q.sum(0)  # Σ_i M⁺[i, j]
            del p, q  # before the next block's product: two blocks are never held at once
    return rows, cols


class ClassReference:
    """The reference variant's pick sequence of one class, which depends on nothing outside the class.

    Picks go in score order; after the pick that makes (c + 1) a multiple of ``period`` the class's
    unselected members lose their redundancy with the picks since the last refresh and the two
    class-wide shifts, and are re-sorted (ties: pool order). ``take(m)`` returns the next ``m`` picks as
    (local rows, score at pick, refresh-after flags); ``state()`` / :meth:`restore` carry the cursor
    between tasks.
    """

    def __init__(self, blocks: Blocks, unary: np.ndarray, cross: np.ndarray, label: np.ndarray,
                 period: int = UPDATE_PERIOD) -> None:
        self.blocks, self.cross, self.label, self.period = blocks, cross, label, period
        self.n = len(unary)
        self.score = unary.astype(np.float64).copy()
        self.selected = np.zeros(self.n, bool)
        self.order = np.argsort(-self.score, kind="stable")
        self.ptr = 0
        self.count = 0
        self.new: list[int] = []
        self.sel_cross = 0.0

    @property
    def done(self) -> bool:
        return self.count >= self.n

    def take(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, scores, flags = [], [], []
        taken = 0
        while taken < m and self.count < self.n:
            # picks up to the next refresh go in one vectorised step
            r = (self.count + 1) % self.period
            step = min(m - taken, self.n - self.count, self.period - r if r else self.period)
            j = self.order[self.ptr : self.ptr + step]
            self.ptr += len(j)
            taken += len(j)
            rows.append(j)
            scores.append(self.score[j])
            self.selected[j] = True
            self.count += len(j)
            self.new.extend(j.tolist())
            fire = (self.count + 1) % self.period == 0
            f = np.zeros(len(j), bool)
            f[-1] = fire
            flags.append(f)
            if fire:
                self._refresh()
        cat = (lambda x, dt: np.concatenate(x) if x else np.zeros(0, dt))  # noqa: E731
        return cat(rows, np.int64), cat(scores, np.float64), cat(flags, bool)

    def _refresh(self) -> None:
        members = np.flatnonzero(~self.selected)
        nk = np.asarray(self.new, np.int64)
        self.score[members] -= self.blocks.redundancy(members, nk) / float(self.n)
        self.sel_cross += self.cross[nk].sum()
        self.score[members] -= self.sel_cross / float(self.n)
        self.score[members] -= (self.label[nk] / 2).sum() / float(self.n)
        self.new = []
        self.order = members[np.argsort(-self.score[members], kind="stable")]
        self.ptr = 0

    def state(self) -> dict[str, np.ndarray]:
        return {"score": self.score, "selected": self.selected, "order": self.order, "cross": self.cross,
                "label": self.label, "new": np.asarray(self.new, np.int64),
                "scalars": np.asarray([self.ptr, self.count, self.period], np.int64),
                "sel_cross": np.asarray([self.sel_cross])}

    @classmethod
    def restore(cls, blocks: Blocks, st: dict[str, np.ndarray]) -> ClassReference:
        c = cls.__new__(cls)
        c.blocks, c.cross, c.label = blocks, st["cross"], st["label"]
        c.score, c.selected, c.order = st["score"].copy(), st["selected"].copy(), st["order"]
        c.n = len(c.score)
        c.ptr, c.count, c.period = (int(x) for x in st["scalars"])
        c.new = st["new"].tolist()
        c.sel_cross = float(st["sel_cross"][0])
        return c


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

    @property
    def done(self) -> bool:
        return bool(self.selected.all())

    def take(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The class's next ``m`` picks (fewer when it runs out): local rows, gains, and no refresh flags."""
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
        return np.asarray(rows, np.int64), np.asarray(gains, np.float64), np.zeros(len(rows), bool)

    def state(self) -> dict[str, np.ndarray]:
        return {"base": self.base, "selected": self.selected, "order": self.order, "cross": self.cross,
                "label": self.label, "pending": np.asarray(self.pending, np.int64),
                "scalars": np.asarray([self.s, self.head], np.int64), "floats": np.asarray([self.size, self.offset])}

    @classmethod
    def restore(cls, blocks: Blocks, st: dict[str, np.ndarray]) -> ClassGreedy:
        c = cls.__new__(cls)
        c.blocks, c.cross, c.label = blocks, st["cross"], st["label"]
        c.base, c.selected, c.order = st["base"].copy(), st["selected"].copy(), st["order"]
        c.s, c.head = (int(x) for x in st["scalars"])
        c.size, c.offset = (float(x) for x in st["floats"])
        c.pending = st["pending"].tolist()
        return c


CURSORS = {"reference": ClassReference, "greedy": ClassGreedy}


@register
class ClipCov(Selector):
    """ClipCov (Joshi et al., AISTATS 2024): keep samples that preserve the image–caption cross-covariance.

    Pass 1 labels each sample (zero-shot class or k-means cluster) and sums the pool's embeddings;
    pass 2 computes each class's terms and its own pick sequence; the decision merges the sequences.
    """

    name = "clipcov"
    summary = "cross-covariance preserving greedy per pseudo-class (docs/select.md)"
    config_class = ClipCovConfig
    needs = frozenset({"image", "text"})
    budget_mode = "required"
    columns: ClassVar[dict[str, str]] = {"score": "f8", "easiness": "f8", "cross": "f8", "label_sim": "f8",
                                         "centre_sim": "f8", "partition": "i4", "gain": "f8"}
    partitioned = True
    own_partitions = True
    partition_parts = frozenset({"image", "text"})
    row_parts = frozenset({"image", "text"})
    config: ClipCovConfig

    def option_tags(self) -> list[str]:
        tags = [] if self.config.variant == "reference" else [self.config.variant]
        kind, k = parse_partition(self.config.partition)
        if kind == "kmeans":
            tags.append(f"km{k}")
        if self.config.classes is not None:  # zero-shot labels from a class list: named after its file
            tags.append(re.sub(r"[^A-Za-z0-9._+]", "_", Path(self.config.classes).stem)[:40] or "classes")
        if self.config.dtype not in ("auto", "float32"):
            tags.append(self.config.dtype.replace("float", "fp"))
        if self.config.cross_sample is not None:
            tags.append(f"xs{self.config.cross_sample}")
        if self.config.kmeans_sample is not None:
            tags.append(f"kms{self.config.kmeans_sample}")
        return tags

    def uses_seed(self) -> bool:  # zero-shot labels use no randomness; k-means and sampled cross terms do
        return parse_partition(self.config.partition)[0] == "kmeans" or self.config.cross_sample is not None

    def check_pool(self, pool_size: int) -> None:
        _, k = parse_partition(self.config.partition)
        if k is not None and k > pool_size:
            raise UsageError(f"--partition kmeans:{k} needs at least {k} samples, the pool has {pool_size}")

    def partitioner(self) -> Partitioner:
        return Partitioner(self.config.partition, self.config.classes, self.config.kmeans_sample)

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        shared: dict[str, Any] = {"device": device_name(ctx.device), "seed": ctx.seed}
        shared.update(self.partitioner().setup(
            source, ctx, {"image", "text"}, lambda c: c.image_ok & c.text_ok, shared["device"],
            empty="no sample has both a valid image and a valid text embedding; clipcov needs both"))
        return shared

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        """Labels, pool sums (and k-means class caption sums), reading the block a slice of rows at a time.

        Every sum adds its rows one after another in row order, carried across slices, so the values
        are those of one reduction over the whole block; labels take :data:`partition.ARGMAX_ROWS` rows
        per product, as on the whole block."""
        assert chunk.image_ok is not None and chunk.text_ok is not None and chunk.text_present is not None
        n = len(chunk)
        reasons = Reasons(n)
        eligible = chunk.image_ok & chunk.text_ok
        reasons.set(~chunk.image_ok, "bad_image_emb")
        reasons.set(chunk.image_ok & ~chunk.text_present, "null_text")
        reasons.set(chunk.image_ok & chunk.text_present & ~chunk.text_ok, "bad_text_emb")
        d = chunk.raw["image_emb"].type.list_size
        labels = np.empty(n, np.int32)
        sums = {"image": np.zeros(d), "text": np.zeros(d)}
        kmeans = "class_text" not in shared  # k-means: a class's "label" is its normalised mean caption
        per = np.zeros((int(shared["n_partitions"]) if kmeans else 0, d))
        step = partition_module.ARGMAX_ROWS
        for a in range(0, n, step):
            b = min(n, a + step)
            ok = eligible[a:b]
            img = chunk.rows("image", a, b)
            labels[a:b] = Partitioner.labels(img, shared, ok)
            for s0 in range(0, b - a, SUM_ROWS):
                sums["image"] = _add_rows(sums["image"], img[s0 : s0 + SUM_ROWS], ok[s0 : s0 + SUM_ROWS])
            del img
            txt = chunk.rows("text", a, b)
            for s0 in range(0, b - a, SUM_ROWS):
                sl = slice(s0, s0 + SUM_ROWS)
                sums["text"] = _add_rows(sums["text"], txt[sl], ok[sl])
                if kmeans:
                    _add_class_rows(per, txt[sl][ok[sl]], labels[a:b][sl][ok[sl]])
            del txt
        if kmeans:
            sums["class_text"] = per
        return BlockScan({"partition": labels}, eligible, reasons, partition=labels, sums=sums)

    def reduce(self, sums: dict[str, np.ndarray], sizes: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
        if sizes.size == 0 or sizes.sum() == 0:
            raise InputError("no sample has both a valid image and a valid text embedding; clipcov needs both")
        out: dict[str, Any] = {
            "text_mean": _unit(sums["text"]),
            "image_mean": _unit(sums["image"]),
        }
        if "class_text" in sums:  # float64 until the blocks take their dtype
            ct = sums["class_text"]
            out["class_text"] = ct / np.maximum(np.linalg.norm(ct, axis=1, keepdims=True), 1e-12)
        return out

    def _blocks(self, data: Any, shared: dict[str, Any]) -> Blocks:
        """The partition held as float32 when :meth:`PartitionData.holds` says so, else read lazily."""
        dtype = resolve_dtype(self.config.dtype, shared["device"])
        if data.holds(2, shared.get("memory", DEFAULT_MEMORY)):
            return Blocks(data.matrix("image"), data.matrix("text"), shared["device"], dtype)
        return Blocks.lazy(data.raw16("image"), data.raw16("text"), shared["device"], dtype)

    def partition(self, data: Any, shared: dict[str, Any]) -> PartitionOutput:
        blocks = self._blocks(data, shared)
        n = len(data)
        t = blocks.torch
        m = self.config.cross_sample
        if m is not None and m < n:
            rng = np.random.default_rng([shared["seed"], data.index, 0x6363])
            cross = blocks.cross_sampled(n, np.sort(rng.choice(n, size=m, replace=False)))
        else:
            cross = blocks.cross(0, n)
        easy = blocks.rowdot(blocks.img, blocks.txt)
        ct = t.from_numpy(np.ascontiguousarray(shared["class_text"][data.index : data.index + 1]))
        ct = ct.to(blocks.device, blocks.dtype)
        label = blocks.rowdot(blocks.txt, ct, t.zeros(n, dtype=t.int64, device=blocks.device))
        tm = t.from_numpy(shared["text_mean"]).to(blocks.device, blocks.dtype)[None, :]
        im = t.from_numpy(shared["image_mean"]).to(blocks.device, blocks.dtype)[None, :]
        zero = t.zeros(n, dtype=t.int64, device=blocks.device)
        centre = blocks.rowdot(blocks.img, tm, zero) + blocks.rowdot(blocks.txt, im, zero)
        unary = W_CROSS * cross + W_EASY * easy + W_LABEL * label - W_CENTRE * centre
        cols = {"score": unary, "easiness": easy, "cross": cross, "label_sim": label, "centre_sim": centre}
        if self.config.variant == "reference":
            cursor: Any = ClassReference(blocks, unary, cross, label)
        else:
            cursor = ClassGreedy(blocks, 0, n, unary, cross, label)
        return PartitionOutput(cols, cursor)

    def restore_cursor(self, data: Any, state: dict[str, np.ndarray], shared: dict[str, Any]) -> Any:
        blocks = self._blocks(data, shared)
        return CURSORS[self.config.variant].restore(blocks, state)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> MergeSequences:
        assert budget is not None
        # reference: a class's whole sequence in pass 2 (its refreshes are vectorised and run in parallel
        # tasks; its picks are far from proportional to class size, so short sequences would be extended
        # one class at a time in the merge). greedy: picks one at a time, so about twice the class's share
        return MergeSequences(budget, whole=self.config.variant == "reference")

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        out = {"partition": self.config.partition if not self.config.classes else "classes",
               "classes": int(shared["n_partitions"]), "variant": self.config.variant}
        if self.config.cross_sample is not None:
            out["cross_sample"] = self.config.cross_sample
        return out

    def partition_names(self, shared: dict[str, Any]) -> list[str] | None:
        return shared.get("names")


def _add_rows(acc: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``acc`` plus the ``mask``ed ``rows``, added one row after another in float64 (the order of one
    axis-0 reduction over all the rows, so a sum carried across slices equals the sum over the block)."""
    x = np.concatenate([acc[None], rows.astype(np.float64)])
    return np.add.reduce(x, axis=0, where=np.r_[True, mask][:, None])


def _add_class_rows(per: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
    """Add each row to its class's sum in ``per`` (float64, in place), one row after another in row
    order, so sums carried across slices equal those over the whole block."""
    np.add.at(per, labels, rows.astype(np.float64))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v
