"""The ``local`` engine: this process, or one process per device of this machine (``devices``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from curate.engines.base import (
    Engine,
    ItemWorker,
    R,
    local_map,
    null_progress,
    register_engine,
)
from curate.errors import UsageError
from curate.progress import Progress


@register_engine
class LocalEngine(Engine):
    """This machine: ``run_items`` with several ``devices`` runs one process per device; ``map`` with
    ``workers`` > 1 runs its tasks in that many processes (else in this process)."""

    name = "local"
    summary = "this machine: one process, one process per device with --devices, or --workers task processes"
    accepts = frozenset({"device", "devices", "workers"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        if self.options.workers is not None and self.options.workers < 1:
            raise UsageError(f"--workers must be >= 1 (got {self.options.workers}; 1 runs the tasks in this process)")

    @property
    def distributed(self) -> bool:
        return (self.options.workers or 1) > 1

    def parallelism(self) -> int:
        return self.options.workers or 1

    def map(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        shared: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[R]:
        if (self.options.workers or 1) > 1:
            from curate.engines.devices import process_map

            return process_map(fn, items, shared, int(self.options.workers or 1), progress)
        return local_map(fn, items, shared, progress)

    def run_items(self, worker: ItemWorker, items: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        progress = null_progress(progress)
        devices = list(self.options.devices)
        if len(devices) > 1:
            from curate.engines.devices import run_per_device

            return run_per_device(worker, items, devices, progress)
        worker.open(devices[0] if devices else self.options.device)
        try:
            return worker.process(list(items), progress)
        finally:
            worker.close()
