"""Set algebra over existing selections of the same run: intersect, union, difference.

A selection's score table holds one row per pool row, in pool order, with its ``selected`` flag; set
operations read those flags block by block (the parents must have been made on the same pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq

from curate.errors import InputError, UsageError
from curate.io.manifest import read_manifest_header
from curate.select.base import BlockScan, KeepWhere, Pool, Reasons, SelectContext, Selector, SelectorConfig, register


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
    """Combine two selections; ``combine(in_a, in_b, reasons)`` says which samples stay."""

    config_class = SetOpConfig
    budget_mode = "none"
    columns: ClassVar[dict[str, str]] = {"in_a": "bool", "in_b": "bool"}
    config: SetOpConfig
    symbol: ClassVar[str]

    def default_name(self, fraction: float | None, count: int | None) -> str:
        assert self.config.of is not None
        return f"{self.config.of[0]}-{self.name}-{self.config.of[1]}"

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        assert self.config.of is not None
        parents, tables = [], []
        for name in self.config.of:
            folder = Path(ctx.run_root) / "selections" / name
            path, scores = folder / "manifest.parquet", folder / "scores.parquet"
            if not path.exists() or not scores.exists():
                raise InputError(
                    f"no selection {name!r} in {ctx.run_root}/selections; run 'curate select --name {name}'")
            header = read_manifest_header(path)
            rows = pq.read_metadata(scores).num_rows
            if rows != len(source):
                raise InputError(f"selection {name!r} was made on a pool of {rows} samples, the run has "
                                 f"{len(source)} now; re-run it")
            counts = header.get("counts", {})
            parents.append({"name": name, "path": str(path.relative_to(ctx.run_root)), "method": header.get("method"),
                            "content_hash": header.get("content_hash"), "kept": counts.get("kept")})
            tables.append(str(scores))
        return {"parents": parents, "scores": tables}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        from curate.select.source import read_rows

        assert self.config.of is not None
        n = len(chunk)
        inside = []
        uids = chunk.ids.column("uid")
        for name, path in zip(self.config.of, shared["scores"], strict=True):
            t = read_rows(path, start, start + n, ["uid", "selected"])
            if not t.column("uid").equals(uids):
                raise InputError(f"selection {name!r} holds uids that are not in this run's embeddings; re-run it")
            inside.append(t.column("selected").to_numpy(zero_copy_only=False))
        reasons = Reasons(n)
        keep = self.combine(inside[0], inside[1], reasons, *self.config.of)
        return BlockScan({"in_a": inside[0], "in_b": inside[1], "keep": keep}, np.ones(n, bool), reasons)

    def combine(self, in_a: np.ndarray, in_b: np.ndarray, reasons: Reasons, a: str, b: str) -> np.ndarray:
        raise NotImplementedError

    def rule(self, budget: int | None, shared: dict[str, Any]) -> KeepWhere:
        return KeepWhere("keep")

    def check_result(self, kept: int) -> None:
        if kept == 0:
            assert self.config.of is not None
            a, b = self.config.of
            raise InputError(f"{a} {self.symbol} {b} is empty; nothing to write")

    def parents(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return list(shared["parents"])


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
