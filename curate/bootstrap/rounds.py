"""``curate bootstrap --round N``: advance a run's pruning state by one round and write its manifest.

Protocol (docs/bootstrap.md): before round N the trainer's driver calls ``bootstrap_round(run, N)``; it reads the
losses of round N-1 when the method needs them, advances ``RUN/bootstrap/state.json`` and writes
``RUN/manifests/round-NNNN.parquet``. Rounds run in order; the latest round may be rerun and gives the
same bytes. Everything is validated before anything is written.

Memory does not grow with the pool: the pool is read a range of rows at a time (``store.py``), the loss
table in passes of bounded tasks (``tasks.py``, on any engine), and every output is written a range of
pool rows at a time. The driver holds scalars: per-batch and per-range counts, a bit per pool row, and
the random draw over the candidates (numpy's, 8 bytes per candidate).

Files under ``RUN/bootstrap/``:
    state.json                    the state after the latest round (same as rounds/round-<latest>.json)
    rounds/round-NNNN.json        the state after round N (a rerun of N+1 starts from it)
    pool.arrow                    the pool in canonical (shard, position) order; ``row`` below indexes it
    pool-index.arrow              the uids' 64-bit keys → pool row, in buckets by key (the loss tables' join)
    decisions/round-NNNN.parquet  per-sample history of round N: round, row, candidate, pruned, reason
    candidates/round-NNNN.parquet SCAN: every sample scored in preparation round N (see methods.py)
    infobatch/scores-round-NNNN.parquet  InfoBatch: the score of every pool row used to decide round N
    .work-round-NNNN/             while round N runs: its tasks' outputs (a killed round resumes from them)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.bootstrap.data import POOL_CHUNK, bools, load_round_pool, pool_cache_path, pool_index_path
from curate.bootstrap.methods import Decision, Part, RoundContext, get_method, knob_names, list_methods, row_ranges
from curate.bootstrap.store import PARTITION_ROWS, PoolStore, open_pool_store
from curate.bootstrap.tasks import LossTable, engine_mapper, remove_other_work, work_path
from curate.embed.state import check_pool_complete
from curate.engines import Engine, engine_scope
from curate.errors import CurateError, InputError, UsageError
from curate.fs import atomic_path, make_temp_file, read_json, remove_dead_temps_of, write_json
from curate.io.manifest import Manifest, ManifestWriter, header_path, read_manifest
from curate.io.tables import RowGroupWriter, read_parquet
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir
from curate.schemas import DECISIONS_SCHEMA, STATE_FORMAT_VERSION

DEFAULT_METHOD = "scan"
DEFAULT_SEED = 0


@dataclass
class RoundResult:
    """What ``bootstrap_round`` wrote; ``manifest`` is read from ``manifest_path`` when first used."""

    round: int
    manifest_path: Path
    summary: dict[str, Any]
    dry_run: bool = False  # decided, not written: ``manifest_path`` is where the manifest would go
    _manifest: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.manifest_path)
        return self._manifest


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
        params = cls.config_class(**given)
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


# --- the round ----------------------------------------------------------------------------------
def _allowed_bits(run: RunDir, r: int, n: int, path: Path) -> Path | None:
    """The pool rows that were in round ``r``'s manifest, as packed bits (little bit order) in ``path``;
    None when the round pruned nothing (every row allowed). Read from round r's decisions, a row group at a time.
    """
    src = decisions_path(run, r)
    if not src.exists():
        return None
    bits: np.ndarray | None = None
    pf = pq.ParquetFile(src)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g, columns=["row", "pruned"])
        rows = t.column("row").to_numpy()[bools(t.column("pruned"))]
        if len(rows):
            if bits is None:
                bits = np.full(-(-n // 8), 0xFF, np.uint8)
            np.bitwise_and.at(bits, rows >> 3, ~np.left_shift(np.uint8(1), (rows & 7).astype(np.uint8)))
    if bits is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        bits.tofile(tmp)
    return path


def _decisions_table(round_: int, part: Part, labels: tuple[str, ...]) -> pa.Table:
    rows = pa.array(part.rows, pa.int64())
    dictionary = pa.array(labels, pa.string())
    kind = pa.DictionaryArray.from_arrays(pa.array(part.kind, pa.int8()), dictionary)
    reason = pa.DictionaryArray.from_arrays(pa.array(part.kind, pa.int8(), mask=~part.pruned), dictionary)
    pruned = pa.array(part.pruned, pa.bool_())
    return pa.table(
        {
            "round": pa.array(np.full(len(part.rows), round_, np.int32)),
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
    engine: Engine | str | None = None,
    engine_options: Mapping[str, Any] | None = None,
    partition_rows: int | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    allow_partial: bool = False,
) -> RoundResult:
    """Decide round ``round_`` of a run and write its manifest; see the module docstring.

    ``method``, ``knobs`` (the fields of the method's config_class), ``seed`` and ``init`` are fixed at round 0 and
    default to the run's values afterwards; passing a different value later is an error.

    The pool and the loss table are read in parts of about ``partition_rows`` rows (default
    :data:`~curate.bootstrap.store.PARTITION_ROWS`), so memory does not grow with them; ``engine`` (an
    :class:`~curate.engines.Engine` or a name with ``engine_options``, e.g. ``"local", {"workers": 2}``)
    runs the passes over the loss table. Every engine and every part size writes the same files.
    ``progress`` receives each pass and the writing of the round's files.

    ``dry_run``: decide the round (every check included) and return its summary without writing it (the
    passes' task files of a round with losses are removed again, unless an earlier attempt left them).
    ``allow_partial``: start (round 0) on a run whose embed has pending shards; otherwise that is an
    ``InputError`` (the pool is fixed at round 0, so a later, larger pool would need a new run).
    """
    run = RunDir(run_root)
    run.require()
    prev = _previous_state(run, round_)
    pending = check_pool_complete(run, allow_partial) if prev is None else []
    partial_pool = bool(pending) if prev is None else bool(prev["pool"].get("partial", False))
    cfg = _resolve_config(prev, method, knobs or {}, seed, init)
    impl = get_method(cfg["method"])(get_method(cfg["method"]).config_class(**cfg["params"]))
    rows = int(partition_rows or PARTITION_ROWS)
    if rows < 1:
        raise UsageError(f"partition_rows must be >= 1, got {rows}")
    fresh_dir = not run.bootstrap_dir.exists()  # a dry run or a refused round 0 leaves no empty bootstrap/
    with engine_scope(engine, engine_options) as eng:  # Ray workers on cpu: numpy and Arrow work
        try:
            store = open_pool_store(run.root, cfg["init"], bucket_rows=rows)
        except CurateError:
            _remove_if_empty(run.bootstrap_dir, fresh_dir)
            raise
        try:
            _check_pool(run, round_, prev, store)
            work = work_path(run, round_)
            resumed = work.exists()
            if not dry_run:
                remove_other_work(run, round_)
            ctx = _round_context(run, round_, store, cfg, prev, engine_mapper(eng, progress), rows)
            dec = impl.step(ctx)
            if dry_run:
                kept, reasons = _count_parts(dec, len(store), rows)
                store.discard()
                if not resumed:
                    shutil.rmtree(work, ignore_errors=True)
                _remove_if_empty(run.bootstrap_dir, fresh_dir)
                summary = _summary(round_, cfg, dec, len(store), kept, reasons, None)
                return RoundResult(round_, run.manifest_file(round_), summary, dry_run=True)
            # Decided and validated: from here on files are written, each to a temporary name, renamed once
            # all are complete; the state goes last.
            outputs = [pool_cache_path(run), pool_index_path(run), decisions_path(run, round_),
                       run.manifest_file(round_), header_path(run.manifest_file(round_)), snapshot_path(run, round_),
                       state_path(run)]
            remove_dead_temps_of(*outputs, *(run.bootstrap_dir / rel for rel in dec.tables))
            header, reasons = _write_round(run, store, dec, cfg, round_, command, rows, progress or NullProgress(),
                                           partial_pool)
        except CurateError:
            store.discard()
            shutil.rmtree(work_path(run, round_), ignore_errors=True)  # an input error: nothing written
            _remove_if_empty(run.bootstrap_dir, fresh_dir)
            raise
        except BaseException:
            store.discard()
            raise
    summary = _summary(round_, cfg, dec, len(store), header["counts"]["kept"], reasons, header["content_hash"])
    _save_state(run, round_, cfg, prev, store, dec, summary, partial_pool, command)
    shutil.rmtree(work_path(run, round_), ignore_errors=True)
    return RoundResult(round_, run.manifest_file(round_), summary)


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Remove ``folder`` and the empty folders in it if this call created it and no file is in it (a dry
    run, a refused round)."""
    if not created or not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _check_pool(run: RunDir, round_: int, prev: dict[str, Any] | None, store: PoolStore) -> None:
    """The pool is the one round 0 fixed (and a rerun of round 0 is on the pool it was decided on)."""
    if prev is not None:  # rounds that may read losses need the uid index; round 0 writes meanwhile
        store.ready()
    if prev is not None and prev["pool"]["digest"] != store.digest:
        raise InputError(
            f"the pool of {run.root} changed since round 0 ({prev['pool']['size']} → {len(store)} samples); "
            "re-embedding mid-run is not supported: start over with 'curate bootstrap --reset', or use a "
            "new run folder"
        )
    _check_round0_pool(run, round_, prev, store)


def _round_context(run: RunDir, round_: int, store: PoolStore, cfg: dict[str, Any], prev: dict[str, Any] | None,
                   mapper: Any, rows: int) -> RoundContext:
    """What a method may read while deciding: earlier rounds' losses (as passes of tasks) and its own tables."""
    work = work_path(run, round_)
    ident = {k: cfg[k] for k in ("method", "params", "seed")}

    def losses(r: int) -> LossTable:
        allowed = decisions_path(run, r)
        bits = _allowed_bits(run, r, len(store), work / f"allowed-{r:04d}.bits")
        return LossTable(run, round_, r, store, bits, mapper, rows,
                         {**ident, "allowed_from": _file_id(allowed) if bits is not None else None})

    def read_own(rel: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(run.bootstrap_dir / rel, columns, memory_map=True)

    def iter_own(rel: str, columns: list[str]) -> Iterator[pa.Table]:
        path = run.bootstrap_dir / rel
        try:
            pf = pq.ParquetFile(path, memory_map=True)
            groups = range(pf.num_row_groups)
        except (pa.ArrowInvalid, OSError):
            read_parquet(path, columns, memory_map=True)  # the one-line error of a missing or damaged file
            raise
        if not set(columns) <= set(pf.schema_arrow.names):
            read_parquet(path, columns, memory_map=True)
        for g in groups:
            yield pf.read_row_group(g, columns=columns)

    return RoundContext(round_, store, int(cfg["seed"]), dict(prev["method_state"]) if prev else {}, losses,
                        read_own, iter_own, rows)


def _save_state(run: RunDir, round_: int, cfg: dict[str, Any], prev: dict[str, Any] | None, store: PoolStore,
                dec: Decision, summary: dict[str, Any], partial_pool: bool, command: str) -> None:
    """The state after the round (its snapshot, then ``state.json``: the round is done) and run.json's record."""
    state = {
        "format_version": STATE_FORMAT_VERSION,
        **{k: cfg[k] for k in ("method", "params", "seed", "init")},
        "pool": {"source": store.source, "size": len(store), "digest": store.digest, "partial": partial_pool},
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


def _check_round0_pool(run: RunDir, round_: int, prev: dict[str, Any] | None, store: PoolStore) -> None:
    """A rerun of round 0 on a pool that changed since (an embed finished or was extended) is refused."""
    latest = load_state(run.root) if prev is None and round_ == 0 else None
    if latest is not None and latest["pool"]["source"] == store.source and latest["pool"]["digest"] != store.digest:
        raise InputError(
            f"round 0 of {run.root} was decided on a pool of {latest['pool']['size']:,} samples, the pool now has "
            f"{len(store):,}; start the rounds over (curate bootstrap --reset) or use a new run folder"
        )


def _count_parts(dec: Decision, n: int, rows: int) -> tuple[int, dict[str, int]]:
    """Kept rows and pruned counts per reason of a decision (its parts consumed, nothing written)."""
    kept = 0
    pruned = np.zeros(len(dec.labels), np.int64)
    for part in dec.parts or (Part(a, b) for a, b in row_ranges(n, rows)):
        kept += (part.stop - part.start) if part.keep is None else int(np.count_nonzero(part.keep))
        pruned += np.bincount(part.kind[part.pruned], minlength=len(dec.labels))
    return kept, {lab: int(c) for lab, c in zip(dec.labels, pruned, strict=True) if c}


def _summary(round_: int, cfg: dict[str, Any], dec: Decision, pool: int, kept: int, reasons: dict[str, int],
             content_hash: str | None) -> dict[str, Any]:
    """The round's summary (``--json``, the state's history)."""
    return {
        "round": round_,
        "method": cfg["method"],
        "phase": dec.phase,
        "rho_cur": dec.header.get("rho_cur"),
        "pool": pool,
        "kept": kept,
        "pruned": pool - kept,
        "pruned_by_reason": reasons,
        "candidates": dec.header.get("candidates"),
        "record_losses": dec.record_losses,
        "content_hash": content_hash,
    }


def _file_id(p: Path) -> list[Any]:
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


class _Pending:
    """An output written to a temporary name beside it; ``commit`` renames it, ``discard`` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_temp_file(path.parent, f".{path.name}.{os.getpid()}-", ".tmp")

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


#: Parquet options of the tables under RUN/bootstrap (read back only by curate): dictionary pages only for
#: low-cardinality columns, no page statistics. The manifest keeps pyarrow's defaults.
_DICTIONARY_COLUMNS = {"round", "batch"}


def _internal_writer(pending: _Pending, schema: pa.Schema) -> RowGroupWriter:
    dictionary = [f.name for f in schema if pa.types.is_dictionary(f.type) or f.name in _DICTIONARY_COLUMNS]
    return RowGroupWriter(pending.tmp, schema, use_dictionary=dictionary, write_statistics=False)


class _ManifestFeed:
    """The manifest of a round from parts of any size, in two passes over the pool's chunks.

    ``add`` takes each part's keep mask and weights; once a pool chunk's values are all known, its kept rows
    are checked, counted and hashed (``ManifestWriter(keep_rows=False)``) and the chunk's keep mask is kept as
    bits (and the kept rows' weights in a file). ``rows`` then cuts the same rows again for the Parquet file:
    no copy of the manifest is stored on the way. The manifest is cut from whole chunks, as always.
    """

    def __init__(self, store: PoolStore, writer: ManifestWriter, spill: Path) -> None:
        self._store = store
        self._chunks = store.chunks()
        self._writer = writer
        self._held: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []
        self._n = 0
        self._bits: list[np.ndarray | None] = []  # per chunk: packed keep mask (None: every row kept)
        self._sizes: list[int] = []  # per chunk: rows
        self._spill = spill
        self._weights: Any = None  # open file of the kept rows' weights (float32), when a part has weights

    def add(self, length: int, keep: np.ndarray | None, weight: np.ndarray | None) -> None:
        self._held.append((length, keep, weight))
        self._n += length
        while self._n >= POOL_CHUNK:
            self._emit(POOL_CHUNK)

    def finish(self) -> None:
        if self._n:
            self._emit(self._n)
        if self._weights is not None:
            self._weights.close()

    def _take(self, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        keeps, weights, got = [], [], 0
        any_keep = any(k is not None for _, k, _ in self._held)
        any_weight = any(w is not None for _, _, w in self._held)
        while got < n:
            length, k, w = self._held[0]
            use = min(length, n - got)
            if any_keep:
                keeps.append(np.ones(use, bool) if k is None else k[:use])
            if any_weight:
                weights.append(np.ones(use, np.float32) if w is None else w[:use])
            if use == length:
                self._held.pop(0)
            else:
                self._held[0] = (length - use, None if k is None else k[use:], None if w is None else w[use:])
            got += use
        self._n -= n
        return (np.concatenate(keeps) if any_keep else None), (np.concatenate(weights) if any_weight else None)

    def _emit(self, n: int) -> None:
        keep, weight = self._take(n)
        if keep is not None and keep.all():
            keep = None
        chunk = next(self._chunks).select(["uid", "shard", "position"])
        if keep is not None:
            chunk = chunk.filter(pa.array(keep))
        if weight is not None:
            if keep is not None:
                weight = weight[keep]
            if self._weights is None:
                self._spill.parent.mkdir(parents=True, exist_ok=True)
                self._weights = open(self._spill, "wb")  # noqa: SIM115  (closed by finish)
                self._weights.write(np.ones(sum(self._kept_rows()), np.float32).tobytes())  # earlier chunks
            self._weights.write(np.ascontiguousarray(weight, np.float32).tobytes())
            chunk = chunk.append_column("weight", pa.array(weight, pa.float32()))
        elif self._weights is not None:
            self._weights.write(np.ones(chunk.num_rows, np.float32).tobytes())
        self._bits.append(None if keep is None else np.packbits(keep))
        self._sizes.append(n)
        self._writer.add(chunk)

    def _kept_rows(self) -> Iterator[int]:
        for bits, n in zip(self._bits, self._sizes, strict=True):
            yield n if bits is None else int(np.unpackbits(bits, count=n).sum())

    def rows(self) -> Iterator[pa.Table]:
        """The kept rows of each chunk again (with their weights), for the Parquet file."""
        weights = open(self._spill, "rb") if self._weights is not None else None  # noqa: SIM115
        try:
            for chunk, bits, n in zip(self._store.chunks(), self._bits, self._sizes, strict=True):
                if bits is not None:
                    chunk = chunk.filter(pa.array(np.unpackbits(bits, count=n).view(bool)))
                if weights is not None:
                    w = np.frombuffer(weights.read(4 * chunk.num_rows), np.float32)
                    chunk = chunk.append_column("weight", pa.array(w, pa.float32()))
                yield chunk
        finally:
            if weights is not None:
                weights.close()


def _write_piece(writer: RowGroupWriter, piece: pa.Table | Callable[[], pa.Table]) -> None:
    writer.write(piece() if callable(piece) else piece)


class _Lane:
    """Calls on one writer, in order, in a thread of its own (Parquet and Arrow writes release the GIL), so
    that the round's files are encoded while the next part is prepared; at most ``depth`` calls wait."""

    def __init__(self, depth: int = 2) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future[Any]] = deque()
        self._depth = depth

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._ex.submit(fn, *args))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every call; the first failure is raised (after all have ended)."""
        error = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as exc:
                error = error or exc
        self._ex.shutdown(wait=True)
        if error is not None:
            raise error


def _write_round(run: RunDir, store: PoolStore, dec: Decision, cfg: dict[str, Any], round_: int, command: str,
                 rows: int, progress: Progress, partial_pool: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the round's tables, decisions and manifest from the decision's parts; returns (header, reasons).

    Each output has a lane (a writer thread): this thread walks the parts and hands each lane its piece.
    """
    labels = dec.labels
    pending = {rel: _Pending(run.bootstrap_dir / rel) for rel in sorted(dec.tables)}
    decisions = _Pending(decisions_path(run, round_))
    writers = {rel: _internal_writer(p, dec.tables[rel]) for rel, p in pending.items()}
    dec_writer = _internal_writer(decisions, DECISIONS_SCHEMA)
    manifest = ManifestWriter(run.manifest_file(round_), hash_batches="pieces", keep_rows=False)
    lanes = {name: _Lane() for name in [*writers, "decisions", "manifest"]}
    pruned = np.zeros(len(labels), np.int64)
    try:
        feed = _ManifestFeed(store, manifest, work_path(run, round_) / "weights.f32")
        progress.start(f"bootstrap: round {round_}", total=len(store), unit="samples")
        at = 0
        parts = dec.parts or (Part(a, b) for a, b in row_ranges(len(store), rows))
        for part in parts:
            if part.start != at:
                raise ValueError(f"decision parts out of order: {part.start} after {at}")
            for rel, piece in part.tables.items():
                lanes[rel].submit(_write_piece, writers[rel], piece)
            if len(part.rows):
                lanes["decisions"].submit(_write_piece, dec_writer, partial(_decisions_table, round_, part, labels))
                pruned += np.bincount(part.kind[part.pruned], minlength=len(labels))
            lanes["manifest"].submit(feed.add, part.stop - part.start, part.keep, part.weight)
            progress.advance(part.stop - part.start)
            at = part.stop
        if at != len(store):
            raise ValueError(f"decision parts end at row {at} of {len(store)}")
        lanes["manifest"].submit(feed.finish)
        for rel, w in writers.items():
            lanes[rel].submit(w.close)
        lanes["decisions"].submit(dec_writer.close)
        for lane in lanes.values():
            lane.drain()
        store.ready()  # a pool built by this round: its index is complete and its checks passed
        progress.finish()
    except BaseException:
        for lane in lanes.values():
            with contextlib.suppress(BaseException):
                lane.drain()
        for w in [*writers.values(), dec_writer]:
            w.abort()
        for p in [*pending.values(), decisions]:
            p.discard()
        manifest.abort()
        raise
    reasons = {lab: int(c) for lab, c in zip(labels, pruned, strict=True) if c}
    store.commit()
    for p in [*pending.values(), decisions]:
        p.commit()
    boot = {
        "method": cfg["method"],
        "pool_source": store.source,
        "pool_partial": partial_pool,
        "record_losses": dec.record_losses,
        **dec.header,
    }
    header = manifest.finish(
        kind="bootstrap",
        command=command,
        pool_size=len(store),
        params={"method": cfg["method"], "init": cfg["init"], **cfg["params"]},
        seed=int(cfg["seed"]),
        round=round_,
        phase=dec.phase,
        parent=f"manifests/round-{round_ - 1:04d}.parquet" if round_ > 0 else None,
        pruned_by_reason=reasons,
        extra={"bootstrap": boot},
        rows=feed.rows(),
    )
    return header, reasons


def history(run_root: str | os.PathLike[str]) -> pa.Table:
    """Per-uid history of every round so far: round, row, uid, candidate, pruned, reason."""
    run = RunDir(run_root)
    state = load_state(run.root)
    if state is None:
        return DECISIONS_SCHEMA.insert(2, pa.field("uid", pa.string())).empty_table()
    pool = load_round_pool(run.root, state["init"])
    tables = [read_parquet(decisions_path(run, r), memory_map=True) for r in range(int(state["round"]) + 1)]
    table = pa.concat_tables(tables)
    return table.add_column(2, "uid", pool.uids.take(table.column("row")))


# --- starting over ----------------------------------------------------------------------------------
#: Files ``bootstrap_round`` writes, relative to ``RUN/bootstrap`` (the methods' tables included).
BOOTSTRAP_FILES = (
    r"state\.json", r"pool\.arrow", r"pool-index\.arrow", r"rounds/round-\d{4,}\.json",
    r"decisions/round-\d{4,}\.parquet", r"candidates/round-\d{4,}\.parquet",
    r"infobatch/scores-round-\d{4,}\.parquet",
    r"\.work-round-\d{4,}/.+", r"\.pool-spill\.\d+-[^/]+/.+",  # a killed round's task outputs and pool spill
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

