"""Set algebra over existing selections of the same run: intersect, union, difference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow.compute as pc

from curate.errors import InputError, UsageError
from curate.io.manifest import read_manifest
from curate.select.base import Decision, Pool, Reasons, Scores, SelectContext, Selector, SelectorConfig, register


@dataclass(frozen=True)
class SetOpConfig(SelectorConfig):
    """Options of the set operations.

    Args:
        of: the names of the two selections (in ``RUN/selections/``) to combine: A then B.
    """

    of: tuple[str, str] | None = None

    def validate(self) -> None:
        if self.of is None or len(self.of) != 2 or not all(self.of):
            raise UsageError("set operations need --of NAME_A NAME_B (two existing selections)")


class SetOperation(Selector):
    """Combine two selections' manifests; ``combine(in_a, in_b)`` says which samples stay."""

    config_class = SetOpConfig
    budget_mode = "none"
    config: SetOpConfig
    symbol: ClassVar[str]

    def default_name(self, fraction: float | None, count: int | None, seed: int = 0) -> str:
        assert self.config.of is not None
        return f"{self.config.of[0]}-{self.name}-{self.config.of[1]}"

    def _member(self, pool: Pool, ctx: SelectContext, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        path = ctx.run_root / "selections" / name / "manifest.parquet"
        if not path.exists():
            raise InputError(f"no selection {name!r} in {ctx.run_root}/selections; run 'curate select --name {name}'")
        man = read_manifest(path)
        uids = pool.ids.column("uid")
        inside = pc.is_in(uids, value_set=man.table.column("uid").combine_chunks()).to_numpy(zero_copy_only=False)
        if int(inside.sum()) != len(man):
            raise InputError(f"selection {name!r} holds uids that are not in this run's embeddings; re-run it")
        parent = {
            "name": name,
            "path": str(path.relative_to(ctx.run_root)),
            "method": man.header.get("method"),
            "content_hash": man.header.get("content_hash"),
            "kept": len(man),
        }
        return inside, parent

    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        assert self.config.of is not None
        a, b = self.config.of
        in_a, pa_ = self._member(pool, ctx, a)
        in_b, pb = self._member(pool, ctx, b)
        n = len(pool)
        return Scores({"in_a": in_a, "in_b": in_b}, np.ones(n, bool), Reasons(n), state={"parents": [pa_, pb]})

    def combine(self, in_a: np.ndarray, in_b: np.ndarray, reasons: Reasons, a: str, b: str) -> np.ndarray:
        raise NotImplementedError

    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        assert self.config.of is not None
        a, b = self.config.of
        keep = self.combine(scores.columns["in_a"], scores.columns["in_b"], scores.reasons, a, b)
        if not keep.any():
            raise InputError(f"{a} {self.symbol} {b} is empty; nothing to write")
        return Decision(order=np.flatnonzero(keep), reason=None, parents=scores.state["parents"])


@register
class Intersect(SetOperation):
    """Samples kept by both A and B."""

    name = "intersect"
    summary = "samples in both selections (--of A B)"
    symbol = "∩"

    def combine(self, in_a: np.ndarray, in_b: np.ndarray, reasons: Reasons, a: str, b: str) -> np.ndarray:
        reasons.set(~in_a, f"not_in:{a}")
        reasons.set(in_a & ~in_b, f"not_in:{b}")
        return in_a & in_b


@register
class Union(SetOperation):
    """Samples kept by A or B."""

    name = "union"
    summary = "samples in either selection (--of A B)"
    symbol = "∪"

    def combine(self, in_a: np.ndarray, in_b: np.ndarray, reasons: Reasons, a: str, b: str) -> np.ndarray:
        reasons.set(~in_a & ~in_b, "in_neither")
        return in_a | in_b


@register
class Difference(SetOperation):
    """Samples kept by A and not by B."""

    name = "difference"
    summary = "samples in the first selection but not the second (--of A B)"
    symbol = "−"

    def combine(self, in_a: np.ndarray, in_b: np.ndarray, reasons: Reasons, a: str, b: str) -> np.ndarray:
        reasons.set(~in_a, f"not_in:{a}")
        reasons.set(in_a & in_b, f"in:{b}")
        return in_a & ~in_b
