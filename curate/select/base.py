"""The selector contract and registry.

A selection method is a :class:`Selector` subclass registered under its name with :func:`register`.
It works in two steps that stay separate:

* ``score(pool, ctx)`` adds per-sample columns (a score, a partition, ...) and says which samples
  can be ranked at all (the others are dropped with a reason);
* ``decide(pool, scores, budget, ctx)`` picks samples among the eligible ones and returns them in
  pick order.

:func:`curate.select.run.run_selection` drives both steps and writes the score table and manifest.
The CLI builds its ``--method`` choices from :func:`list_selectors`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from curate.engines.base import Engine
from curate.errors import UsageError
from curate.progress import NullProgress, Progress

BudgetMode = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class SelectorConfig:
    """Base class of the per-method option dataclasses (fields = the method's options)."""

    @classmethod
    def from_options(cls, method: str, options: Mapping[str, Any]) -> SelectorConfig:
        """Build the config from option values; unknown options are a usage error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k, v in options.items() if v is not None and k not in names)
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            raise UsageError(f"{flags} does not apply to --method {method}; see 'curate select --help'")
        cfg = cls(**{k: v for k, v in options.items() if v is not None and k in names})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`UsageError` on bad values."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Pool:
    """The samples of a run that a selector chooses from (one row per embedded sample).

    ``ids`` is a pyarrow table ``uid, shard, key, position``. Embedding matrices are float32,
    L2-normalised, with zero rows where the matching ``*_ok`` mask is False.
    """

    ids: Any
    image: np.ndarray | None = None
    text: np.ndarray | None = None
    image_ok: np.ndarray | None = None
    text_ok: np.ndarray | None = None
    text_present: np.ndarray | None = None  # False where the sample has no caption embedding (null)
    clip_score: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.num_rows)


@dataclass
class SelectContext:
    """Everything a selector may need besides the pool and its config."""

    run_root: Path
    seed: int = 0
    device: str = "cpu"
    progress: Progress = field(default_factory=NullProgress)
    class_text: np.ndarray | None = None  # precomputed class embeddings (clipcov; tests, benchmarks)
    class_names: list[str] | None = None
    engine: Engine | None = None  # where the heavy per-partition work runs (None: this process)


class Reasons:
    """Per-sample reason codes (one small int per sample) with their names; code 0 = ``kept``."""

    KEPT = "kept"

    def __init__(self, n: int, default: str = "budget") -> None:
        self.names: list[str] = [self.KEPT, default]
        self.codes = np.ones(n, dtype=np.int8)

    def code(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def set(self, mask: np.ndarray, name: str) -> None:
        """Give ``name`` to the samples in ``mask`` (a bool mask or an index array)."""
        self.codes[mask] = self.code(name)

    def counts(self) -> dict[str, int]:
        """Samples per reason, kept excluded, zero counts left out."""
        c = np.bincount(self.codes, minlength=len(self.names))
        return {n: int(c[i]) for i, n in enumerate(self.names) if i and c[i]}


@dataclass
class Scores:
    """The output of ``Selector.score``: per-sample columns plus eligibility."""

    columns: dict[str, np.ndarray]
    eligible: np.ndarray
    reasons: Reasons
    state: dict[str, Any] = field(default_factory=dict)  # handed to decide(), not written
    info: dict[str, Any] = field(default_factory=dict)  # goes to the manifest header


@dataclass
class Decision:
    """The output of ``Selector.decide``: selected pool indices in pick order, plus extras."""

    order: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    reason: str | None = "budget"  # reason of eligible samples not picked (None: decide set them)
    info: dict[str, Any] = field(default_factory=dict)
    parents: list[dict[str, Any]] = field(default_factory=list)


class Selector(ABC):
    """A selection method. Subclasses set the class attributes and implement score/decide."""

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[SelectorConfig]] = SelectorConfig
    needs: ClassVar[frozenset[str]] = frozenset()  # pool parts: "image", "text", "clip_score"
    budget_mode: ClassVar[BudgetMode] = "required"
    seeded: ClassVar[bool] = False  # whether ``--seed`` changes the result (see ``uses_seed``)

    def __init__(self, config: SelectorConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    def check_budget(self, budget: int | None) -> None:
        """Reject a missing or superfluous budget (override when an option can replace it)."""
        if self.budget_mode == "required" and budget is None:
            raise UsageError(f"--method {self.name} needs --fraction F or --count K")
        if self.budget_mode == "none" and budget is not None:
            raise UsageError(f"--method {self.name} takes no --fraction/--count")

    @abstractmethod
    def score(self, pool: Pool, ctx: SelectContext) -> Scores:
        """Per-sample columns and the eligible mask."""

    @abstractmethod
    def decide(self, pool: Pool, scores: Scores, budget: int | None, ctx: SelectContext) -> Decision:
        """Pick samples among ``scores.eligible``; return their pool indices in pick order."""

    def check_pool(self, pool_size: int) -> None:
        """Reject options that cannot work on a pool of this size (before the selection is named)."""
        return None

    def tag(self) -> str:
        """A short string naming the options that replace a budget (e.g. ``t0.3``), for default names."""
        return ""

    def option_tags(self) -> list[str]:
        """Short strings for the options, besides the budget and the seed, that change the result; options
        at their defaults are left out (e.g. ``["greedy", "km20"]``)."""
        return []

    def uses_seed(self) -> bool:
        """Whether the seed changes this selector's result with its options."""
        return self.seeded

    def default_name(self, fraction: float | None, count: int | None, seed: int = 0) -> str:
        """The method, its non-default options, a non-default seed where it matters, then the budget:
        ``clipcov-f0.1``, ``clipcov-greedy-km20-f0.3``, ``random-s1-n1000``, ``clip-score-t0.3``..."""
        parts = [self.name, *self.option_tags()]
        if seed != 0 and self.uses_seed():
            parts.append(f"s{seed}")
        if fraction is not None:
            parts.append(f"f{fraction:g}")
        elif count is not None:
            parts.append(f"n{count}")
        elif self.tag():
            parts.append(self.tag())
        return "-".join(parts)


SELECTORS: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: add a selector to the registry under ``cls.name``."""
    if cls.name in SELECTORS and SELECTORS[cls.name] is not cls:
        raise ValueError(f"selector {cls.name!r} is already registered")
    SELECTORS[cls.name] = cls
    return cls


def list_selectors() -> list[str]:
    """Registered method names, in registration order."""
    return list(SELECTORS)


def get_selector(name: str) -> type[Selector]:
    """The selector class registered as ``name``; a usage error listing the choices otherwise."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(SELECTORS)}") from None


def resolve_budget(fraction: float | None, count: int | None, pool_size: int) -> int | None:
    """The number of samples to keep: ``int(pool_size * fraction)`` or ``count`` (validated)."""
    if fraction is not None and count is not None:
        raise UsageError("give either --fraction or --count, not both")
    if fraction is not None:
        if not (0.0 < fraction <= 1.0) or not np.isfinite(fraction):
            raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
        k = int(pool_size * fraction)
        if k < 1:
            raise UsageError(f"--fraction {fraction} of {pool_size} samples keeps nothing; use a larger one")
        return k
    if count is not None:
        if count < 1:
            raise UsageError(f"--count must be a positive integer, got {count}")
        if count > pool_size:
            raise UsageError(f"--count {count} exceeds the pool of {pool_size} samples; use a smaller --count")
        return int(count)
    return None


def top_k(values: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` among ``eligible``, best first (ties: lower index first)."""
    idx = np.flatnonzero(eligible)
    order = np.argsort(-values[idx], kind="stable")
    return idx[order[:k]]
