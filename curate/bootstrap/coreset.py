"""SCAN's static coreset byproduct — our reading, documented as such (docs/bootstrap.md).

The paper derives a static coreset "after pre-training" but the rule is not in the released code. We
rank every pool sample by how rarely it was a pruning candidate across the preparation rounds scored so
far (fewest first); ties go to the sample whose mean within-batch loss percentile is closest to the
batch median (neither redundant nor ill-matched); remaining ties by pool order. The top ``fraction`` is
written as a selection (``RUN/selections/NAME/{scores,manifest}.parquet``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.bootstrap.data import load_round_pool, loss_files, map_losses
from curate.bootstrap.methods import ScanParams, candidates_path, scan_candidates
from curate.bootstrap.rounds import load_state
from curate.errors import InputError, UsageError
from curate.fs import read_json
from curate.io.manifest import Manifest, build_manifest, write_manifest
from curate.io.tables import read_parquet, write_table
from curate.rundir import RunDir, check_selection_name
from curate.schemas import CORESET_SCORES_SCHEMA

DEFAULT_NAME = "scan-coreset"


@dataclass
class CoresetResult:
    name: str
    manifest_path: Path
    manifest: Manifest
    prepare_rounds: list[int]


def _prepare_rounds(state: dict) -> list[int]:
    return [h["round"] for h in state["history"] if h["phase"] == "prepare"]


def derive_coreset(
    run_root: str | os.PathLike[str],
    fraction: float,
    name: str = DEFAULT_NAME,
    command: str = "curate bootstrap coreset",
    force: bool = False,
) -> CoresetResult:
    """Write the coreset selection ``name`` holding the top ``fraction`` of the pool (see module doc).

    A selection ``name`` made otherwise (another method, or a coreset of another fraction) is replaced
    only with ``force``; the same coreset is recomputed (e.g. after more rounds) without it.
    """
    run, state = _check_inputs(run_root, fraction, name, force)
    pool = load_round_pool(run.root, state["init"])
    if pool.digest != state["pool"]["digest"]:
        raise InputError(f"the pool of {run.root} changed since round 0; the coreset would mix pools")
    tally = _tally_prepare_rounds(run, state, pool)
    rank = tally.rank()
    selected = rank < max(1, round(fraction * len(pool)))
    manifest = build_manifest(
        pool.table.filter(pa.array(selected)),
        kind="selection",
        command=command,
        params={"method": "scan-coreset", "fraction": fraction, "prepare_rounds": tally.used},
        seed=int(state["seed"]),
        pool_size=len(pool),
        pruned_by_reason={"frequent_candidate": int(len(pool) - selected.sum())},
        extra={"method": "scan-coreset", "selection": name},
    )
    with run.selection_lock(name), run.write_selection(name) as draft:  # like `curate select`
        write_table(draft.folder / "scores.parquet", tally.table(pool, rank, selected))
        write_manifest(draft.folder / "manifest.parquet", manifest)
        draft.record = {  # same layout as `curate select`
            "method": "scan-coreset",
            "params": {"fraction": fraction, "prepare_rounds": tally.used},
            "seed": int(state["seed"]),
            "pool": len(pool),
            "kept": len(manifest),
            "content_hash": manifest.header["content_hash"],
        }
        draft.command = f"{command} --fraction {fraction} --name {name}"
    return CoresetResult(name, run.selection_manifest(name), manifest, tally.used)


def _check_inputs(run_root: str | os.PathLike[str], fraction: float, name: str,
                  force: bool) -> tuple[RunDir, dict[str, Any]]:
    """The run and its SCAN state; one-line errors for a bad fraction or name, a selection of that name
    made otherwise (without ``force``), or a run without SCAN rounds."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
    check_selection_name(name)  # a folder name inside RUN/selections, never a path
    run = RunDir(run_root)
    run.require()
    old = run.selection_dir(name) / "manifest.json"
    if run.selection_dir(name).exists() and not force:
        header = read_json(old) if old.exists() else {}
        made = (header.get("params") or {}).get("method"), (header.get("params") or {}).get("fraction")
        if made != ("scan-coreset", fraction):
            raise UsageError(f"selection {name!r} exists (method {made[0] or 'unknown'}, fraction {made[1]}); "
                             "pass --force to replace it or choose --name")
    state = load_state(run.root)
    if state is None or state["method"] != "scan":
        raise InputError(f"{run.root} has no SCAN rounds; run 'curate bootstrap --run {run.root} --round N' first")
    return run, state


@dataclass
class _Tally:
    """Per pool sample over the preparation rounds: how often a candidate, how often scored, and the summed
    distance of its loss percentile from the median."""

    count: np.ndarray
    scored: np.ndarray
    dist: np.ndarray
    used: list[int]

    def mean_distance(self) -> np.ndarray:
        return np.where(self.scored > 0, self.dist / np.maximum(self.scored, 1), 0.5)

    def rank(self) -> np.ndarray:
        """0 = kept first: fewest candidacies, then nearest the median, then pool order; never-scored last."""
        n = len(self.count)
        order = np.lexsort((np.arange(n), self.mean_distance(), self.count, self.scored == 0))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        return rank

    def table(self, pool: Any, rank: np.ndarray, selected: np.ndarray) -> pa.Table:
        return pa.table({
            "uid": pool.uids,
            "candidate_count": pa.array(self.count),
            "scored_rounds": pa.array(self.scored),
            "median_distance": pa.array(self.mean_distance().astype(np.float32)),
            "rank": pa.array(rank),
            "selected": pa.array(selected),
        }, schema=CORESET_SCORES_SCHEMA)


def _tally_prepare_rounds(run: RunDir, state: dict[str, Any], pool: Any) -> _Tally:
    """Add up every preparation round's candidates (written, or computed from the last round's losses)."""
    n = len(pool)
    tally = _Tally(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float64), [])
    params = ScanParams(**state["params"])
    for r in _prepare_rounds(state):
        f = run.bootstrap_dir / candidates_path(r)
        if f.exists():
            t = read_parquet(f, ["row", "loss_rank", "candidate"], memory_map=True)
        elif loss_files(run, r):  # the last preparation round, not yet followed by a mutation round
            t = scan_candidates(map_losses(run, r, pool), params, int(state["seed"]), r)
        else:
            continue
        rows = t.column("row").to_numpy()
        tally.scored[rows] += 1
        tally.count[rows] += t.column("candidate").is_valid().to_numpy(zero_copy_only=False)
        tally.dist[rows] += np.abs(t.column("loss_rank").to_numpy().astype(np.float64) - 0.5)
        tally.used.append(r)
    if not tally.used:
        raise InputError(
            f"no preparation round of {run.root} has losses yet; train through a preparation round first"
        )
    return tally
