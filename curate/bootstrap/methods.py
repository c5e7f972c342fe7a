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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from curate.bootstrap import schedule as sch
from curate.bootstrap.candidates import by_row, canonical_candidates
from curate.bootstrap.data import RoundLosses
from curate.bootstrap.store import PoolStore
from curate.bootstrap.tasks import CandidateRanges, LossTable
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
    pool: PoolStore  # len(pool): the pool size; rows are never needed by the methods
    seed: int
    state: dict[str, Any]  # the method's state after the previous round ({} before round 0)
    losses: Callable[[int], LossTable]  # the losses of an earlier round (raises if missing; checked when read)
    read_table: Callable[..., pa.Table]  # (path under RUN/bootstrap/, columns=None): a table written earlier
    iter_table: Callable[[str, list[str]], Iterator[pa.Table]]  # the same, a row group at a time
    rows: int = 1 << 21  # pool rows per part of a decision


@dataclass
class Part:
    """The decision over pool rows ``[start, stop)``, and the method's table rows that belong to them."""

    start: int
    stop: int
    keep: npt.NDArray[np.bool_] | None = None  # per row of the range; None: every row kept
    weight: npt.NDArray[np.float32] | None = None  # per row of the range; None: all 1
    # Per-uid history: pool rows that were candidates this round (ascending), their kind, whether pruned.
    rows: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))  # index into labels
    pruned: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    # relative path → this part's rows of that table (or a function that builds them, called by the writer)
    tables: dict[str, pa.Table | Callable[[], pa.Table]] = field(default_factory=dict)


@dataclass
class Decision:
    """One round's outcome: its phase and state, and the decision over the pool a range of rows at a time.

    ``parts`` yields :class:`Part` in pool order covering every row (empty: every row kept, no history); it
    is consumed once, while the round's files are written. ``tables`` names the tables the parts fill
    (relative path under RUN/bootstrap → schema).
    """

    phase: str
    state: dict[str, Any]
    labels: tuple[str, ...] = CANDIDATE_KINDS
    header: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pa.Schema] = field(default_factory=dict)
    record_losses: bool = True  # whether the next round needs this round's losses
    parts: Iterable[Part] = ()


def row_ranges(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of the consecutive ranges of ``rows`` pool rows."""
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _pruned_in(picks: npt.NDArray[np.int64], offset: int, count: int) -> npt.NDArray[np.bool_]:
    """Which of the ``count`` entries from position ``offset`` of a list the sorted ``picks`` name."""
    lo, hi = np.searchsorted(picks, [offset, offset + count])
    out = np.zeros(count, bool)
    out[picks[lo:hi] - offset] = True
    return out


class Method(ABC):
    """A pruning method; ``config_class`` is the dataclass of its knobs (their defaults are the method's)."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    summary: ClassVar[str]

    def __init__(self, params: Any) -> None:
        self.p = params

    @abstractmethod
    def step(self, ctx: RoundContext) -> Decision:
        """Decide round ``ctx.round`` and return the method's new state."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a pruning method to the registry under ``cls.name`` (a name is registered once)."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"bootstrap method {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UsageError(f"unknown bootstrap method {name!r}; choose one of {', '.join(list_methods())}")
    return METHODS[name]


def knob_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(method).config_class)]


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
    canon, c = canonical_candidates(  # results in canonical (batch, row) order: row i is losses row canon[i]
        batch,
        losses.loss_a,
        losses.loss_b,
        rho_max=p.rho_max,
        rho_min=p.rho_min,
        rng=rng_for(seed, prep_round, STREAM_CANDIDATES),
        tiebreak=losses.row,
        distinct=True,  # map_losses rejects duplicate uids
    )
    order, rows = by_row(losses.row[canon])
    code = c.redundant.astype(np.int8)
    code += 2 * c.ill_matched.astype(np.int8)
    code -= 1  # -1 none, 0 redundant, 1 ill_matched, 2 both
    return candidates_table(rows, losses.batch[canon[order]], c.loss_rank[order], code[order])


def candidates_table(rows: np.ndarray, batch: np.ndarray, loss_rank: np.ndarray, code: np.ndarray) -> pa.Table:
    """Rows of ``candidates/round-NNNN.parquet``; ``code``: -1 none, else an index into CANDIDATE_KINDS."""
    code = np.array(code, np.int8)
    none = code < 0
    code[none] = 0
    kinds = pa.DictionaryArray.from_arrays(pa.array(code, mask=none), pa.array(CANDIDATE_KINDS))
    return pa.table({"row": pa.array(rows), "batch": pa.array(batch), "loss_rank": pa.array(loss_rank),
                     "candidate": kinds})


CANDIDATES_SCHEMA = pa.schema([
    pa.field("row", pa.int64()), pa.field("batch", pa.int64()), pa.field("loss_rank", pa.float32()),
    pa.field("candidate", pa.dictionary(pa.int8(), pa.string())),
])
SCORES_SCHEMA = pa.schema([pa.field("score", pa.float32())])


def kind_codes(col: pa.ChunkedArray | pa.Array, labels: tuple[str, ...] = CANDIDATE_KINDS) -> np.ndarray:
    """A (dictionary or plain) string column as int8 codes into ``labels``; -1 for nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    values = arr.dictionary.to_pylist()  # few values
    idx = _with_nulls(arr.indices)
    if values == list(labels[: len(values)]) and idx.dtype == np.int8:
        return idx  # the dictionary is a prefix of labels (as written by scan_candidates): codes as they are
    remap = np.array([labels.index(v) for v in values] + [-1], np.int8)
    return remap[idx.astype(np.int64)]


def _with_nulls(ind: pa.Array) -> np.ndarray:
    """Integer indices as numpy, -1 where null (from the buffers: no per-value conversion)."""
    n = len(ind)
    if not pa.types.is_integer(ind.type) or ind.offset:
        return ind.fill_null(-1).to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(ind.type) else 'u'}{ind.type.bit_width // 8}")
    vals = np.frombuffer(ind.buffers()[1], dtype, count=n).copy()
    if ind.null_count:
        valid = np.unpackbits(np.frombuffer(ind.buffers()[0], np.uint8), count=n, bitorder="little").view(bool)
        vals[~valid] = -1
    return vals


def candidates_path(prep_round: int) -> str:
    return f"candidates/round-{prep_round:04d}.parquet"


@register
class Scan(Method):
    name = "scan"
    config_class = ScanParams
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
            cur = ctx.losses(n_round - 1).epoch_loss()
            hit, rel = sch.plateau(st["loss_pre"], cur, p.prune_td)
            st["warmup_trace"].append({"round": n_round - 1, "epoch_loss": cur, "rel_improvement": rel})
            if hit:
                st["warmup_end"] = n_round
            else:
                st["loss_pre"] = cur
        phase = sch.phase_of(n_round, st["warmup_end"], p.t_cos)
        dec = Decision(phase=phase, state=st)
        dec.record_losses = phase == sch.PREPARE or (phase == sch.WARMUP and p.warmup_rounds is None)
        rho = 0.0
        if phase == sch.MUTATE:
            e = n_round - st["warmup_end"]
            rho = sch.rho_cur(e, p.t_cos)
            prune_code = None if p.prune_mode == "both" else CANDIDATE_KINDS.index(p.prune_mode)
            if e % (p.t_cos + 1) == 1:  # first mutation round: score the preparation round before it
                prep = n_round - 1
                src = ctx.losses(prep).candidates(
                    rho_max=p.rho_max, rho_min=p.rho_min, scope_global=p.rank_scope == "global", seed=ctx.seed,
                    rng_round=prep, stream=STREAM_CANDIDATES, prune_code=prune_code)
                rel = candidates_path(prep)
                dec.tables[rel] = CANDIDATES_SCHEMA
                st["candidates_round"] = prep
                kinds = src.kind_counts
                ranges = _scored_ranges(src, rel, prune_code)
            else:
                rel = candidates_path(st["candidates_round"])
                kinds = _count_in_force(ctx.iter_table(rel, ["candidate"]), prune_code)
                ranges = _file_ranges(ctx.iter_table(rel, ["row", "candidate"]), len(ctx.pool), ctx.rows, prune_code)
            total = int(kinds.sum())
            n_drop = int(total * rho)
            picks = rng_for(ctx.seed, n_round, STREAM_DRAW).choice(total, n_drop, replace=False)
            picks.sort()  # in place: the draw holds 8 bytes per candidate and per pick, no more
            dec.parts = _mutation_parts(len(ctx.pool), ctx.rows, ranges, picks)
            dec.header["candidates"] = {
                "from_round": st["candidates_round"],
                "total": total,
                "redundant": int(kinds[0] + kinds[2]),
                "ill_matched": int(kinds[1] + kinds[2]),
                "both": int(kinds[2]),
            }
        dec.header["rho_cur"] = rho
        dec.header["warmup_end"] = st["warmup_end"]
        return dec


def _in_force(code: np.ndarray, prune_code: int | None) -> npt.NDArray[np.bool_]:
    """Candidates that mutation rounds may drop: every kind, or ``prune_code`` and ``both``."""
    mask = code >= 0
    if prune_code is not None:
        mask &= (code == prune_code) | (code == CANDIDATE_KINDS.index("both"))
    return mask


Ranges = Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int8], dict[str, pa.Table]]]


def _scored_ranges(src: CandidateRanges, rel: str, prune_code: int | None) -> Ranges:
    """(candidate rows in force, their kinds, the candidates table's rows) per pool row range, from the tasks.

    The next range is read by a thread while this one is used; its table is built by the writer (a callable).
    """
    with ThreadPoolExecutor(max_workers=1) as ex:
        ahead = ex.submit(src.range, 0) if src.spec.n_ranges else None
        for d in range(src.spec.n_ranges):
            assert ahead is not None
            t = ahead.result()
            ahead = ex.submit(src.range, d + 1) if d + 1 < src.spec.n_ranges else None
            rows, code = t["row"], t["code"]
            mask = _in_force(code, prune_code)
            yield rows[mask], code[mask], {rel: partial(candidates_table, rows, t["batch"], t["loss_rank"], code)}


def _count_in_force(tables: Iterator[pa.Table], prune_code: int | None) -> npt.NDArray[np.int64]:
    """Candidates in force of each kind in a candidates file."""
    counts = np.zeros(len(CANDIDATE_KINDS), np.int64)
    for t in tables:
        code = kind_codes(t.column("candidate"))
        counts += np.bincount(code[_in_force(code, prune_code)], minlength=len(CANDIDATE_KINDS))
    return counts


def _file_ranges(tables: Iterator[pa.Table], n: int, rows: int, prune_code: int | None) -> Ranges:
    """(candidate rows in force, their kinds, no table rows) per pool row range, from a candidates file."""
    held_rows: list[np.ndarray] = []
    held_code: list[np.ndarray] = []
    d = 0

    def emit() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8], dict[str, pa.Table]]:
        r = np.concatenate(held_rows) if held_rows else np.zeros(0, np.int64)
        c = np.concatenate(held_code) if held_code else np.zeros(0, np.int8)
        held_rows.clear()
        held_code.clear()
        return r, c, {}

    for t in tables:
        r = t.column("row").to_numpy()
        code = kind_codes(t.column("candidate"))
        mask = _in_force(code, prune_code)
        r, code = r[mask], code[mask]
        dest = r // rows
        cuts = np.flatnonzero(np.diff(dest)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(r)], strict=True):
            if a == b:
                continue
            while d < dest[a]:
                yield emit()
                d += 1
            held_rows.append(r[a:b])
            held_code.append(code[a:b])
    while d < -(-n // rows):
        yield emit()
        d += 1


def _mutation_parts(n: int, rows: int, ranges: Ranges, picks: npt.NDArray[np.int64]) -> Iterator[Part]:
    """Parts of a mutation round: the candidates in force, the ones ``picks`` names (positions in pool order) pruned."""
    offset = 0
    for (start, stop), (cand, code, tables) in zip(row_ranges(n, rows), ranges, strict=True):
        pruned = _pruned_in(picks, offset, len(cand))
        offset += len(cand)
        keep = None
        if pruned.any():
            keep = np.ones(stop - start, bool)
            keep[cand[pruned] - start] = False
        yield Part(start, stop, keep, None, cand, code, pruned, tables)


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
    config_class = InfoBatchParams
    summary = "InfoBatch: drop a random share of below-mean-loss samples, reweight the rest"
    p: InfoBatchParams

    def step(self, ctx: RoundContext) -> Decision:
        p, n_round, n = self.p, ctx.round, len(ctx.pool)
        if ctx.state.get("scores_round") is None:
            scores = np.full(n, p.init_score, np.float64)
        else:
            scores = np.empty(n, np.float64)
            at = 0
            for t in ctx.iter_table(_scores_path(ctx.state["scores_round"]), ["score"]):
                col = t.column("score").to_numpy()
                scores[at : at + len(col)] = col
                at += len(col)
        if n_round > 0:
            for rows, loss in ctx.losses(n_round - 1).losses_by_range():
                scores[rows] = loss  # last seen loss; pruned samples keep their older score
        assert p.total_rounds is not None
        full_from = sch.infobatch_prune_rounds(p.delta, p.total_rounds)
        prune = n_round < full_from
        dec = Decision(phase=sch.PRUNE if prune else sch.FULL, state={"scores_round": n_round},
                       labels=("well_learned",))
        rel = _scores_path(n_round)
        dec.tables[rel] = SCORES_SCHEMA  # one row per pool row
        keep_ratio = 1.0 - p.prune_ratio
        mean, kept = 0.0, np.zeros(0, np.int64)
        if prune:
            mean = scores.mean()
            n_well = int(np.count_nonzero(scores < mean))
            n_keep = int(keep_ratio * n_well)
            kept = rng_for(ctx.seed, n_round, STREAM_DRAW).choice(n_well, n_keep, replace=False)
            kept.sort()
            dec.header["candidates"] = {"well_learned": n_well, "score_mean": float(mean)}
        dec.header["keep_ratio"] = keep_ratio if prune else 1.0
        dec.header["full_from_round"] = full_from
        dec.parts = _infobatch_parts(scores, ctx.rows, rel, prune, mean, kept, keep_ratio)
        return dec


def _infobatch_parts(scores: np.ndarray, rows: int, rel: str, prune: bool, mean: float,
                     kept: npt.NDArray[np.int64], keep_ratio: float) -> Iterator[Part]:
    """InfoBatch's parts: each range's well-learned rows (score below the mean), the ones not in ``kept``
    (positions in pool order) pruned, the others weighted ``1 / keep_ratio``; the range's scores."""
    offset = 0
    for start, stop in row_ranges(len(scores), rows):
        s = scores[start:stop]
        part = Part(start, stop, tables={rel: pa.table({"score": s.astype(np.float32)})})
        if prune:
            well = np.flatnonzero(s < mean)
            pruned = ~_pruned_in(kept, offset, len(well))
            offset += len(well)
            part.keep = np.ones(stop - start, bool)
            part.keep[well[pruned]] = False
            part.weight = np.ones(stop - start, np.float32)
            part.weight[well[~pruned]] = 1.0 / keep_ratio
            part.rows, part.kind, part.pruned = well + start, np.zeros(len(well), np.int8), pruned
        yield part


def _scores_path(round_: int) -> str:
    return f"infobatch/scores-round-{round_:04d}.parquet"


# --- none ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoParams:
    pass


@register
class NoPruning(Method):
    name = "none"
    config_class = NoParams
    summary = "the full pool every round (control runs)"

    def step(self, ctx: RoundContext) -> Decision:
        return Decision(phase=sch.FULL, state={}, record_losses=False)
