"""The engine contract and registry.

An *engine* decides where work runs; the stages (embed, select) decide what the work is. Two kinds
of work cover every stage:

* :meth:`Engine.map` — a stateless function over a list of items (one task per item), with large
  read-only inputs shared once (``shared``): select's per-class and per-cluster work.
* :meth:`Engine.run_items` — model-holding workers over a list of work items (shards): embed.
  ``local`` runs them in this process, or in one process per device (``devices``); ``ray`` runs
  them on a Ray Data actor pool.

Engines are registered by name (:func:`register_engine`); the CLI's ``--engine`` choices come from
:func:`list_engines`. Every engine gives the same results for the same inputs: work is split by item,
never by a different arithmetic (see docs/engines.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from curate.errors import UsageError
from curate.progress import NullProgress, Progress

R = TypeVar("R")


@dataclass(frozen=True)
class EngineOptions:
    """Options of every engine; each engine says which ones it takes (``Engine.accepts``).

    Args:
        device: device of work run in this process (``auto``, ``cpu``, ``cuda[:N]``).
        devices: local engine: one process per device (``--devices``), e.g. ``("cuda:0", "cuda:1")``.
        address: ray engine: cluster address (``auto``, ``ray://host:10001``); None starts a local Ray.
        num_cpus: ray engine: CPUs of a local Ray instance started by curate (tests use 2).
        workers: ray engine: actors in the pool (default: one per GPU, else one per CPU); local engine:
            processes that run ``map`` tasks (default 1: this process).
        gpus_per_worker: ray engine: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        items_per_task: ray engine: work items (shards) per actor call.
    """

    device: str = "auto"
    devices: tuple[str, ...] = ()
    address: str | None = None
    num_cpus: int | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    items_per_task: int = 1

    #: the CLI flag of each option (for messages)
    FLAGS: ClassVar[dict[str, str]] = {
        "device": "--device", "devices": "--devices", "address": "--ray-address", "num_cpus": "--ray-num-cpus",
        "workers": "--ray-workers", "gpus_per_worker": "--ray-gpus-per-worker",
        "items_per_task": "--ray-shards-per-task",
    }

    def given(self) -> set[str]:
        """Names of the options set to something other than their default."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}


class ItemWorker(ABC):
    """A model-holding worker for :meth:`Engine.run_items` (must be picklable before ``open``).

    ``open(device)`` loads what the worker needs once; ``process(items, progress)`` handles a list of
    items and returns one JSON-able result per item, in item order; ``close()`` frees it.
    """

    #: progress bar label and unit for the work this worker reports
    label: ClassVar[str] = "work"
    unit: ClassVar[str] = "items"

    def open(self, device: str) -> None:  # noqa: B027  (optional hook)
        """Load models and other state on ``device``."""

    @abstractmethod
    def process(self, items: Sequence[Any], progress: Progress) -> list[Any]:
        """Do the work for ``items``; one result per item, in order."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release what ``open`` took."""

    def progress_units(self, result: Any) -> float:
        """Progress units one item's result stands for (engines that can't relay live progress)."""
        return 0.0


class Engine(ABC):
    """Where work runs. Use as a context manager: ``with make_engine("ray") as eng: ...``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    accepts: ClassVar[frozenset[str]] = frozenset({"device"})

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        extra = sorted(self.options.given() - self.accepts)
        if extra:
            flags = ", ".join(EngineOptions.FLAGS.get(e, e) for e in extra)
            raise UsageError(f"{flags} does not apply to --engine {self.name}")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:  # noqa: B027  (optional hook)
        """Acquire resources (a Ray connection); called by ``__enter__``."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release what ``start`` acquired."""

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def distributed(self) -> bool:
        """True when work leaves this process (stages then ship inputs instead of sharing memory)."""
        return False

    def worker_device(self) -> str:
        """The torch device that ``map`` tasks compute on."""
        return self.options.device

    def parallelism(self) -> int:
        """How many ``map`` tasks run at once."""
        return 1

    # -- work --------------------------------------------------------------------------------------
    @abstractmethod
    def map(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        shared: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[R]:
        """``[fn(item, **shared) for item in items]``, one task per item; results in item order.

        ``fn`` must be a module-level function; ``shared`` values are sent once, read-only.
        ``progress`` advances by one per finished item (when an engine runs tasks elsewhere).
        """

    @abstractmethod
    def run_items(self, worker: ItemWorker, items: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        """Run ``worker`` over ``items``; return one result per item, in item order."""


def local_map(
    fn: Callable[..., R], items: Sequence[Any], shared: Mapping[str, Any] | None, progress: Progress | None
) -> list[R]:
    """``map`` in this process (shared by engines that run small jobs locally)."""
    kw = dict(shared or {})
    return [fn(item, **kw) for item in items]


ENGINES: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: add an engine to the registry under ``cls.name``."""
    if cls.name in ENGINES and ENGINES[cls.name] is not cls:
        raise ValueError(f"engine {cls.name!r} is already registered")
    ENGINES[cls.name] = cls
    return cls


def list_engines() -> list[str]:
    """Registered engine names, in registration order."""
    return list(ENGINES)


def get_engine(name: str) -> type[Engine]:
    """The engine class registered as ``name``; a usage error listing the choices otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}") from None


def make_engine(name: str = "local", **options: Any) -> Engine:
    """An engine by name with its options (``None`` values are left at their defaults)."""
    cls = get_engine(name)
    opts = {k: v for k, v in options.items() if v is not None}
    if "devices" in opts:
        opts["devices"] = tuple(opts["devices"])
    names = {f.name for f in dataclasses.fields(EngineOptions)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise UsageError(f"unknown engine option(s): {', '.join(unknown)}")
    return cls(EngineOptions(**opts))


@contextlib.contextmanager
def engine_scope(engine: Engine | str | None, options: Mapping[str, Any] | None,
                 ray_device: str = "cpu") -> Iterator[Engine | None]:
    """The engine of a stage: a given instance (or None) as is, or one made from a name with ``options`` and
    closed afterwards. ``ray_device``: the device of Ray workers unless ``options`` name one."""
    if engine is None or isinstance(engine, Engine):
        if options:
            raise UsageError("engine options need an engine name")
        yield engine
        return
    opts = dict(options or {})
    if engine == "ray":
        opts.setdefault("device", ray_device)
    with make_engine(engine, **opts) as eng:
        yield eng


def null_progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()
