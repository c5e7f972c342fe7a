"""Static coreset selection over a run's embeddings (``curate select``).

Importing this package registers every built-in method; it does not import torch or faiss.
"""

from __future__ import annotations

from curate.select import (  # noqa: F401  (register the methods)
    baselines,
    clipcov,
    combine,
    metaclip,
    negcliploss,
    setops,
    target,
)
from curate.select.base import SELECTORS, Selector, get_selector, list_selectors, register
from curate.select.driver import SelectionPlan, SelectionResult, plan_selection, run_selection

__all__ = [
    "SELECTORS", "SelectionPlan", "SelectionResult", "Selector", "get_selector", "list_selectors", "plan_selection",
    "register", "run_selection",
]
