"""Static coreset selection over a run's embeddings (``curate select``).

Importing this package registers every built-in method; it does not import torch or faiss.
"""

from __future__ import annotations

from curate.select import baselines, clipcov, metaclip, setops  # noqa: F401  (register the methods)
from curate.select.base import SELECTORS, Selector, get_selector, list_selectors, register
from curate.select.run import SelectionResult, run_selection

__all__ = ["SELECTORS", "SelectionResult", "Selector", "get_selector", "list_selectors", "register", "run_selection"]
