"""Set algebra over existing selections of the same run: intersect, union, difference.

Each operation takes two or more selections (``--of A B C`` or ``--of A,B,C``): the intersection and
the union of all of them, and the difference ``A − (B ∪ C ∪ ...)`` (what the first keeps and none of the
others does). The score table has one membership column per input: ``in_a``, ``in_b``, ``in_c``, ...

A selection's score table holds one row per pool row, in pool order, with its ``selected`` flag; set
operations read those flags block by block (the inputs must have been made on the same pool).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from curate.errors import InputError, UsageError
from curate.rundir import check_selection_name
from curate.select.base import BlockScan, KeepWhere, Pool, Reasons, SelectContext, Selector, SelectorConfig, register
from curate.select.manage import input_rows, input_selection

#: Most selections one operation combines (one ``in_<letter>`` column each).
MAX_INPUTS = 26
_NAME_LIMIT = 120  # longest selection name (see curate.rundir.check_selection_name)


def split_names(values: str | Iterable[str]) -> tuple[str, ...]:
    """Selection names from ``--of`` values: several values, comma-separated lists, or both."""
    items = [values] if isinstance(values, str) else list(values)
    names = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                raise UsageError(f"--of {item!r}: an empty selection name; give names like --of A B or --of A,B")
            names.append(part)
    return tuple(names)


def membership_column(i: int) -> str:
    """The score-table column that says which samples the ``i``-th input holds: ``in_a``, ``in_b``, ..."""
    return f"in_{chr(ord('a') + i)}"


@dataclass(frozen=True)
class SetOpConfig(SelectorConfig):
    """Options of the set operations.

    Args:
        of: the names of the selections (in ``RUN/selections/``) to combine, in order: two or more; a
            comma-separated string is split.
    """

    of: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.of is not None:
            object.__setattr__(self, "of", split_names(self.of))

    def validate(self) -> None:

        if self.of is None or len(self.of) < 2:
            raise UsageError("set operations need --of A B [C ...] (two or more existing selections)")
        if len(self.of) > MAX_INPUTS:
            raise UsageError(f"set operations combine at most {MAX_INPUTS} selections, got {len(self.of)}")
        twice = next((n for i, n in enumerate(self.of) if n in self.of[:i]), None)
        if twice is not None:
            raise UsageError(f"--of names selection {twice!r} twice")
        for name in self.of:
            check_selection_name(name)


class SetOperation(Selector):
    """Combine selections; ``combine(inside, reasons, names)`` says which samples stay."""

    config_class = SetOpConfig
    budget_mode = "none"
    reads_ids = True  # the inputs' rows are checked against the pool's uids
    config: SetOpConfig
    symbol: ClassVar[str]

    def default_name(self, fraction: float | None, count: int | None, seed: int = 0) -> str:
        """``A-intersect-B``, ``A-union-B-union-C``, ``A-difference-B-difference-C`` (= A − B − C)."""
        assert self.config.of is not None
        name = f"-{self.name}-".join(self.config.of)
        if len(name) > _NAME_LIMIT:
            raise UsageError(f"the default name {name[:40]}... is longer than {_NAME_LIMIT} characters; pass --name")
        return name

    columns: ClassVar[dict[str, str]] = {"in_a": "bool", "in_b": "bool"}  # one per input: set in __init__

    def __init__(self, config: SelectorConfig | None = None) -> None:
        super().__init__(config)
        if self.config.of is not None:
            self.columns = {membership_column(i): "bool" for i in range(len(self.config.of))}  # type: ignore[misc]

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        assert self.config.of is not None
        parents, tables = [], []
        for name in self.config.of:
            sel = input_selection(ctx.run_root, name, len(source))
            parents.append(sel.parent(ctx.run_root, kept=(sel.header.get("counts") or {}).get("kept")))
            tables.append(str(sel.scores))
        return {"parents": parents, "scores": tables}

    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        assert self.config.of is not None
        n = len(chunk)
        uids = chunk.ids.column("uid")
        inside = []
        for name, path in zip(self.config.of, shared["scores"], strict=True):
            t = input_rows(name, path, start, uids, ["selected"])
            inside.append(t.column("selected").to_numpy(zero_copy_only=False))
        reasons = Reasons(n)
        keep = self.combine(inside, reasons, self.config.of)
        columns = {membership_column(i): member for i, member in enumerate(inside)}
        return BlockScan({**columns, "keep": keep}, np.ones(n, bool), reasons)

    @abstractmethod
    def combine(self, inside: list[np.ndarray], reasons: Reasons, names: tuple[str, ...]) -> np.ndarray:
        """Which samples stay, from each input's membership (``inside``); pruned ones get their reason."""

    def rule(self, budget: int | None, shared: dict[str, Any]) -> KeepWhere:
        return KeepWhere("keep")

    def input_selections(self) -> list[tuple[str, str]]:
        return [(name, "") for name in self.config.of or ()]

    def check_result(self, kept: int) -> None:
        assert self.config.of is not None
        if kept == 0:
            raise InputError(f"{f' {self.symbol} '.join(self.config.of)} is empty; nothing to write")

    def parents(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return list(shared["parents"])


@register
class Intersect(SetOperation):
    """Samples kept by every selection."""

    name = "intersect"
    summary = "samples in every selection (--of A B [C ...])"
    symbol = "∩"

    def combine(self, inside: list[np.ndarray], reasons: Reasons, names: tuple[str, ...]) -> np.ndarray:
        keep = np.ones_like(inside[0])
        for name, member in zip(names, inside, strict=True):  # reason: the first selection without it
            reasons.set(keep & ~member, f"not_in:{name}")
            keep &= member
        return keep


@register
class Union(SetOperation):
    """Samples kept by any selection."""

    name = "union"
    summary = "samples in any of the selections (--of A B [C ...])"
    symbol = "∪"

    def combine(self, inside: list[np.ndarray], reasons: Reasons, names: tuple[str, ...]) -> np.ndarray:
        keep = np.logical_or.reduce(inside)
        reasons.set(~keep, "in_neither")  # in none of them (the name is kept from the two-selection days)
        return keep


@register
class Difference(SetOperation):
    """Samples kept by the first selection and by none of the others."""

    name = "difference"
    summary = "samples in the first selection and in none of the others: A − (B ∪ C ...) (--of A B [C ...])"
    symbol = "−"

    def combine(self, inside: list[np.ndarray], reasons: Reasons, names: tuple[str, ...]) -> np.ndarray:
        keep = inside[0].copy()
        reasons.set(~keep, f"not_in:{names[0]}")
        for name, member in zip(names[1:], inside[1:], strict=True):  # reason: the first other that has it
            reasons.set(keep & member, f"in:{name}")
            keep &= ~member
        return keep
