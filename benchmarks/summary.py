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


def log_log_axes(ax: Any, xlabel: str, ylabel: str, title: str, title_size: int = 10) -> None:
    """Log-log axes with plain tick labels at 1, 2, 5 × 10^k, a grid and a legend (the scale plots)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
