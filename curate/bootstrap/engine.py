"""``curate bootstrap --round N``: advance a run's pruning state by one round and write its manifest.

Protocol (spec §7): before round N the trainer's driver calls ``bootstrap_round(run, N)``; it reads the
losses of round N-1 when the method needs them, advances ``RUN/bootstrap/state.json`` and writes
``RUN/manifests/round-NNNN.parquet``. Rounds run in order; the latest round may be rerun and gives the
same bytes. Everything is validated before anything is written.

Files under ``RUN/bootstrap/``:
    state.json                    the state after the latest round (same as rounds/round-<latest>.json)
    rounds/round-NNNN.json        the state after round N (a rerun of N+1 starts from it)
    pool.arrow                    the pool in canonical (shard, position) order; ``row`` below indexes it
    pool-index.arrow              sorted keys of fixed-width uids → pool row (maps loss uids onto rows)
    decisions/round-NNNN.parquet  per-sample history of round N: round, row, candidate, pruned, reason
    candidates/round-NNNN.parquet SCAN: every sample scored in preparation round N (see methods.py)
    infobatch/scores-round-NNNN.parquet  InfoBatch: the score of every pool row used to decide round N
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.bootstrap.data import (
    RoundLosses,
    load_pool,
    map_losses,
    pool_cache_path,
    pool_index_path,
    write_pool_cache,
    write_pool_index,
)
from curate.bootstrap.methods import Decision, RoundContext, get_method, knob_names, list_methods
from curate.errors import InputError, UsageError
from curate.io.manifest import Manifest, build_manifest, header_path, write_manifest
from curate.io.tables import read_parquet, write_table
from curate.run import RunDir, read_json, write_json

STATE_FORMAT_VERSION = 1
DEFAULT_METHOD = "scan"
DEFAULT_SEED = 0

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("round", pa.int32(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("candidate", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("pruned", pa.bool_(), nullable=False),
        pa.field("reason", pa.dictionary(pa.int8(), pa.string()), nullable=True),
    ]
)


@dataclass
class RoundResult:
    """What ``bootstrap_round`` wrote."""

    round: int
    manifest_path: Path
    manifest: Manifest
    summary: dict[str, Any]


# --- state files ------------------------------------------------------------------------------
def state_path(run: RunDir) -> Path:
    return run.bootstrap_dir / "state.json"


def snapshot_path(run: RunDir, round_: int) -> Path:
    return run.bootstrap_dir / "rounds" / f"round-{round_:04d}.json"


def decisions_path(run: RunDir, round_: int) -> Path:
    return run.bootstrap_dir / "decisions" / f"round-{round_:04d}.parquet"


def load_state(run_root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The bootstrap state after the latest round, or None before round 0."""
    p = state_path(RunDir(run_root))
    return read_json(p) if p.exists() else None


def _previous_state(run: RunDir, round_: int) -> dict[str, Any] | None:
    """The state the round starts from; errors for a skipped or out-of-order round."""
    if round_ < 0:
        raise UsageError(f"--round must be >= 0, got {round_}")
    state = load_state(run.root)
    cmd = f"curate bootstrap --run {run.root} --round"
    if state is None:
        if round_ != 0:
            raise InputError(f"round {round_} has no earlier rounds in {run.root}; start with '{cmd} 0'")
        return None
    last = int(state["round"])
    if round_ == last + 1:
        return state
    if round_ == last:  # rerun of the latest round: start again from the state before it
        return read_json(snapshot_path(run, last - 1)) if last > 0 else None
    if round_ > last + 1:
        raise InputError(f"round {round_} skips round {last + 1} (latest is {last}); run '{cmd} {last + 1}' first")
    raise InputError(
        f"round {round_} is before the latest round {last}; only round {last} can be rerun "
        f"(remove {run.bootstrap_dir} and {run.root / 'manifests'} to start over)"
    )


def _resolve_config(
    prev: dict[str, Any] | None,
    method: str | None,
    knobs: dict[str, Any],
    seed: int | None,
    init: str | None,
) -> dict[str, Any]:
    """The run's method, knobs, seed and starting set: fixed at round 0, checked on later rounds."""
    given = {k: v for k, v in knobs.items() if v is not None}
    name = method or (prev["method"] if prev else DEFAULT_METHOD)
    cls = get_method(name)
    bad = sorted(set(given) - set(knob_names(name)))
    if bad:
        opts = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise UsageError(f"{opts} does not apply to --method {name} (methods: {', '.join(list_methods())})")
    if prev is None:
        params = cls.Params(**given)
        return {"method": name, "params": dataclasses.asdict(params), "seed": DEFAULT_SEED if seed is None else seed,
                "init": init}
    fixed = {"method": (method, prev["method"]), "seed": (seed, prev["seed"]), "init": (init, prev["init"])}
    fixed.update({k: (v, prev["params"].get(k)) for k, v in given.items()})
    for k, (new, old) in fixed.items():
        if new is not None and new != old:
            raise UsageError(
                f"--{k.replace('_', '-')} {new} differs from {old} used since round 0 of this run; "
                "knobs are fixed per run (rerun from round 0 or use a new run folder)"
            )
    return {k: prev[k] for k in ("method", "params", "seed", "init")}


def _remove_stale_temps(paths: list[Path]) -> None:
    """Temporary files of these outputs (``.<name>.*.tmp``, see ``atomic_path``) left by a killed attempt."""
    for p in paths:
        for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)


# --- the round ----------------------------------------------------------------------------------
def _kept_mask(run: RunDir, round_: int, n: int) -> np.ndarray:
    """Pool rows that were in round ``round_``'s manifest (from its decisions file)."""
    keep = np.ones(n, bool)
    p = decisions_path(run, round_)
    if p.exists():
        t = read_parquet(p, ["row", "pruned"])
        rows = t.column("row").to_numpy()
        keep[rows[t.column("pruned").to_numpy(zero_copy_only=False)]] = False
    return keep


def _decisions_table(round_: int, dec: Decision) -> pa.Table:
    rows = pa.array(dec.rows, pa.int64())
    labels = pa.array(dec.labels, pa.string())
    kind = pa.DictionaryArray.from_arrays(pa.array(dec.kind, pa.int8()), labels)
    reason = pa.DictionaryArray.from_arrays(pa.array(dec.kind, pa.int8(), mask=~dec.pruned), labels)
    pruned = pa.array(dec.pruned, pa.bool_())
    return pa.table(
        {
            "round": pa.array(np.full(len(dec.rows), round_, np.int32)),
            "row": rows,
            "candidate": kind,
            "pruned": pruned,
            "reason": reason,
        },
        schema=DECISIONS_SCHEMA,
    )


def bootstrap_round(
    run_root: str | os.PathLike[str],
    round_: int,
    *,
    method: str | None = None,
    knobs: dict[str, Any] | None = None,
    seed: int | None = None,
    init: str | None = None,
    command: str = "curate bootstrap",
) -> RoundResult:
    """Decide round ``round_`` of a run and write its manifest; see the module docstring.

    ``method``, ``knobs`` (the method's Params fields), ``seed`` and ``init`` are fixed at round 0 and
    default to the run's values afterwards; passing a different value later is an error.
    """
    run = RunDir(run_root)
    run.require()
    prev = _previous_state(run, round_)
    cfg = _resolve_config(prev, method, knobs or {}, seed, init)
    impl = get_method(cfg["method"])(get_method(cfg["method"]).Params(**cfg["params"]))
    pool = load_pool(run.root, cfg["init"])
    if prev is not None and prev["pool"]["digest"] != pool.digest:
        raise InputError(
            f"the pool of {run.root} changed since round 0 ({prev['pool']['size']} → {len(pool)} samples); "
            "re-embedding mid-run is not supported: rerun from round 0 or use a new run folder"
        )

    def losses(r: int) -> RoundLosses:
        return map_losses(run, r, pool, _kept_mask(run, r, len(pool)))

    def read_table(rel: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(run.bootstrap_dir / rel, columns)

    ctx = RoundContext(round_, pool, int(cfg["seed"]), dict(prev["method_state"]) if prev else {}, losses, read_table)
    dec = impl.step(ctx)

    rows = pool.table.filter(pa.array(dec.keep))
    if dec.weight is not None:
        rows = rows.append_column("weight", pa.array(dec.weight[dec.keep], pa.float32()))
    reasons = dec.pruned_by_reason()
    boot = {
        "method": cfg["method"],
        "pool_source": pool.source,
        "record_losses": dec.record_losses,
        **dec.header,
    }
    manifest = build_manifest(
        rows,
        kind="bootstrap",
        command=command,
        params={"method": cfg["method"], "init": cfg["init"], **cfg["params"]},
        seed=int(cfg["seed"]),
        round=round_,
        phase=dec.phase,
        parent=f"manifests/round-{round_ - 1:04d}.parquet" if round_ > 0 else None,
        pool_size=len(pool),
        pruned_by_reason=reasons,
        extra={"bootstrap": boot},
        presorted=True,  # pool rows are in (shard, position) order with unique uids; filtering keeps that
    )
    summary = {
        "round": round_,
        "method": cfg["method"],
        "phase": dec.phase,
        "rho_cur": dec.header.get("rho_cur"),
        "pool": len(pool),
        "kept": len(manifest),
        "pruned": len(pool) - len(manifest),
        "pruned_by_reason": reasons,
        "candidates": dec.header.get("candidates"),
        "record_losses": dec.record_losses,
        "content_hash": manifest.header["content_hash"],
    }
    state = {
        "format_version": STATE_FORMAT_VERSION,
        **{k: cfg[k] for k in ("method", "params", "seed", "init")},
        "pool": {"source": pool.source, "size": len(pool), "digest": pool.digest},
        "round": round_,
        "method_state": dec.state,
        "history": [*(prev["history"] if prev else []), summary],
    }

    # Everything is decided and validated: write (each file atomically; state last).
    outputs = [pool_cache_path(run), pool_index_path(run), decisions_path(run, round_), run.manifest_file(round_),
               header_path(run.manifest_file(round_)), snapshot_path(run, round_), state_path(run)]
    _remove_stale_temps([*outputs, *(run.bootstrap_dir / rel for rel in dec.tables)])
    if pool.fresh:
        write_pool_cache(run, pool)
    if pool.index_fresh:
        write_pool_index(run, pool)
    for rel, table in sorted(dec.tables.items()):
        write_table(run.bootstrap_dir / rel, table)
    write_table(decisions_path(run, round_), _decisions_table(round_, dec))
    path = write_manifest(run.manifest_file(round_), manifest)
    write_json(snapshot_path(run, round_), state)
    write_json(state_path(run), state)
    run.update(
        "bootstrap",
        {k: cfg[k] for k in ("method", "params", "seed", "init")} | {"round": round_},
        command=f"{command} --round {round_}",
    )
    return RoundResult(round_, path, manifest, summary)


def history(run_root: str | os.PathLike[str]) -> pa.Table:
    """Per-uid history of every round so far: round, row, uid, candidate, pruned, reason."""
    run = RunDir(run_root)
    state = load_state(run.root)
    if state is None:
        return DECISIONS_SCHEMA.insert(2, pa.field("uid", pa.string())).empty_table()
    pool = load_pool(run.root, state["init"])
    tables = [read_parquet(decisions_path(run, r)) for r in range(int(state["round"]) + 1)]
    table = pa.concat_tables(tables)
    return table.add_column(2, "uid", pool.uids.take(table.column("row")))
