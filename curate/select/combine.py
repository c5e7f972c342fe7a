"""Recipes: a weighted sum of per-sample score columns of earlier selections, then a budget or threshold.

``--method combine --of A B [--column A:gain] --weights 1,0.5 --normalize z|rank`` reads each input's
column from its score table (``score`` unless ``--column`` names another), normalises it over the pool
(``z``: minus the mean, over the standard deviation; ``rank``: the fraction of the pool's values at or
below it, in (0, 1]), and ranks the samples by ``Σ w_i · norm_i``. A sample without a value in some
input (ineligible there, or a NaN) gets no combined score and is dropped with a reason. The recipe is
recorded in the manifest header. Set algebra (``intersect`` ...) composes selections; this composes
their scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError, UsageError
from curate.select.base import (
    BlockScan,
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
from curate.select.setops import MAX_INPUTS, split_names

NORMALISE = ("z", "rank")


def _parse_weights(weights: str | tuple[float, ...] | None, n: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    items = weights.split(",") if isinstance(weights, str) else list(weights)
    try:
        out = tuple(float(w) for w in items)
    except ValueError:
        raise UsageError(f"bad --weights {weights!r}: give one number per --of selection, e.g. 1,0.5") from None
    if len(out) != n or not all(math.isfinite(w) for w in out):
        raise UsageError(f"--weights needs {n} finite numbers (one per --of selection), got {weights!r}")
    if not any(out):
        raise UsageError("--weights are all zero")
    return out


@dataclass(frozen=True)
class CombineConfig(SelectorConfig):
    """Options of ``--method combine``.

    Args:
        of: the selections whose score columns are combined (two or more, or one to re-rank it).
        columns: ``NAME:COLUMN`` entries choosing another column than ``score`` for a selection.
        weights: one weight per selection (default 1 each); a negative weight prefers low values.
        normalize: ``z`` (mean 0, standard deviation 1 over the pool) or ``rank`` (the fraction of the
            pool's values at or below the sample's).
        threshold: keep every sample whose combined score is at least this, instead of a budget.
    """

    of: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    weights: tuple[float, ...] | str | None = None
    normalize: str = "z"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.of, str) or self.of is not None:
            object.__setattr__(self, "of", split_names(self.of))
        if self.of is not None and self.weights is not None:
            object.__setattr__(self, "weights", _parse_weights(self.weights, len(self.of)))
        if isinstance(self.columns, str):
            object.__setattr__(self, "columns", tuple(c.strip() for c in self.columns.split(",") if c.strip()))

    def validate(self) -> None:
        if not self.of:
            raise UsageError("--method combine needs --of A [B ...] (selections whose scores to combine)")
        if len(self.of) > MAX_INPUTS:
            raise UsageError(f"combine takes at most {MAX_INPUTS} selections, got {len(self.of)}")
        if len(set(self.of)) != len(self.of):
            raise UsageError("--of names a selection twice")
        if self.normalize not in NORMALISE:
            raise UsageError(f"--normalize must be z or rank, got {self.normalize!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise UsageError(f"--threshold must be a finite number, got {self.threshold}")
        for entry in self.columns or ():
            name, _, col = entry.partition(":")
            if not col or name not in self.of:
                raise UsageError(f"bad --column {entry!r}: use NAME:COLUMN with NAME one of --of")

    def column_of(self, name: str) -> str:
        for entry in self.columns or ():
            n, _, col = entry.partition(":")
            if n == name:
                return col
        return "score"

    def recipe(self) -> str:
        assert self.of is not None
        w = self.weights if isinstance(self.weights, tuple) else (1.0,) * len(self.of)
        terms = " + ".join(f"{wi:g}·{self.normalize}({n}:{self.column_of(n)})" for wi, n in zip(w, self.of,
                                                                                            strict=True))
        return terms


@register
class Combine(ThresholdOrBudget):
    """A weighted sum of normalised score columns of earlier selections, ranked (or thresholded)."""

    name = "combine"
    summary = "weighted sum of earlier selections' score columns (z or rank normalised), then a budget"
    config_class = CombineConfig
    reads_ids = True  # the inputs' rows are checked against the pool's uids
    columns: ClassVar[dict[str, str]] = {"score": "f8"}
    config: CombineConfig


    def default_name(self, fraction: float | None, count: int | None, seed: int = 0) -> str:
        assert self.config.of is not None
        base = "combine-" + "-".join(self.config.of)
        return Selector.default_name(self, fraction, count, seed).replace("combine", base, 1)

    def _weights(self) -> tuple[float, ...]:
        assert self.config.of is not None
        w = self.config.weights
        return w if isinstance(w, tuple) else (1.0,) * len(self.config.of)

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        """Check the inputs and read each one's column once: mean and deviation (z), or sorted values (rank)."""
        assert self.config.of is not None
        tables, parents, norms = [], [], []
        for name in self.config.of:
            sel = input_selection(ctx.run_root, name, len(source))
            col = self.config.column_of(name)
            f = pq.ParquetFile(sel.scores)
            kind = f.schema_arrow.field(col).type if col in f.schema_arrow.names else None
            if kind is None or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                raise InputError(f"selection {name!r} has no numeric column {col!r}; choose one with --column")
            norms.append(_norm(f, col, self.config.normalize, name))
            parents.append(sel.parent(ctx.run_root, column=col))
            tables.append(str(sel.scores))
        return {"scores": tables, "parents": parents, "norms": norms}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        assert self.config.of is not None
        n = len(chunk)
        uids = chunk.ids.column("uid")
        total = np.zeros(n)
        reasons = Reasons(n)
        ok = np.ones(n, bool)
        for name, path, w, norm in zip(self.config.of, shared["scores"], self._weights(), shared["norms"],
                                       strict=True):
            t = input_rows(name, path, start, uids, [self.config.column_of(name)])
            v = t.column(1).to_numpy(zero_copy_only=False).astype(np.float64)
            has = np.isfinite(v)
            reasons.set(ok & ~has, f"no_score:{name}")
            ok &= has
            if self.config.normalize == "z":
                mu, sd = norm
                z = (v - mu) / sd
            else:
                z = np.searchsorted(norm, v, side="right") / len(norm)
            total += w * np.where(has, z, 0.0)
        return BlockScan({"score": np.where(ok, total, np.nan)}, ok, reasons)

    def rule(self, budget: int | None, shared: dict[str, Any]) -> RankBy:
        if self.config.threshold is not None:
            return RankBy("score", None, minimum=self.config.threshold, reason="below_threshold")
        return RankBy("score", budget, info="effective_threshold")

    def input_selections(self) -> list[tuple[str, str]]:
        return [(name, "") for name in self.config.of or ()]

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        return {"recipe": self.config.recipe(), "normalize": self.config.normalize}

    def parents(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return list(shared["parents"])


def _values(f: pq.ParquetFile, col: str) -> Any:
    """The finite float64 values of one column, a row group at a time."""
    for i in range(f.num_row_groups):
        v = f.read_row_group(i, columns=[col]).column(0).to_numpy(zero_copy_only=False).astype(np.float64)
        yield v[np.isfinite(v)]


def _norm(f: pq.ParquetFile, col: str, how: str, name: str) -> Any:
    """``z``: (mean, standard deviation), two streaming passes in float64; ``rank``: the sorted values
    (8 bytes per sample: the driver and the tasks hold them)."""
    if how == "rank":
        parts = list(_values(f, col))
        v = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
        if len(v) == 0:
            raise InputError(f"selection {name!r} has no values in column {col!r}")
        return v
    n, total = 0, 0.0
    for v in _values(f, col):
        n += len(v)
        total += float(v.sum())
    if n == 0:
        raise InputError(f"selection {name!r} has no values in column {col!r}")
    mu = total / n
    ss = sum(float(((v - mu) ** 2).sum()) for v in _values(f, col))
    sd = float(np.sqrt(ss / n))
    return mu, (sd if sd > 0 else 1.0)
