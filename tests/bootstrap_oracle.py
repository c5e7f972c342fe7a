"""Test oracle: the in-memory ``bootstrap_round`` as it was before the rounds became partitioned.

It holds the whole pool and the whole loss table in one process (``load_round_pool``, ``map_losses``) and writes
every table at once. The tests compare the partitioned rounds (``curate.bootstrap.bootstrap_round``) with it
byte for byte. It writes no pool cache (a cache changes no result).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.bootstrap import schedule as sch
from curate.bootstrap.candidates import epoch_loss
from curate.bootstrap.data import RoundLosses, RoundPool, load_round_pool, map_losses
from curate.bootstrap.methods import (
    CANDIDATE_KINDS,
    STREAM_DRAW,
    get_method,
    kind_codes,
    rng_for,
    scan_candidates,
)
from curate.bootstrap.rounds import (
    DECISIONS_SCHEMA,
    STATE_FORMAT_VERSION,
    _previous_state,
    _resolve_config,
    decisions_path,
    snapshot_path,
    state_path,
)
from curate.errors import InputError
from curate.fs import atomic_path, write_json
from curate.io.manifest import build_manifest, header_path, manifest_file_table
from curate.io.tables import read_parquet
from curate.rundir import RunDir


@dataclass
class Decision:
    phase: str
    keep: np.ndarray
    state: dict[str, Any]
    weight: np.ndarray | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    labels: tuple[str, ...] = CANDIDATE_KINDS
    pruned: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    header: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)
    record_losses: bool = True

    def pruned_by_reason(self) -> dict[str, int]:
        counts = np.bincount(self.kind[self.pruned], minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts, strict=True) if c}

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self.kind, minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts, strict=True)}


def _scan(p: Any, n_round: int, pool: RoundPool, seed: int, state: dict[str, Any], losses: Any,
          read_own: Any) -> Decision:
    st = dict(state) or {"warmup_end": p.warmup_rounds, "loss_pre": sch.LOSS_PRE_INIT, "warmup_trace": [],
                         "candidates_round": None}
    st["warmup_trace"] = list(st["warmup_trace"])
    if st["warmup_end"] is None and n_round > 0:
        lo = losses(n_round - 1)
        cur = epoch_loss(lo.batch, lo.loss_a, lo.loss_b)
        hit, rel = sch.plateau(st["loss_pre"], cur, p.prune_td)
        st["warmup_trace"].append({"round": n_round - 1, "epoch_loss": cur, "rel_improvement": rel})
        if hit:
            st["warmup_end"] = n_round
        else:
            st["loss_pre"] = cur
    phase = sch.phase_of(n_round, st["warmup_end"], p.t_cos)
    keep = np.ones(len(pool), bool)
    dec = Decision(phase=phase, keep=keep, state=st)
    dec.record_losses = phase == sch.PREPARE or (phase == sch.WARMUP and p.warmup_rounds is None)
    rho = 0.0
    if phase == sch.MUTATE:
        e = n_round - st["warmup_end"]
        rho = sch.rho_cur(e, p.t_cos)
        if e % (p.t_cos + 1) == 1:
            prep = n_round - 1
            table = scan_candidates(losses(prep), p, seed, prep)
            dec.tables[f"candidates/round-{prep:04d}.parquet"] = table
            st["candidates_round"] = prep
        else:
            table = read_own(f"candidates/round-{st['candidates_round']:04d}.parquet", ["row", "candidate"])
        code = kind_codes(table.column("candidate"))
        mask = code >= 0
        if p.prune_mode != "both":
            mask &= (code == CANDIDATE_KINDS.index(p.prune_mode)) | (code == CANDIDATE_KINDS.index("both"))
        cand_rows = table.column("row").to_numpy()[mask]
        labels = code[mask]
        n_drop = int(len(cand_rows) * rho)
        pick = rng_for(seed, n_round, STREAM_DRAW).choice(len(cand_rows), n_drop, replace=False)
        pruned = np.zeros(len(cand_rows), bool)
        pruned[pick] = True
        keep[cand_rows[pruned]] = False
        dec.rows, dec.kind, dec.pruned = cand_rows, labels, pruned
        counts = dec.kind_counts()
        dec.header["candidates"] = {
            "from_round": st["candidates_round"], "total": len(cand_rows),
            "redundant": counts["redundant"] + counts["both"], "ill_matched": counts["ill_matched"] + counts["both"],
            "both": counts["both"],
        }
    dec.header["rho_cur"] = rho
    dec.header["warmup_end"] = st["warmup_end"]
    return dec


def _infobatch(p: Any, n_round: int, pool: RoundPool, seed: int, state: dict[str, Any], losses: Any,
               read_own: Any) -> Decision:
    n = len(pool)
    if state.get("scores_round") is None:
        scores = np.full(n, p.init_score, np.float64)
    else:
        rel = f"infobatch/scores-round-{state['scores_round']:04d}.parquet"
        scores = read_own(rel, ["score"]).column("score").to_numpy().astype(np.float64)
    if n_round > 0:
        lo = losses(n_round - 1)
        scores[lo.row] = lo.loss
    keep = np.ones(n, bool)
    weight = np.ones(n, np.float32)
    full_from = sch.infobatch_prune_rounds(p.delta, p.total_rounds)
    prune = n_round < full_from
    dec = Decision(phase=sch.PRUNE if prune else sch.FULL, keep=keep, state={"scores_round": n_round})
    dec.tables[f"infobatch/scores-round-{n_round:04d}.parquet"] = pa.table({"score": scores.astype(np.float32)})
    if prune:
        keep_ratio = 1.0 - p.prune_ratio
        well = np.flatnonzero(scores < scores.mean())
        n_keep = int(keep_ratio * len(well))
        kept = rng_for(seed, n_round, STREAM_DRAW).choice(len(well), n_keep, replace=False)
        pruned = np.ones(len(well), bool)
        pruned[kept] = False
        keep[well[pruned]] = False
        weight[well[~pruned]] = 1.0 / keep_ratio
        dec.rows, dec.pruned = well, pruned
        dec.kind, dec.labels = np.zeros(len(well), np.int8), ("well_learned",)
        dec.header["candidates"] = {"well_learned": len(well), "score_mean": float(scores.mean())}
    dec.weight = weight
    dec.header["keep_ratio"] = 1.0 - p.prune_ratio if prune else 1.0
    dec.header["full_from_round"] = full_from
    return dec


def _none(p: Any, n_round: int, pool: RoundPool, *args: Any) -> Decision:
    return Decision(phase=sch.FULL, keep=np.ones(len(pool), bool), state={}, record_losses=False)


STEPS = {"scan": _scan, "infobatch": _infobatch, "none": _none}


def _kept_mask(run: RunDir, round_: int, n: int) -> np.ndarray:
    keep = np.ones(n, bool)
    p = decisions_path(run, round_)
    if p.exists():
        t = read_parquet(p, ["row", "pruned"], memory_map=True)
        keep[t.column("row").to_numpy()[t.column("pruned").to_numpy(zero_copy_only=False)]] = False
    return keep


def _decisions_table(round_: int, dec: Decision) -> pa.Table:
    labels = pa.array(dec.labels, pa.string())
    return pa.table({
        "round": pa.array(np.full(len(dec.rows), round_, np.int32)),
        "row": pa.array(dec.rows, pa.int64()),
        "candidate": pa.DictionaryArray.from_arrays(pa.array(dec.kind, pa.int8()), labels),
        "pruned": pa.array(dec.pruned, pa.bool_()),
        "reason": pa.DictionaryArray.from_arrays(pa.array(dec.kind, pa.int8(), mask=~dec.pruned), labels),
    }, schema=DECISIONS_SCHEMA)


def _write_internal(path: os.PathLike[str], table: pa.Table) -> None:
    dictionary = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or f.name in ("round", "batch")]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=dictionary, write_statistics=False)


def oracle_round(run_root: str | os.PathLike[str], round_: int, *, method: str | None = None,
                 knobs: dict[str, Any] | None = None, seed: int | None = None, init: str | None = None,
                 command: str = "curate bootstrap") -> dict[str, Any]:
    """Today's round, in memory; returns the summary."""
    run = RunDir(run_root)
    prev = _previous_state(run, round_)
    cfg = _resolve_config(prev, method, knobs or {}, seed, init)
    params = get_method(cfg["method"]).config_class(**cfg["params"])
    pool = load_round_pool(run.root, cfg["init"])
    if prev is not None and prev["pool"]["digest"] != pool.digest:
        raise InputError("the pool changed since round 0")

    def losses(r: int) -> RoundLosses:
        return map_losses(run, r, pool, _kept_mask(run, r, len(pool)))

    def read_own(rel: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(run.bootstrap_dir / rel, columns, memory_map=True)

    dec = STEPS[cfg["method"]](params, round_, pool, int(cfg["seed"]), dict(prev["method_state"]) if prev else {},
                               losses, read_own)
    for rel, table in sorted(dec.tables.items()):
        _write_internal(run.bootstrap_dir / rel, table)
    _write_internal(decisions_path(run, round_), _decisions_table(round_, dec))
    rows = pool.table if dec.keep.all() else pool.table.filter(pa.array(dec.keep))
    if dec.weight is not None:
        rows = rows.append_column("weight", pa.array(dec.weight[dec.keep], pa.float32()))
    boot = {"method": cfg["method"], "pool_source": pool.source, "pool_partial": False,
            "record_losses": dec.record_losses, **dec.header}
    manifest = build_manifest(
        rows, kind="bootstrap", command=command, params={"method": cfg["method"], "init": cfg["init"], **cfg["params"]},
        seed=int(cfg["seed"]), round=round_, phase=dec.phase,
        parent=f"manifests/round-{round_ - 1:04d}.parquet" if round_ > 0 else None, pool_size=len(pool),
        pruned_by_reason=dec.pruned_by_reason(), extra={"bootstrap": boot}, presorted=True,
    )
    path = run.manifest_file(round_)
    with atomic_path(path) as tmp:
        pq.write_table(manifest_file_table(manifest), tmp)
    write_json(header_path(path), manifest.header)
    summary = {
        "round": round_, "method": cfg["method"], "phase": dec.phase, "rho_cur": dec.header.get("rho_cur"),
        "pool": len(pool), "kept": len(manifest), "pruned": len(pool) - len(manifest),
        "pruned_by_reason": dec.pruned_by_reason(), "candidates": dec.header.get("candidates"),
        "record_losses": dec.record_losses, "content_hash": manifest.header["content_hash"],
    }
    state = {
        "format_version": STATE_FORMAT_VERSION, **{k: cfg[k] for k in ("method", "params", "seed", "init")},
        "pool": {"source": pool.source, "size": len(pool), "digest": pool.digest, "partial": False}, "round": round_,
        "method_state": dec.state, "history": [*(prev["history"] if prev else []), summary],
    }
    write_json(snapshot_path(run, round_), state)
    write_json(state_path(run), state)
    run.update("bootstrap", {k: cfg[k] for k in ("method", "params", "seed", "init")} | {"round": round_},
               command=f"{command} --round {round_}")
    return summary



