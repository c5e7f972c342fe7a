"""Metadata balancing as in MetaCLIP (Xu et al., ICLR 2024, "Demystifying CLIP Data").

1. Every caption is matched against a list of metadata entries: entry ``e`` matches when ``" e "`` is a
   substring of the caption after the reference's spacing (each of ``, . ; : ? ! ``` gets a space on
   both sides, tabs and line breaks become spaces, and the text is wrapped in one space). Matching is
   case-sensitive. Counting the captions that match each entry gives ``c_e`` (pass 1).
2. With a cap ``t``, entry ``e`` is sampled with ``p_e = min(1, t / c_e)``; a sample matching entries
   ``M_i`` is kept when one of its per-entry trials succeeds: ``p_i = 1 - prod_{e in M_i} (1 - p_e)``.
   One seeded uniform ``u_i`` per row decides, ``u_i < p_i`` (the same distribution as the reference's
   one draw per matched entry). A sample matching no entry is dropped.
3. With a budget instead of ``--cap``, the samples are ranked by ``cap_needed``, the smallest cap at which
   ``u_i < p_i`` holds: keeping K of them is exactly MetaCLIP's selection at the cap that keeps K. The
   ``score`` column is ``-log10(cap_needed)`` (larger is kept first, as with every method).

The matcher is an Aho–Corasick automaton (pyahocorasick) built once per process and reused by every
block. docs/select.md has the decisions and their reasons.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

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
    register,
)
from curate.select.baselines import block_uniform

#: Characters the reference surrounds with spaces before matching, and those it turns into spaces.
WRAPPED = ",.;:?!`"
SPACED = "\t\n\r"
_SPACING = str.maketrans({**{c: f" {c} " for c in WRAPPED}, **{c: " " for c in SPACED}})


def spaced(text: str) -> str:
    """A caption as the reference matches it: punctuation wrapped in spaces, whitespace controls made
    spaces, the whole wrapped in one space (one pass; the same string as the reference's replaces)."""
    return f" {text.translate(_SPACING)} "


# --------------------------------------------------------------------------------------------------
# The metadata
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metadata:
    """A metadata file's entries (index = position in the file), with its digest."""

    path: str
    entries: list[str]
    sha256: str

    @property
    def duplicates(self) -> int:
        """Entries equal to an earlier one (they never match: the earlier index gets the caption)."""
        return len(self.entries) - len(set(self.entries))

    @property
    def unmatchable(self) -> int:
        """Entries that can never match: they hold a character the spacing rewrites in captions."""
        bad = set(WRAPPED + SPACED)
        return sum(1 for e in self.entries if not bad.isdisjoint(e))


def load_metadata(path: str | Path) -> Metadata:
    """Entries of a metadata file: a JSON list of strings (MetaCLIP's ``metadata.json``) when the name
    ends in ``.json``, else one entry per line (blank lines skipped). Entries are stripped of surrounding
    whitespace; an entry's index is its position among the entries."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"metadata file not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read metadata file {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"metadata file {p} is not UTF-8 (byte {exc.start})") from None
    if p.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise InputError(f"metadata file {p} is not valid JSON: {str(exc).splitlines()[0]}") from None
        if not isinstance(items, list):
            raise InputError(f"metadata file {p} must hold a JSON list of strings")
        entries = []
        for i, e in enumerate(items):
            if not isinstance(e, str) or not e.strip():
                raise InputError(f"metadata file {p}: item {i} is not a non-empty string")
            entries.append(e.strip())
    else:
        entries = [s for line in text.splitlines() if (s := line.strip())]
    if not entries:
        raise InputError(f"metadata file {p} holds no entries")
    return Metadata(str(p), entries, hashlib.sha256(raw).hexdigest())


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------
class EntryMatcher:
    """All entries that occur in a caption (overlapping occurrences included), by Aho–Corasick."""

    def __init__(self, entries: Sequence[str]) -> None:
        try:
            import ahocorasick
        except ImportError:  # pragma: no cover - a dependency of curate
            raise InputError("--method metaclip needs the pyahocorasick package (pip install pyahocorasick)") from None
        auto = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for i, e in enumerate(entries):
            key = f" {e} "
            if key not in auto:  # a repeated entry keeps its first index
                auto.add_word(key, i)
        auto.make_automaton()
        self._iter = auto.iter
        self._auto = auto
        self.n_entries = len(entries)

    def match_one(self, caption: str) -> list[int]:
        """Indices of the entries that ``caption`` matches, ascending."""
        return sorted({i for _, i in self._iter(spaced(caption))})

    def match(self, captions: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, ids)``: row ``r``'s matched entries are ``ids[offsets[r]:offsets[r+1]]``, ascending
        (a None caption matches nothing)."""
        it = self._iter
        offsets = np.zeros(len(captions) + 1, np.int64)
        ids: list[int] = []
        for r, c in enumerate(captions):
            if c:
                ids.extend(sorted({i for _, i in it(f" {c.translate(_SPACING)} ")}))
            offsets[r + 1] = len(ids)
        return offsets, np.asarray(ids, np.int32)


_MATCHER: tuple[str, EntryMatcher] | None = None


def matcher_for(digest: str, entries: Sequence[str]) -> EntryMatcher:
    """The process's matcher for the metadata with ``digest`` (built on first use, then reused)."""
    global _MATCHER
    if _MATCHER is None or _MATCHER[0] != digest:
        _MATCHER = None  # free the old automaton before building the new one
        _MATCHER = (digest, EntryMatcher(entries))
    return _MATCHER[1]


# --------------------------------------------------------------------------------------------------
# Balancing
# --------------------------------------------------------------------------------------------------
def _probabilities(c: np.ndarray, lens: np.ndarray, starts: np.ndarray, cap: float | np.ndarray) -> np.ndarray:
    """``p_i`` of rows that have a match: ``c`` = the counts of their entries in row order, ``lens`` and
    ``starts`` = each row's number of entries and first position in ``c``."""
    t = np.repeat(np.asarray(cap, np.float64), lens) if np.ndim(cap) else np.float64(cap)
    q = 1.0 - t / np.maximum(c, t)
    return 1.0 - np.multiply.reduceat(q, starts)


def row_probabilities(offsets: np.ndarray, ids: np.ndarray, counts: np.ndarray, cap: float | np.ndarray
                      ) -> np.ndarray:
    """``p_i = 1 - prod_{e in M_i} (1 - min(1, cap / c_e))`` per row (NaN for a row with no match).

    ``cap`` is one value or one per row. The product runs over the row's entries in ascending index
    order; the result never decreases when a cap grows (every step is a correctly rounded, monotone
    operation), which :func:`caps_needed` relies on.
    """
    lens = np.diff(offsets)
    out = np.full(len(lens), np.nan)
    has = lens > 0
    if not has.any():
        return out
    cap = np.asarray(cap, np.float64)[has] if np.ndim(cap) else cap
    out[has] = _probabilities(np.asarray(counts, np.float64)[ids], lens[has], offsets[:-1][has], cap)
    return out


NEWTON_STEPS = 12  # enough for the estimate to land within the bracket below in all but rare rows
BRACKET = 1e-12  # relative half-width of the bracket around the estimate


def caps_needed(offsets: np.ndarray, ids: np.ndarray, counts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the smallest float64 cap ``t`` with ``u_i < p_i(t)`` (NaN for a row with no match).

    ``p_i(0) = 0 <= u_i``, ``p_i(max c_e) = 1 > u_i``, and ``p_i`` never decreases in ``t``, so a
    bisection over the bit patterns of the floats in a bracket where ``p_i`` crosses ``u_i`` finds it
    exactly. The bracket comes from Newton's method on ``1 - prod(1 - t / c_e)`` (increasing and concave
    below the smallest count, so the steps approach the root from below), checked with the exact
    arithmetic of :func:`row_probabilities`; where the check fails the bracket is ``[0, max c_e]``.
    Hence, for any cap ``T``: ``u_i < p_i(T)`` exactly when ``cap_needed_i <= T``.
    """
    lens = np.diff(offsets)
    out = np.full(len(lens), np.nan)
    has = np.flatnonzero(lens > 0)
    if not len(has):
        return out
    lens_h = lens[has]
    starts = np.r_[0, np.cumsum(lens_h)][:-1]
    c = np.asarray(counts, np.float64)[ids]
    uu = np.asarray(u, np.float64)[has]
    cmin = np.minimum.reduceat(c, starts)
    t = np.zeros(len(has))
    with np.errstate(all="ignore"):
        for _ in range(NEWTON_STEPS):
            gap = c - np.repeat(t, lens_h)
            q = np.multiply.reduceat(gap / c, starts)  # prod(1 - t / c_e)
            slope = q * np.add.reduceat(1.0 / gap, starts)
            new = np.clip(t + (uu - (1.0 - q)) / slope, 0.0, cmin)
            t = np.where(np.isfinite(new), new, t)
    lo, hi = t * (1.0 - BRACKET), t * (1.0 + BRACKET)
    ok = (_probabilities(c, lens_h, starts, lo) <= uu) & (_probabilities(c, lens_h, starts, hi) > uu)
    lo = np.where(ok, lo, 0.0).view(np.uint64)
    hi = np.where(ok, hi, np.maximum.reduceat(c, starts)).view(np.uint64)
    rows = has  # the rows still open, and their entries
    while len(rows):
        open_ = hi - lo > np.uint64(1)
        if not open_.all():  # finished rows leave the loop
            out[rows[~open_]] = hi[~open_].view(np.float64)
            c = c[np.repeat(open_, lens_h)]
            rows, lens_h, uu, lo, hi = rows[open_], lens_h[open_], uu[open_], lo[open_], hi[open_]
            starts = np.r_[0, np.cumsum(lens_h)][:-1]
            if not len(rows):
                break
        mid = lo + (hi - lo) // np.uint64(2)
        up = _probabilities(c, lens_h, starts, mid.view(np.float64)) > uu
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return out


def rarest_entries(offsets: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row, its matched entry with the fewest matches in the pool (ties: the lower index); -1 for none."""
    lens = np.diff(offsets)
    out = np.full(len(lens), -1, np.int32)
    has = lens > 0
    if not has.any():
        return out
    row = np.repeat(np.arange(len(lens)), lens)
    order = np.lexsort((ids, np.asarray(counts)[ids], row))
    out[has] = ids[order][offsets[:-1][has]]
    return out


def _ragged(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets from 0, values)`` of a list column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    off = arr.offsets.to_numpy().astype(np.int64)
    return off - off[0], arr.flatten().to_numpy().astype(np.int32)


# --------------------------------------------------------------------------------------------------
# The selector
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetaClipConfig(SelectorConfig):
    """Options of ``--method metaclip``.

    Args:
        metadata: the metadata file: one entry per line, or a ``.json`` list of strings (MetaCLIP's own).
        cap: the per-entry cap ``t`` (MetaCLIP: 20,000 for its 400M set from 1.6B pairs): keep each
            matched sample with the reference's probability. Without it, ``--fraction``/``--count`` picks
            the cap that keeps that many.
    """

    metadata: str | None = None
    cap: float | None = None

    def validate(self) -> None:
        if self.metadata is None:
            raise UsageError("--method metaclip needs --metadata FILE (entries one per line, or a .json list)")
        if self.cap is not None and not (np.isfinite(self.cap) and self.cap > 0):
            raise UsageError(f"--cap must be a positive number, got {self.cap}")


@register
class MetaClipSelector(Selector):
    """MetaCLIP's balancing: captions matched to metadata entries, every entry's share capped at ``t``."""

    name = "metaclip"
    summary = "metadata balancing (MetaCLIP): captions matched to --metadata entries, each capped at --cap"
    config_class = MetaClipConfig
    needs = frozenset()  # captions come from the shards; no embedding is read
    reads_ids = True  # the shards and keys of the captions to read
    budget_mode = "optional"
    columns: ClassVar[dict[str, str]] = {"score": "f8", "cap_needed": "f8", "probability": "f8", "matches": "i4",
                                         "partition": "i4"}
    rescans = True
    config: MetaClipConfig

    def __init__(self, config: SelectorConfig | None = None) -> None:
        super().__init__(config)
        self._metadata: Metadata | None = None

    def metadata(self) -> Metadata:
        if self._metadata is None:
            assert self.config.metadata is not None
            self._metadata = load_metadata(self.config.metadata)
        return self._metadata

    def check_budget(self, budget: int | None) -> None:
        if (budget is None) == (self.config.cap is None):
            raise UsageError("--method metaclip needs exactly one of --fraction, --count or --cap")

    def tag(self) -> str:
        return f"cap{self.config.cap:g}" if self.config.cap is not None else ""

    def inputs(self) -> dict[str, Any]:
        md = self.metadata()
        return {"metadata_sha256": md.sha256, "metadata_entries": len(md.entries)}

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        from curate.select.captions import shard_sources

        md = self.metadata()
        names = [Path(f).stem for f in source.files]
        return {"entries": md.entries, "digest": md.sha256, "shards": shard_sources(ctx.run_root, names),
                "run_root": str(ctx.run_root), "seed": ctx.seed}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        from curate.select.captions import read_captions

        n = len(chunk)
        captions = read_captions(chunk.ids, shared["shards"], Path(shared["run_root"]))
        offsets, ids = matcher_for(shared["digest"], shared["entries"]).match(captions)
        lens = np.diff(offsets)
        has_caption = np.fromiter((c is not None for c in captions), bool, n)
        eligible = lens > 0
        reasons = Reasons(n, default="not_sampled")
        reasons.set(~has_caption, "no_caption")
        reasons.set(has_caption & ~eligible, "no_match")
        stash = {"matches": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32()))}
        return BlockScan({"matches": lens.astype(np.int32)}, eligible, reasons, tallies={"entries": ids},
                         stash=stash, sums={"captions": np.asarray([has_caption.sum()], np.float64)})

    def reduce(self, sums: dict[str, np.ndarray], sizes: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
        n_entries = len(shared["entries"])
        if float(sums.get("captions", np.zeros(1))[0]) == 0:
            raise InputError("no sample of the pool has a caption; metaclip matches captions against the metadata")
        tally = sums.get("entries", np.zeros(0, np.int64))
        entry_counts = np.zeros(n_entries, np.int64)
        entry_counts[: len(tally)] = tally
        if not entry_counts.any():
            raise InputError(f"no caption matches any of the {n_entries} metadata entries (matching is "
                             "case-sensitive, whole words and phrases); check the metadata file")
        return {"counts": entry_counts}

    def rescan(self, block: Any, start: int, shared: dict[str, Any]) -> dict[str, np.ndarray]:
        offsets, ids = _ragged(block.column("__stash:matches"))
        counts = shared["counts"]
        n = block.num_rows
        u = block_uniform(shared["seed"], start, n)
        need = caps_needed(offsets, ids, counts, u)
        cols = {"cap_needed": need, "score": -np.log10(need), "partition": rarest_entries(offsets, ids, counts),
                "probability": np.full(n, np.nan)}
        if self.config.cap is not None:
            p = row_probabilities(offsets, ids, counts, self.config.cap)
            cols["probability"] = p
            cols["keep"] = u < np.nan_to_num(p, nan=0.0)
        return cols

    def rule(self, budget: int | None, shared: dict[str, Any]) -> KeepWhere | RankBy:
        if self.config.cap is not None:
            return KeepWhere("keep")
        return RankBy("cap_needed", budget, reason="budget", info="effective_cap", ascending=True)

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        md = self.metadata()
        counts = shared.get("counts")
        out: dict[str, Any] = {"metadata_entries": len(md.entries), "metadata_duplicates": md.duplicates,
                               "metadata_unmatchable": md.unmatchable}
        if counts is not None:
            out["entries_matched"] = int((counts > 0).sum())
            if self.config.cap is not None:
                out["entries_over_cap"] = int((counts > self.config.cap).sum())
        return out
