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
from curate.progress import Progress


@register_engine
class LocalEngine(Engine):
    """Run everything in this process; ``run_items`` with several ``devices`` runs one process per device."""

    name = "local"
    summary = "this machine: one process, or one process per device with --devices"
    accepts = frozenset({"device", "devices"})

    def map(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        shared: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[R]:
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
