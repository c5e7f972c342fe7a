"""``curate bootstrap --round N``: advance a run's pruning state by one round and write its manifest.

Protocol (docs/bootstrap.md): before round N the trainer's driver calls ``bootstrap_round(run, N)``; it reads the
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

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.bootstrap.data import (
    Pool,
    RoundLosses,
    load_pool,
    map_losses,
    pool_cache_path,
    pool_cache_table,
    pool_index_path,
    pool_index_table,
    read_table,
    write_arrow,
)
from curate.bootstrap.methods import Decision, RoundContext, get_method, knob_names, list_methods
from curate.embed.state import check_pool_complete
from curate.errors import InputError, UsageError
from curate.fs import atomic_path, read_json, remove_dead_temps_of, write_json
from curate.io.manifest import Manifest, build_manifest, header_path, manifest_file_table
from curate.rundir import RunDir

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
    dry_run: bool = False  # decided, not written: ``manifest_path`` is where the manifest would go


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
        f"(to start over: curate bootstrap --run {run.root} --reset)"
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
                "knobs are fixed per run (start over with 'curate bootstrap --reset', or use a new run folder)"
            )
    return {k: prev[k] for k in ("method", "params", "seed", "init")}


class _Writes:
    """Output files written to temporary names in worker threads (pyarrow and numpy release the GIL), then
    renamed in submission order by ``commit``; ``abort`` removes the temporaries (``atomic_path`` semantics).
    """

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._pending: list[tuple[contextlib.AbstractContextManager[Path], Future[None]]] = []

    def add(self, path: Path, write: Callable[[Path], None]) -> None:
        cm = atomic_path(path)
        tmp = cm.__enter__()
        self._pending.append((cm, self._executor.submit(write, tmp)))

    def _finish(self, error: BaseException | None) -> None:
        pending, self._pending = self._pending, []
        errors = [f.exception() for _, f in pending]  # waits for every write
        error = error or next((e for e in errors if e is not None), None)
        for cm, _ in pending:
            if error is None:
                cm.__exit__(None, None, None)  # rename onto the final name
            else:
                cm.__exit__(type(error), error, error.__traceback__)  # remove the temporary
        if error is not None:
            raise error

    def commit(self) -> None:
        self._finish(None)

    def abort(self, error: BaseException) -> None:
        self._finish(error)


#: Parquet options of the tables under RUN/bootstrap (read back only by curate): dictionary pages only for
#: low-cardinality columns, no page statistics. The manifest keeps pyarrow's defaults.
_DICTIONARY_COLUMNS = {"round", "batch"}


def _write_internal(table: pa.Table) -> Callable[[Path], None]:
    dictionary = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or f.name in _DICTIONARY_COLUMNS]
    return lambda tmp: pq.write_table(table, tmp, use_dictionary=dictionary, write_statistics=False)


# --- the round ----------------------------------------------------------------------------------
def _kept_mask(run: RunDir, round_: int, n: int) -> np.ndarray:
    """Pool rows that were in round ``round_``'s manifest (from its decisions file)."""
    keep = np.ones(n, bool)
    p = decisions_path(run, round_)
    if p.exists():
        t = read_table(p, ["row", "pruned"])
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
    dry_run: bool = False,
    allow_partial: bool = False,
) -> RoundResult:
    """Decide round ``round_`` of a run and write its manifest; see the module docstring.

    ``method``, ``knobs`` (the method's Params fields), ``seed`` and ``init`` are fixed at round 0 and
    default to the run's values afterwards; passing a different value later is an error. ``dry_run``:
    decide the round (every check included) and return the result without writing anything.
    ``allow_partial``: start (round 0) on a run whose embed has pending shards; otherwise that is an
    ``InputError`` (the pool is fixed at round 0, so a later, larger pool would need a new run).
    """
    run = RunDir(run_root)
    run.require()
    prev = _previous_state(run, round_)
    pending = check_pool_complete(run, allow_partial) if prev is None else []
    cfg = _resolve_config(prev, method, knobs or {}, seed, init)
    impl = get_method(cfg["method"])(get_method(cfg["method"]).Params(**cfg["params"]))
    pool = load_pool(run.root, cfg["init"])
    if prev is not None and prev["pool"]["digest"] != pool.digest:
        raise InputError(
            f"the pool of {run.root} changed since round 0 ({prev['pool']['size']} → {len(pool)} samples); "
            "re-embedding mid-run is not supported: start over with 'curate bootstrap --reset', or use a new run folder"
        )
    latest = load_state(run.root) if prev is None and round_ == 0 else None
    if latest is not None and latest["pool"]["source"] == pool.source and latest["pool"]["digest"] != pool.digest:
        # a rerun of round 0 on a pool that changed since (an embed finished or was extended): not silently
        raise InputError(
            f"round 0 of {run.root} was decided on a pool of {latest['pool']['size']:,} samples, the pool now has "
            f"{len(pool):,}; start the rounds over (curate bootstrap --reset) or use a new run folder"
        )

    def losses(r: int) -> RoundLosses:
        return map_losses(run, r, pool, _kept_mask(run, r, len(pool)))

    def read_own(rel: str, columns: list[str] | None = None) -> pa.Table:
        return read_table(run.bootstrap_dir / rel, columns)

    ctx = RoundContext(round_, pool, int(cfg["seed"]), dict(prev["method_state"]) if prev else {}, losses, read_own)
    dec = impl.step(ctx)
    partial = bool(pending) if prev is None else bool(prev["pool"].get("partial", False))
    if dry_run:
        manifest = _manifest(pool, dec, cfg, round_, command, partial)
        return RoundResult(round_, run.manifest_file(round_), manifest, _summary(round_, cfg, pool, dec, manifest),
                           dry_run=True)
    # Decided and validated: from here on files are written, each to a temporary name (in worker threads,
    # while the manifest is built), renamed in order once all are complete; the state goes last.
    outputs = [pool_cache_path(run), pool_index_path(run), decisions_path(run, round_), run.manifest_file(round_),
               header_path(run.manifest_file(round_)), snapshot_path(run, round_), state_path(run)]
    remove_dead_temps_of(*outputs, *(run.bootstrap_dir / rel for rel in dec.tables))
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as executor:
        writes = _Writes(executor)
        try:
            if pool.fresh:
                cache = pool_cache_table(pool)
                writes.add(pool_cache_path(run), lambda tmp: write_arrow(tmp, cache))
            index = pool_index_table(pool) if pool.index_fresh else None
            if index is not None:
                writes.add(pool_index_path(run), lambda tmp: write_arrow(tmp, index))
            for rel, table in sorted(dec.tables.items()):
                writes.add(run.bootstrap_dir / rel, _write_internal(table))
            writes.add(decisions_path(run, round_), _write_internal(_decisions_table(round_, dec)))
            manifest = _manifest(pool, dec, cfg, round_, command, partial)
            writes.add(run.manifest_file(round_), lambda tmp: pq.write_table(manifest_file_table(manifest), tmp))
        except BaseException as exc:
            writes.abort(exc)
            raise
        writes.commit()
    path = run.manifest_file(round_)
    write_json(header_path(path), manifest.header)
    summary = _summary(round_, cfg, pool, dec, manifest)
    state = {
        "format_version": STATE_FORMAT_VERSION,
        **{k: cfg[k] for k in ("method", "params", "seed", "init")},
        "pool": {"source": pool.source, "size": len(pool), "digest": pool.digest, "partial": partial},
        "round": round_,
        "method_state": dec.state,
        "history": [*(prev["history"] if prev else []), summary],
    }
    write_json(snapshot_path(run, round_), state)
    write_json(state_path(run), state)
    run.update(
        "bootstrap",
        {k: cfg[k] for k in ("method", "params", "seed", "init")} | {"round": round_},
        command=f"{command} --round {round_}",
    )
    return RoundResult(round_, path, manifest, summary)


def _summary(round_: int, cfg: dict[str, Any], pool: Pool, dec: Decision, manifest: Manifest) -> dict[str, Any]:
    """The round's summary (``--json``, the state's history)."""
    return {
        "round": round_,
        "method": cfg["method"],
        "phase": dec.phase,
        "rho_cur": dec.header.get("rho_cur"),
        "pool": len(pool),
        "kept": len(manifest),
        "pruned": len(pool) - len(manifest),
        "pruned_by_reason": dec.pruned_by_reason(),
        "candidates": dec.header.get("candidates"),
        "record_losses": dec.record_losses,
        "content_hash": manifest.header["content_hash"],
    }


def _manifest(pool: Pool, dec: Decision, cfg: dict[str, Any], round_: int, command: str, partial: bool = False
              ) -> Manifest:
    """The round's manifest: the kept pool rows (in pool order) and the header (``pool_partial``: the pool
    was fixed at round 0 while the run's embed had pending shards)."""
    rows = pool.table if dec.keep.all() else pool.table.filter(pa.array(dec.keep))  # same chunks either way
    if dec.weight is not None:
        rows = rows.append_column("weight", pa.array(dec.weight[dec.keep], pa.float32()))
    boot = {
        "method": cfg["method"],
        "pool_source": pool.source,
        "pool_partial": partial,
        "record_losses": dec.record_losses,
        **dec.header,
    }
    return build_manifest(
        rows,
        kind="bootstrap",
        command=command,
        params={"method": cfg["method"], "init": cfg["init"], **cfg["params"]},
        seed=int(cfg["seed"]),
        round=round_,
        phase=dec.phase,
        parent=f"manifests/round-{round_ - 1:04d}.parquet" if round_ > 0 else None,
        pool_size=len(pool),
        pruned_by_reason=dec.pruned_by_reason(),
        extra={"bootstrap": boot},
        presorted=True,  # pool rows are in (shard, position) order with unique uids; filtering keeps that
    )


def history(run_root: str | os.PathLike[str]) -> pa.Table:
    """Per-uid history of every round so far: round, row, uid, candidate, pruned, reason."""
    run = RunDir(run_root)
    state = load_state(run.root)
    if state is None:
        return DECISIONS_SCHEMA.insert(2, pa.field("uid", pa.string())).empty_table()
    pool = load_pool(run.root, state["init"])
    tables = [read_table(decisions_path(run, r)) for r in range(int(state["round"]) + 1)]
    table = pa.concat_tables(tables)
    return table.add_column(2, "uid", pool.uids.take(table.column("row")))


# --- starting over ----------------------------------------------------------------------------------
#: Files ``bootstrap_round`` writes, relative to ``RUN/bootstrap`` (the methods' tables included).
BOOTSTRAP_FILES = (
    r"state\.json", r"pool\.arrow", r"pool-index\.arrow", r"rounds/round-\d{4,}\.json",
    r"decisions/round-\d{4,}\.parquet", r"candidates/round-\d{4,}\.parquet",
    r"infobatch/scores-round-\d{4,}\.parquet",
)
#: Files of the rounds in ``RUN/manifests``: the manifest, its header, and the trainer kit's filter index.
ROUND_FILES = (r"round-\d{4,}\.parquet", r"round-\d{4,}\.json", r"\.round-\d{4,}\.filter-[0-9a-zA-Z-]+\.arrow")


def _ours(rel: str, patterns: tuple[str, ...]) -> bool:
    """``rel`` is one of the patterns, or a temporary file of one (``.NAME.<pid>-*.tmp``, see atomic_path)."""
    folder, _, base = rel.rpartition("/")
    tmp = re.fullmatch(r"\.(.+)\.\d+-[^/]*\.tmp", base)
    if tmp is not None:
        rel = f"{folder}/{tmp.group(1)}" if folder else tmp.group(1)
    return any(re.fullmatch(p, rel) for p in patterns)


@dataclass
class ResetResult:
    """What ``reset_rounds`` removed, and what it left in place."""

    removed: list[Path]
    kept: list[Path]  # files in bootstrap/ or manifests/ that bootstrap did not write
    losses: list[Path]  # the trainer's loss folders, kept


def reset_rounds(run_root: str | os.PathLike[str], command: str = "curate bootstrap --reset") -> ResetResult:
    """Start a run's bootstrap rounds over: remove what ``bootstrap_round`` wrote, and nothing else.

    Removed: the files of ``RUN/bootstrap/`` (state, per-round snapshots, decisions, candidates, pool
    cache), ``RUN/manifests/round-NNNN.{parquet,json}`` (with the trainer kit's filter indexes), the
    folders left empty, and the ``bootstrap`` record of ``run.json``. Kept: ``RUN/losses/`` (the trainer's
    per-sample losses: they took an epoch of training each, and the next rounds read them only for
    rounds the trainer has not recorded again), selections (a SCAN coreset included), and any file
    bootstrap did not write. After it, ``bootstrap --round 0`` starts a new schedule with new knobs.
    """
    run = RunDir(run_root)
    run.require()
    removed: list[Path] = []
    kept: list[Path] = []
    for folder, patterns in ((run.bootstrap_dir, BOOTSTRAP_FILES), (run.manifests_dir, ROUND_FILES)):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                continue
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and not p.is_symlink() and _ours(rel, patterns):
                p.unlink()
                removed.append(p)
            else:
                kept.append(p)
        for d in sorted((d for d in folder.rglob("*") if d.is_dir() and not d.is_symlink()), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when left empty
        with contextlib.suppress(OSError):
            folder.rmdir()
    if "bootstrap" in run.load():
        run.modify("bootstrap", lambda _: None, command=command)
    losses = run.root / "losses"
    kept_losses = sorted(p for p in losses.glob("round-*") if p.is_dir()) if losses.is_dir() else []
    return ResetResult(removed, kept, kept_losses)

