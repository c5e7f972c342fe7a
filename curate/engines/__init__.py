"""Engines: where a stage's work runs (this process, one process per device, or Ray).

Importing this package registers ``local`` and ``ray`` (Ray itself is imported only when the ray
engine starts). See :mod:`curate.engines.base` for the contract and docs/engines.md for usage.
"""

from __future__ import annotations

from curate.engines import local, ray_engine  # noqa: F401  (register the engines)
from curate.engines.base import (
    ENGINES,
    Engine,
    EngineOptions,
    ItemWorker,
    engine_scope,
    get_engine,
    list_engines,
    make_engine,
    register_engine,
)
from curate.engines.devices import parse_devices, run_per_device

__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "ItemWorker",
    "engine_scope",
    "get_engine",
    "list_engines",
    "make_engine",
    "parse_devices",
    "register_engine",
    "run_per_device",
]
