"""Dynamic pruning methods: a registry of classes, each turning (state, losses) into one round's decision.

- ``scan``: SCAN (docs/bootstrap.md): warm-up plateau, then cycles of one preparation round (full data, candidates
  collected from its losses) and ``t_cos`` mutation rounds dropping a cosine-ramped random share of them.
- ``infobatch``: the InfoBatch baseline (Qin et al., ICLR 2024): each round, keep a random
  ``1 - prune_ratio`` share of the samples whose last loss is below the mean, weighted by
  ``1 / (1 - prune_ratio)``; full data from round ``floor(delta * total_rounds)`` on.
- ``none``: the full pool every round (control runs).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from curate.bootstrap import schedule as sch
from curate.bootstrap.candidates import _canonical_candidates, epoch_loss
from curate.bootstrap.data import Pool, RoundLosses
from curate.errors import UsageError

# Random streams: every draw uses default_rng([seed, round, stream]).
STREAM_CANDIDATES, STREAM_DRAW = 1, 2

CANDIDATE_KINDS = ("redundant", "ill_matched", "both")


def rng_for(seed: int, round_: int, stream: int) -> np.random.Generator:
    """The generator of one random stream of one round; identical on every rank and every rerun."""
    return np.random.default_rng([int(seed), int(round_), int(stream)])


@dataclass
class RoundContext:
    """What a method sees when deciding round ``round``."""

    round: int
    pool: Pool
    seed: int
    state: dict[str, Any]  # the method's state after the previous round ({} before round 0)
    losses: Callable[[int], RoundLosses]  # validated losses of an earlier round (raises if missing)
    read_table: Callable[..., pa.Table]  # (path under RUN/bootstrap/, columns=None): a table written earlier


@dataclass
class Decision:
    """One round's outcome over the pool rows."""

    phase: str
    keep: npt.NDArray[np.bool_]
    state: dict[str, Any]
    weight: npt.NDArray[np.float32] | None = None
    # Per-uid history: pool rows that were candidates this round, their kind, and whether pruned.
    rows: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))  # index into labels
    labels: tuple[str, ...] = CANDIDATE_KINDS
    pruned: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    header: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)  # relative path under RUN/bootstrap → table
    record_losses: bool = True  # whether the next round needs this round's losses

    def pruned_by_reason(self) -> dict[str, int]:
        counts = np.bincount(self.kind[self.pruned], minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts, strict=True) if c}

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self.kind, minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts, strict=True)}


class Method(ABC):
    """A pruning method; ``Params`` is a dataclass of its knobs (their defaults are the method's)."""

    name: ClassVar[str]
    Params: ClassVar[type]
    summary: ClassVar[str]

    def __init__(self, params: Any) -> None:
        self.p = params

    @abstractmethod
    def step(self, ctx: RoundContext) -> Decision:
        """Decide round ``ctx.round`` and return the method's new state."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UsageError(f"unknown bootstrap method {name!r}; choose one of {', '.join(list_methods())}")
    return METHODS[name]


def knob_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(method).Params)]


# --- SCAN ---------------------------------------------------------------------------------------
#: ``--rank-scope``: rank losses within each recorded batch (as the paper's code) or over the whole round.
RANK_SCOPES = ("batch", "global")
#: ``--prune-mode``: which candidates mutation rounds drop.
PRUNE_MODES = ("both", "redundant", "ill_matched")


@dataclass(frozen=True)
class ScanParams:
    rho_max: float = 0.3  # share of each batch marked ill-matched (highest loss)
    rho_min: float = 0.3  # share of each batch marked redundant (lowest loss)
    t_cos: int = 3  # mutation rounds per cycle (a cycle is t_cos + 1 rounds)
    prune_td: float = 0.3  # warm-up ends when the relative epoch-loss improvement drops below this
    warmup_rounds: int | None = None  # fix the warm-up length instead of the plateau rule
    rank_scope: str = "batch"  # rank losses within each batch (faithful) or over the whole round
    prune_mode: str = "both"  # which candidates mutation rounds drop: both, redundant, ill_matched

    def __post_init__(self) -> None:
        for k in ("rho_max", "rho_min"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise UsageError(f"--{k.replace('_', '-')} must be in [0, 1], got {getattr(self, k)}")
        if self.t_cos < 1:
            raise UsageError(f"--t-cos must be >= 1, got {self.t_cos}")
        if self.warmup_rounds is not None and self.warmup_rounds < 0:
            raise UsageError(f"--warmup-rounds must be >= 0, got {self.warmup_rounds}")
        if self.rank_scope not in RANK_SCOPES:
            raise UsageError(f"--rank-scope must be {' or '.join(RANK_SCOPES)}, got {self.rank_scope!r}")
        if self.prune_mode not in PRUNE_MODES:
            raise UsageError(f"--prune-mode must be one of {', '.join(PRUNE_MODES)}, got {self.prune_mode!r}")


def scan_candidates(losses: RoundLosses, p: ScanParams, seed: int, prep_round: int) -> pa.Table:
    """Score a preparation round: one row per recorded sample, in pool order.

    Columns: ``row`` (pool row), ``batch``, ``loss_rank`` (mean within-batch percentile,
    1 = highest loss), ``candidate`` (redundant | ill_matched | both | null).
    """
    n = len(losses)
    batch = losses.batch if p.rank_scope == "batch" else np.zeros(n, np.int64)
    canon, c = _canonical_candidates(  # results in canonical (batch, row) order: row i is losses row canon[i]
        batch,
        losses.loss_a,
        losses.loss_b,
        rho_max=p.rho_max,
        rho_min=p.rho_min,
        rng=rng_for(seed, prep_round, STREAM_CANDIDATES),
        tiebreak=losses.row,
        distinct=True,  # map_losses rejects duplicate uids
    )
    order, rows = _by_row(losses.row[canon])
    code = c.redundant.astype(np.int8)
    code += 2 * c.ill_matched.astype(np.int8)
    code -= 1  # -1 none, 0 redundant, 1 ill_matched, 2 both
    code = code[order]
    none = code < 0
    code[none] = 0
    kinds = pa.DictionaryArray.from_arrays(pa.array(code, mask=none), pa.array(CANDIDATE_KINDS))
    return pa.table(
        {
            "row": pa.array(rows),
            "batch": pa.array(losses.batch[canon[order]]),
            "loss_rank": pa.array(c.loss_rank[order]),
            "candidate": kinds,
        }
    )


def _by_row(rows: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(order, rows[order]) for distinct non-negative ``rows`` ascending (a numpy sort, no argsort)."""
    n = len(rows)
    ib = int(n - 1).bit_length() if n else 0
    if n and rows.min() >= 0 and int(rows.max()).bit_length() + ib <= 63:
        key = rows << ib
        key |= np.arange(n, dtype=np.int64)
        key.sort()
        order = key & ((1 << ib) - 1)
        key >>= ib
        return order, key
    order = np.argsort(rows, kind="stable")
    return order, rows[order]


def kind_codes(col: pa.ChunkedArray | pa.Array, labels: tuple[str, ...] = CANDIDATE_KINDS) -> np.ndarray:
    """A (dictionary or plain) string column as int8 codes into ``labels``; -1 for nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    values = arr.dictionary.to_pylist()  # few values
    idx = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    if values == list(labels[: len(values)]) and idx.dtype == np.int8:
        return idx  # the dictionary is a prefix of labels (as written by scan_candidates): codes as they are
    remap = np.array([labels.index(v) for v in values] + [-1], np.int8)
    return remap[idx.astype(np.int64)]


def candidates_path(prep_round: int) -> str:
    return f"candidates/round-{prep_round:04d}.parquet"


@register
class Scan(Method):
    name = "scan"
    Params = ScanParams
    summary = "SCAN: cosine-ramped random pruning of within-batch loss extremes (docs/bootstrap.md)"
    p: ScanParams

    def step(self, ctx: RoundContext) -> Decision:
        p, n_round = self.p, ctx.round
        st = dict(ctx.state) or {
            "warmup_end": p.warmup_rounds,
            "loss_pre": sch.LOSS_PRE_INIT,
            "warmup_trace": [],
            "candidates_round": None,
        }
        st["warmup_trace"] = list(st["warmup_trace"])
        if st["warmup_end"] is None and n_round > 0:  # plateau test on the last warm-up round's losses
            lo = ctx.losses(n_round - 1)
            cur = epoch_loss(lo.batch, lo.loss_a, lo.loss_b)
            hit, rel = sch.plateau(st["loss_pre"], cur, p.prune_td)
            st["warmup_trace"].append({"round": n_round - 1, "epoch_loss": cur, "rel_improvement": rel})
            if hit:
                st["warmup_end"] = n_round
            else:
                st["loss_pre"] = cur
        phase = sch.phase_of(n_round, st["warmup_end"], p.t_cos)
        n = len(ctx.pool)
        keep = np.ones(n, bool)
        dec = Decision(phase=phase, keep=keep, state=st)
        dec.record_losses = phase == sch.PREPARE or (phase == sch.WARMUP and p.warmup_rounds is None)
        rho = 0.0
        if phase == sch.MUTATE:
            e = n_round - st["warmup_end"]
            rho = sch.rho_cur(e, p.t_cos)
            if e % (p.t_cos + 1) == 1:  # first mutation round: score the preparation round before it
                prep = n_round - 1
                table = scan_candidates(ctx.losses(prep), p, ctx.seed, prep)
                dec.tables[candidates_path(prep)] = table
                st["candidates_round"] = prep
            else:
                table = ctx.read_table(candidates_path(st["candidates_round"]), ["row", "candidate"])
            code = kind_codes(table.column("candidate"))
            mask = code >= 0
            if p.prune_mode != "both":
                mask &= (code == CANDIDATE_KINDS.index(p.prune_mode)) | (code == CANDIDATE_KINDS.index("both"))
            cand_rows = table.column("row").to_numpy()[mask]  # ascending pool rows
            labels = code[mask]
            n_drop = int(len(cand_rows) * rho)
            pick = rng_for(ctx.seed, n_round, STREAM_DRAW).choice(len(cand_rows), n_drop, replace=False)
            pruned = np.zeros(len(cand_rows), bool)
            pruned[pick] = True
            keep[cand_rows[pruned]] = False
            dec.rows, dec.kind, dec.pruned = cand_rows, labels, pruned
            counts = dec.kind_counts()
            dec.header["candidates"] = {
                "from_round": st["candidates_round"],
                "total": len(cand_rows),
                "redundant": counts["redundant"] + counts["both"],
                "ill_matched": counts["ill_matched"] + counts["both"],
                "both": counts["both"],
            }
        dec.header["rho_cur"] = rho
        dec.header["warmup_end"] = st["warmup_end"]
        return dec


# --- InfoBatch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InfoBatchParams:
    prune_ratio: float = 0.5  # share of the below-mean ("well learned") samples dropped each round
    delta: float = 0.875  # prune in rounds < floor(delta * total_rounds) (annealing: full data after)
    total_rounds: int | None = None  # how many rounds the trainer runs (required)
    init_score: float = 3.0  # score of a sample never trained on (InfoBatch's code uses 3.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune_ratio < 1.0:
            raise UsageError(f"--prune-ratio must be in [0, 1), got {self.prune_ratio}")
        if not 0.0 <= self.delta <= 1.0:
            raise UsageError(f"--delta must be in [0, 1], got {self.delta}")
        if self.total_rounds is None or self.total_rounds < 1:
            raise UsageError("--method infobatch needs --total-rounds N (rounds the trainer will run), N >= 1")


@register
class InfoBatch(Method):
    name = "infobatch"
    Params = InfoBatchParams
    summary = "InfoBatch: drop a random share of below-mean-loss samples, reweight the rest"
    p: InfoBatchParams

    def step(self, ctx: RoundContext) -> Decision:
        p, n_round, n = self.p, ctx.round, len(ctx.pool)
        if ctx.state.get("scores_round") is None:
            scores = np.full(n, p.init_score, np.float64)
        else:
            scores = ctx.read_table(_scores_path(ctx.state["scores_round"]), ["score"]).column("score").to_numpy()
            scores = scores.astype(np.float64)
        if n_round > 0:
            lo = ctx.losses(n_round - 1)
            scores[lo.row] = lo.loss  # last seen loss; pruned samples keep their older score
        keep = np.ones(n, bool)
        weight = np.ones(n, np.float32)
        assert p.total_rounds is not None
        full_from = sch.infobatch_prune_rounds(p.delta, p.total_rounds)
        prune = n_round < full_from
        dec = Decision(phase=sch.PRUNE if prune else sch.FULL, keep=keep, state={"scores_round": n_round})
        dec.tables[_scores_path(n_round)] = pa.table({"score": scores.astype(np.float32)})  # one per pool row
        if prune:
            keep_ratio = 1.0 - p.prune_ratio
            well = np.flatnonzero(scores < scores.mean())
            n_keep = int(keep_ratio * len(well))
            kept = rng_for(ctx.seed, n_round, STREAM_DRAW).choice(len(well), n_keep, replace=False)
            pruned = np.ones(len(well), bool)
            pruned[kept] = False
            keep[well[pruned]] = False
            weight[well[~pruned]] = 1.0 / keep_ratio
            dec.rows, dec.pruned = well, pruned
            dec.kind, dec.labels = np.zeros(len(well), np.int8), ("well_learned",)
            dec.header["candidates"] = {"well_learned": len(well), "score_mean": float(scores.mean())}
        dec.weight = weight
        dec.header["keep_ratio"] = 1.0 - p.prune_ratio if prune else 1.0
        dec.header["full_from_round"] = full_from
        return dec


def _scores_path(round_: int) -> str:
    return f"infobatch/scores-round-{round_:04d}.parquet"


# --- none ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoParams:
    pass


@register
class NoPruning(Method):
    name = "none"
    Params = NoParams
    summary = "the full pool every round (control runs)"

    def step(self, ctx: RoundContext) -> Decision:
        dec = Decision(phase=sch.FULL, keep=np.ones(len(ctx.pool), bool), state={})
        dec.record_losses = False
        return dec
