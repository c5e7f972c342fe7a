"""The figures a benchmark reports to ``benchmarks/run_all.py`` (``--summary-json PATH``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def metric(name: str, value: float, unit: str, better: str = "lower") -> dict[str, Any]:
    """One figure; ``better`` is ``lower`` (time, memory) or ``higher`` (throughput, accuracy)."""
    return {"metric": name, "value": float(value), "unit": unit, "better": better}


def write_summary(path: str | None, benchmark: str, metrics: list[dict[str, Any]]) -> None:
    """Write ``metrics`` of ``benchmark`` as JSON to ``path`` (no-op when ``path`` is None)."""
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"benchmark": benchmark, "metrics": metrics}, indent=1) + "\n")
