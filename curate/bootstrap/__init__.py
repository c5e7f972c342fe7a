"""Dynamic pruning between the rounds of an external trainer: SCAN, InfoBatch, and the coreset byproduct.

Library entry points (the CLI is a thin layer over these)::

    from curate.bootstrap import bootstrap_round, derive_coreset
    res = bootstrap_round("runs/demo", 3)          # reads losses of round 2, writes manifests/round-0003
    res.manifest_path, res.summary
"""

from curate.bootstrap.coreset import CoresetResult, derive_coreset
from curate.bootstrap.methods import METHODS, get_method, knob_names, list_methods
from curate.bootstrap.rounds import ResetResult, RoundResult, bootstrap_round, history, load_state, reset_rounds

__all__ = [
    "METHODS",
    "CoresetResult",
    "ResetResult",
    "RoundResult",
    "bootstrap_round",
    "derive_coreset",
    "get_method",
    "history",
    "knob_names",
    "list_methods",
    "load_state",
    "reset_rounds",
]
