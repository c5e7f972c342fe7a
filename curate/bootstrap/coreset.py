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
    pool = load_round_pool(run.root, state["init"])
    if pool.digest != state["pool"]["digest"]:
        raise InputError(f"the pool of {run.root} changed since round 0; the coreset would mix pools")
    params = ScanParams(**state["params"])
    n = len(pool)
    count = np.zeros(n, np.int64)  # rounds in which the sample was a candidate
    scored = np.zeros(n, np.int64)  # preparation rounds with a recorded loss for the sample
    dist = np.zeros(n, np.float64)  # sum of |loss percentile - 0.5|
    used = []
    for r in _prepare_rounds(state):
        f = run.bootstrap_dir / candidates_path(r)
        if f.exists():
            t = read_parquet(f, ["row", "loss_rank", "candidate"], memory_map=True)
        elif loss_files(run, r):  # the last preparation round, not yet followed by a mutation round
            t = scan_candidates(map_losses(run, r, pool), params, int(state["seed"]), r)
        else:
            continue
        rows = t.column("row").to_numpy()
        scored[rows] += 1
        count[rows] += t.column("candidate").is_valid().to_numpy(zero_copy_only=False)
        dist[rows] += np.abs(t.column("loss_rank").to_numpy().astype(np.float64) - 0.5)
        used.append(r)
    if not used:
        raise InputError(
            f"no preparation round of {run.root} has losses yet; train through a preparation round first"
        )
    mean_dist = np.where(scored > 0, dist / np.maximum(scored, 1), 0.5)
    never = scored == 0  # never scored: ranked after every scored sample
    order = np.lexsort((np.arange(n), mean_dist, count, never))
    k = max(1, round(fraction * n))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    selected = rank < k
    scores = pa.table(
        {
            "uid": pool.uids,
            "candidate_count": pa.array(count),
            "scored_rounds": pa.array(scored),
            "median_distance": pa.array(mean_dist.astype(np.float32)),
            "rank": pa.array(rank),
            "selected": pa.array(selected),
        }
    )
    manifest = build_manifest(
        pool.table.filter(pa.array(selected)),
        kind="selection",
        command=command,
        params={"method": "scan-coreset", "fraction": fraction, "prepare_rounds": used},
        seed=int(state["seed"]),
        pool_size=n,
        pruned_by_reason={"frequent_candidate": int(n - selected.sum())},
        extra={"method": "scan-coreset", "selection": name},
    )
    with run.selection_lock(name), run.write_selection(name) as draft:  # like `curate select`
        write_table(draft.folder / "scores.parquet", scores)
        write_manifest(draft.folder / "manifest.parquet", manifest)
        draft.record = {  # same layout as `curate select`
            "method": "scan-coreset",
            "params": {"fraction": fraction, "prepare_rounds": used},
            "seed": int(state["seed"]),
            "pool": n,
            "kept": len(manifest),
            "content_hash": manifest.header["content_hash"],
        }
        draft.command = f"{command} --fraction {fraction} --name {name}"
    path = run.selection_manifest(name)
    return CoresetResult(name, path, manifest, used)
