"""The selector contract and registry.

A selection method is a :class:`Selector` subclass registered under its name with :func:`register`.
It works in two steps that stay separate:

* ``score(pool, ctx)`` adds per-sample columns (a score, a partition, ...) and says which samples
  can be ranked at all (the others are dropped with a reason);
* ``decide(pool, scores, budget, ctx)`` picks samples among the eligible ones and returns them in
  pick order.

:func:`curate.select.driver.run_selection` drives both steps and writes the score table and manifest.
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
DEFAULT_MEMORY = 1 << 30  # bytes per process besides its partition's embeddings


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
    raw: dict[str, Any] = field(default_factory=dict)  # the float16 Arrow columns the matrices came from
    n_rows: int | None = None  # the row count when ``ids`` were not read (None: ``ids`` has them)

    def __len__(self) -> int:
        return int(self.ids.num_rows) if self.n_rows is None else self.n_rows

    def rows(self, part: str, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` of the ``image`` or ``text`` matrix: a slice when the matrix is held, else those
        rows normalised from the stored float16 column (the same values: normalising is per row)."""
        held = getattr(self, part)
        if held is not None:
            return held[a:b]
        from curate.select.pool import embedding_matrix

        return embedding_matrix(self.raw[f"{part}_emb"].slice(a, b - a))[0]


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
    memory: int = DEFAULT_MEMORY  # bytes a process may hold besides its partition (see docs/scale.md)


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
class BlockScan:
    """What a selector computes for one block of pool rows (pass 1), row-aligned with the block.

    ``columns`` go to the score table; ``reasons`` (a :class:`Reasons` whose default is the reason of
    eligible rows not picked) says why ineligible rows can't be picked; ``partition`` (int32, -1 for
    none) sends eligible rows to pass 2, with their embeddings and the ``carry`` scalars; ``sums`` are
    pool-wide float64 sums, added up in block order.

    ``partition`` of shape ``(n, K)`` sends a row to up to K partitions (one per column, -1 for none;
    e.g. K random batches): pass 2 then sees the row once in each, and the selector's
    ``pass2_combine`` says how the row's pass-2 values are put together (see :class:`Selector`).
    ``tallies`` are non-negative integer labels (any
    number per row, e.g. matched metadata entries) counted pool-wide: ``reduce`` gets each as an int64
    vector of counts per label in ``sums``. ``stash`` holds row-aligned Arrow arrays (any type) kept with
    the block for ``Selector.rescan``; they never reach the score table.
    """

    columns: dict[str, np.ndarray]
    eligible: np.ndarray
    reasons: Reasons
    partition: np.ndarray | None = None
    carry: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    tallies: dict[str, np.ndarray] = field(default_factory=dict)
    stash: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartitionOutput:
    """What pass 2 computes for one partition: score-table columns for its rows, and its pick
    sequence for methods whose decision merges sequences (``SequenceCursor``)."""

    columns: dict[str, np.ndarray]
    cursor: Any = None


@dataclass(frozen=True)
class RankBy:
    """Decision: the rows with the largest ``column`` (ties: lower pool row first), ``budget`` of them,
    or every row with ``column >= minimum`` when ``budget`` is None. ``info`` names the header entry
    that records the value of the last row kept; ``below`` (optional) is the reason of eligible rows not
    kept whose value is below that one (the others get ``reason``). ``ascending``: the smallest values
    first (and ``minimum`` is then a maximum)."""

    column: str
    budget: int | None
    minimum: float | None = None
    reason: str = "budget"
    info: str | None = None
    below: str | None = None  # the reason of rows not kept whose value is below the last kept one
    ascending: bool = False


@dataclass(frozen=True)
class KeepWhere:
    """Decision: the rows whose bool ``column`` is true, in pool order; the scan gave the others a reason."""

    column: str


@dataclass(frozen=True)
class MergeSequences:
    """Decision: merge the partitions' pick sequences (pass 2 cursors) into ``budget`` picks.

    ``whole``: pass 2 computes each partition's whole sequence, not about twice its share of the
    budget. The pass-2 tasks run in parallel; a sequence that runs short is extended during the merge,
    one partition at a time (a task that reads the partition again), which costs more than the picks
    when a method's picks are far from proportional to partition size, as ClipCov's reference variant's are."""

    budget: int
    reason: str = "budget"
    whole: bool = False


DecisionRule = RankBy | KeepWhere | MergeSequences


class Selector(ABC):
    """A selection method, as stages of the partitioned pipeline (``curate.select.pipeline``).

    1. ``setup`` (driver): pool-wide inputs every task shares (class embeddings, k-means centroids);
       it may read a bounded sample of the pool.
    2. ``scan`` (pass 1, one task per block of rows): per-row columns, eligibility, reasons, a
       partition for pass 2, and pool-wide sums.
    3. ``reduce`` (driver): shared inputs that need the sums (pool means, counts per label).
    3b. ``rescan`` (one task per block, only when ``rescans``): more per-row columns from the block's
       pass-1 output (its columns and ``stash``) and the reduced inputs; no embeddings are read.
    4. ``partition`` (pass 2, one task per partition or group of small ones, only when
       ``partitioned``): columns of the partition's rows and, optionally, its pick sequence.
    5. ``rule``: how the decision picks rows (a :data:`DecisionRule` over the columns).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[SelectorConfig]] = SelectorConfig
    needs: ClassVar[frozenset[str]] = frozenset()  # pool parts: "image", "text", "clip_score"
    #: ``scan`` reads ``chunk.ids`` (uid, shard, key, position): methods that match rows against other
    #: tables or the shards; the others' blocks skip the id columns (a third of a cheap method's time)
    reads_ids: ClassVar[bool] = False
    budget_mode: ClassVar[BudgetMode] = "required"
    #: score-table columns after the common ones, in order, with their numpy dtype (f8 NaN / i4 -1 = null)
    columns: ClassVar[dict[str, str]] = {}
    #: pass 2 exists; and which embeddings it reads ("image", "text")
    partitioned: ClassVar[bool] = False
    partition_parts: ClassVar[frozenset[str]] = frozenset()
    #: parts of ``needs`` that ``scan`` reads a slice at a time through :meth:`Pool.rows`: the block's
    #: float32 matrices of them are never made (only their valid masks)
    row_parts: ClassVar[frozenset[str]] = frozenset()
    #: rows in several partitions (``BlockScan.partition`` of shape (n, K)): how a row's pass-2 columns
    #: from its partitions are combined before ``finish`` (``"sum"``: added in partition order)
    pass2_combine: ClassVar[str | None] = None
    seeded: ClassVar[bool] = False  # whether ``--seed`` changes the result (see ``uses_seed``)
    #: its partitions mean something to budget by (classes, clusters); else --per-partition labels its own
    own_partitions: ClassVar[bool] = False
    #: the rescan stage exists (per-row columns that need ``reduce``'s results)
    rescans: ClassVar[bool] = False

    def __init__(self, config: SelectorConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    def check_budget(self, budget: int | None) -> None:
        """Reject a missing or superfluous budget (override when an option can replace it)."""
        if self.budget_mode == "required" and budget is None:
            raise UsageError(f"--method {self.name} needs --fraction F or --count K")
        if self.budget_mode == "none" and budget is not None:
            raise UsageError(f"--method {self.name} takes no --fraction/--count")

    def setup(self, source: Any, ctx: SelectContext) -> dict[str, Any]:
        """Shared inputs for the tasks (small: no per-sample data)."""
        return {}

    @abstractmethod
    def scan(self, chunk: Pool, start: int, shared: dict[str, Any]) -> BlockScan:
        """Pass 1 over pool rows ``start .. start + len(chunk)``."""

    def reduce(self, sums: dict[str, np.ndarray], sizes: np.ndarray, shared: dict[str, Any]) -> dict[str, Any]:
        """More shared inputs from the pool-wide sums and the rows per partition (driver)."""
        return {}

    def rescan(self, block: Any, start: int, shared: dict[str, Any]) -> dict[str, np.ndarray]:
        """Per-row columns of pool rows ``start ..`` from the block's pass-1 table (``block``, a pyarrow
        table with the scan's columns and ``stash``), once ``reduce`` has run (only when ``rescans``)."""
        raise TypeError(f"{self.name} has no rescan")

    def inputs(self) -> dict[str, Any]:
        """Identity of the files the method reads besides the run (e.g. a digest), recorded in the
        manifest's ``params``: a selection made from other file contents is another selection."""
        return {}

    def partition(self, data: Any, shared: dict[str, Any]) -> PartitionOutput:
        """Pass 2 over one partition (:class:`curate.select.pipeline.PartitionData`)."""
        raise TypeError(f"{self.name} has no pass 2")

    @abstractmethod
    def rule(self, budget: int | None, shared: dict[str, Any]) -> DecisionRule:
        """How the decision picks rows."""

    def info(self, shared: dict[str, Any]) -> dict[str, Any]:
        """Entries for the manifest header's ``info`` (JSON-able)."""
        return {}

    def partition_names(self, shared: dict[str, Any]) -> list[str] | None:
        """Names of the partitions (for per-partition counts), when they have names."""
        return None

    def finish(self, p1: dict[str, np.ndarray], p2: dict[str, np.ndarray], count: np.ndarray,
               shared: dict[str, Any]) -> dict[str, np.ndarray]:
        """Final columns of one block from its pass-1 columns and its combined pass-2 columns (methods
        with ``pass2_combine``; ``count``: partitions each row was in, 0 where it was in none)."""
        raise TypeError(f"{self.name} has no combined pass 2")

    def restore_cursor(self, data: Any, state: dict[str, np.ndarray], shared: dict[str, Any]) -> Any:
        """A pick-sequence cursor of pass 2 from its saved ``state()`` (methods that merge sequences)."""
        raise TypeError(f"{self.name} has no pick sequences")

    def check_result(self, kept: int) -> None:  # noqa: B027  (optional hook)
        """Refuse a result that should not be written (e.g. an empty set operation)."""

    def parents(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        """The selections this one was derived from (manifest header ``parents``)."""
        return []

    def check_pool(self, pool_size: int) -> None:
        """Reject options that cannot work on a pool of this size (before the selection is named)."""
        return None

    def input_selections(self) -> list[tuple[str, str]]:
        """The earlier selections of the run this one reads, as (name, option that names it): checked to
        exist on this pool before anything runs, ``--dry-run`` included."""
        return []

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


class ThresholdOrBudget(Selector):
    """A selector that keeps a budget (``--fraction``/``--count``) or every row with ``score >= --threshold``:
    its config has a ``threshold`` field, and the threshold goes into the default name (``t0.28``)."""

    budget_mode = "optional"

    def check_budget(self, budget: int | None) -> None:
        if (budget is None) == (self.config.threshold is None):  # type: ignore[attr-defined]
            raise UsageError(f"--method {self.name} needs exactly one of --fraction, --count or --threshold")

    def tag(self) -> str:
        t = self.config.threshold  # type: ignore[attr-defined]
        return f"t{t:g}" if t is not None else ""


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


def parse_bytes(text: str, flag: str = "--memory") -> int:
    """``512M``, ``4G``, ``1.5G``, ``1000000`` → bytes (K, M, G, T are powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num)
    except ValueError:
        raise UsageError(f"bad {flag} {text!r}: use a size such as 512M or 4G") from None
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"bad {flag} {text!r}: use a size such as 512M or 4G")
    return int(value * units[unit])


def top_k(values: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` among ``eligible``, best first (ties: lower index first)."""
    idx = np.flatnonzero(eligible)
    order = np.argsort(-values[idx], kind="stable")
    return idx[order[:k]]
