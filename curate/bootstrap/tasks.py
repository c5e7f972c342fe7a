"""A round's loss table, read in passes of bounded tasks: any table size, any engine, the same bits.

A round that needs the losses of round r (SCAN's warm-up test and candidate rule, InfoBatch's scores) runs:

A. **read**, one task per group of row groups of the loss files: read and check the rows, key each uid
   (:func:`~curate.bootstrap.uidindex.uid_keys`) and split the rows by the pool index's uid buckets;
B. **join**, one task per uid bucket: map the bucket's uids onto pool rows with that bucket of the index
   alone (a streaming hash join: both sides split the same way), count unknown and duplicate uids, and
   split the rows by *batch range* (consecutive batch ids, about ``rows`` rows) or by pool row range;
C. **rank**, one task per batch range: the within-batch candidate rule, or the per-batch sums of the
   epoch loss; the candidates are split by pool row range.

The driver holds scalars only: per-batch row counts, per-range counts, the errors. It then reads the
results one pool row range at a time (:meth:`LossTable.candidates`, :meth:`LossTable.losses_by_range`).
The candidate rule's random draws cover the whole table in canonical (batch, pool row) order; a batch
range takes the slice of them at its rows' positions, so ranks and candidates are those of the whole
table ranked at once (``candidates.uint32_slice``).

Every task writes one Arrow file under ``RUN/bootstrap/.work-round-NNNN/`` atomically. A killed round,
rerun, finds the finished ones (``work.json`` names the inputs they were made from) and runs the rest;
the folder is removed when the round is written, or on an input error.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.bootstrap.candidates import by_row, canonical_candidates, make_groups, uint32_slice
from curate.bootstrap.data import loss_files
from curate.bootstrap.store import (
    PoolStore,
    bucket_of,
    fixed_binary,
    fixed_words,
    group_order,
    index_schema,
    part_metadata,
    read_part,
    write_parts,
)
from curate.bootstrap.uidindex import fixed_width, mix, uid_keys, uid_words, word_items
from curate.errors import InputError
from curate.fs import atomic_path
from curate.io.tables import release_arrow_memory
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir
from curate.schemas import LOSS_SCHEMA

WORK_FORMAT = 1

def _a_schema(width: int | None) -> pa.Schema:
    """The read parts: uids as fixed-size binary when every pool uid has one width (``width``), else strings."""
    return pa.schema([
        pa.field("uid", pa.binary(width) if width else pa.string()), pa.field("batch", pa.int64()),
        pa.field("loss_a", pa.float32()), pa.field("loss_b", pa.float32()), pa.field("orig", pa.int64()),
    ])


CAND_SCHEMA = pa.schema([
    pa.field("row", pa.int64()), pa.field("batch", pa.int64()), pa.field("loss_rank", pa.float32()),
    pa.field("code", pa.int8()),
])
EPOCH_SCHEMA = pa.schema([pa.field("sum", pa.float64()), pa.field("size", pa.int64())])


def _b_schema(loss_b: bool, orig: bool) -> pa.Schema:
    """The joined parts: pool row, batch, losses (loss_b when the table has it), table row (for the epoch loss)."""
    fields = [pa.field("row", pa.int64()), pa.field("batch", pa.int64()), pa.field("loss_a", pa.float32())]
    if loss_b:
        fields.append(pa.field("loss_b", pa.float32()))
    if orig:
        fields.append(pa.field("orig", pa.int64()))
    return pa.schema(fields)


# --- the work folder ----------------------------------------------------------------------------------
def work_path(run: RunDir, round_: int) -> Path:
    """``RUN/bootstrap/.work-round-NNNN``: the task outputs of round ``round_``'s passes (hidden: never a result)."""
    return run.bootstrap_dir / f".work-round-{round_:04d}"


def remove_other_work(run: RunDir, round_: int) -> None:
    """Work folders of other rounds (left by killed attempts before a reset or an error)."""
    keep = work_path(run, round_).name
    for p in run.bootstrap_dir.glob(".work-round-*"):
        if p.name != keep and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _open_work(path: Path, identity: dict[str, Any]) -> None:
    """Use ``path`` for ``identity``: a folder made for other inputs is emptied first."""
    ident = json.dumps({"format": WORK_FORMAT, **identity}, sort_keys=True, default=str)
    marker = path / "work.json"
    if marker.exists() and marker.read_text() == ident:
        return
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(ident)


def _stat(p: Path) -> list[Any]:
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


# --- what every task gets ------------------------------------------------------------------------------
@dataclass
class Spec:
    """The inputs of a job's tasks (sent once to each worker)."""

    work: Path
    index: Path  # pool-index.arrow (bucket b = record batch b)
    bits: int
    rows: int  # rows per task, and pool rows per row range
    width: int | None = None  # the common byte length of the pool uids (None: several)
    allowed: Path | None = None  # packed bits (little order) of the pool rows in round r's manifest
    n_a: int = 0  # read tasks
    orig: bool = False  # the joined parts keep each row's position in the table (for the epoch loss)
    loss_b: bool = True  # the table has a loss_b column (after A)
    split: str = "batch"  # B splits the rows by "batch" range or pool "row" range
    edges: list[int] = field(default_factory=list)  # first batch id of each batch range (B's split)
    n_ranges: int = 1  # pool row ranges
    # the candidate rule (C)
    scope_global: bool = False
    rho_max: float = 0.0
    rho_min: float = 0.0
    seed: int = 0
    rng_round: int = 0
    stream: int = 0
    offsets: list[int] = field(default_factory=list)  # canonical position of each batch range's first row
    total: int = 0  # rows in the table
    prune_code: int | None = None  # candidates kept by --prune-mode besides 'both' (None: every kind)

    @property
    def buckets(self) -> int:
        return 1 << self.bits

    def part(self, stage: str, i: int) -> Path:
        return self.work / stage / f"{i:06d}.arrow"

    def parts(self, stage: str, n: int) -> list[Path]:
        return [self.part(stage, i) for i in range(n)]


def _write(path: Path, table: pa.Table, dest: np.ndarray, n: int, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write_parts(tmp, table, dest, n, meta)
    release_arrow_memory()


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<i8").tobytes()).decode()


def _unb64(s: str) -> npt.NDArray[np.int64]:
    return np.frombuffer(base64.b64decode(s), "<i8").copy()


# --- A: read -------------------------------------------------------------------------------------------
def _read_task(item: tuple[int, str, list[int], int], spec: Spec) -> str | None:
    """Read row groups ``groups`` of loss file ``path`` (its first row is row ``first`` of the table); check
    them and write them split by uid bucket. Returns an error message, or None."""
    i, path, groups, first = item
    out = spec.part("a", i)
    if out.exists():
        return None
    try:
        pf = pq.ParquetFile(path, memory_map=True)
        cols = [c for c in LOSS_SCHEMA.names if c in pf.schema_arrow.names]
        t = pf.read_row_groups(groups, columns=cols) if groups else pf.schema_arrow.empty_table().select(cols)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}"
    if "loss_b" not in t.column_names:
        t = t.append_column("loss_b", pa.nulls(t.num_rows, pa.float32()))
    try:
        t = t.select(LOSS_SCHEMA.names).cast(LOSS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        return f"loss table {path} has wrong column types: {str(exc).splitlines()[0]}"
    n = t.num_rows
    nulls = {c: t.column(c).null_count for c in LOSS_SCHEMA.names}
    a, b = _floats(t.column("loss_a")), _floats(t.column("loss_b"))
    batch = t.column("batch").fill_null(0).to_numpy()
    values, counts = _value_counts(batch)
    meta: dict[str, Any] = {
        "rows": n, "nulls": nulls, "batches": _b64(values), "counts": _b64(counts), "unknown": 0,
        "first_unknown": None,
        "nonfinite": {"loss_a": int(np.sum(~np.isfinite(a))), "loss_b": 0 if nulls["loss_b"] else
                      int(np.sum(~np.isfinite(b)))},
    }
    uids = t.column("uid").combine_chunks()
    del t
    if uids.null_count:
        uids = uids.fill_null("")  # an error anyway (nulls in uid)
    orig = np.arange(first, first + n, dtype=np.int64)
    if spec.width:
        lengths = np.diff(_offsets(uids))
        good = lengths == spec.width
        if not good.all():  # a uid of another length is in no bucket: it is not in the pool
            j = int(np.argmin(good))
            meta["unknown"], meta["first_unknown"] = int(np.sum(~good)), [int(orig[j]), uids[j].as_py()]
            sel = np.flatnonzero(good)
            uids, batch, a, b, orig = uids.take(pa.array(sel)), batch[sel], a[sel], b[sel], orig[sel]
        words = uid_words(uids, spec.width)
        assert words is not None
        keys = mix(words)
    else:
        keys = uid_keys(uids)
    dest = bucket_of(keys, spec.bits)
    order = group_order(dest, spec.buckets)
    if spec.width:
        col: pa.Array = fixed_binary(np.take(word_items(words), order), spec.width)
    else:
        col = uids.take(pa.array(order))
    table = pa.table({"uid": col, "batch": batch[order], "loss_a": a[order], "loss_b": b[order],
                      "orig": orig[order]}, schema=_a_schema(spec.width))
    _write(out, table, dest[order], spec.buckets, meta)
    return None


def _value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_counts=True)``; without a sort when the values never decrease (batch ids
    recorded batch after batch)."""
    if len(values) < 2 or bool(np.all(values[1:] >= values[:-1])):
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.zeros(0, np.intp)
        return values[starts], np.diff(np.r_[starts, len(values)])
    return np.unique(values, return_counts=True)


def _floats(col: pa.ChunkedArray) -> npt.NDArray[np.float32]:
    """A float32 column as numpy, NaN where null."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return (arr.fill_null(float("nan")) if arr.null_count else arr).to_numpy()


def _offsets(arr: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset : arr.offset + len(arr) + 1]


# --- B: join -------------------------------------------------------------------------------------------
def lookup(pool: pa.Table, keys: npt.NDArray[np.uint64], query: pa.Array | np.ndarray) -> npt.NDArray[np.int64]:
    """Position in ``pool`` (one bucket of the index: ``key, row, uid`` sorted by key) of each uid, -1 where absent.

    ``query``: the uids, as strings or (fixed width) as a word matrix. Equal keys are only candidates: each
    match is confirmed by comparing the uids, and a uid whose key another uid shares is compared with each
    pool entry of that key in turn.
    """
    pk = pool.column("key").to_numpy()
    out = np.full(len(keys), -1, np.int64)
    n = len(pk)
    if n == 0 or len(keys) == 0:
        return out
    same_uid = _uid_equality(pool.column("uid").combine_chunks(), query)
    # the queries nearly in key order (one numpy sort of key prefix | position): the binary searches then walk
    # the index once instead of jumping around it
    bits = int(len(keys) - 1).bit_length()
    low = np.uint64((1 << bits) - 1)
    packed = keys & ~low
    packed |= np.arange(len(keys), dtype=np.uint64)
    packed.sort()
    q = (packed & low).astype(np.intp)
    del packed
    kq = keys[q]
    p = np.searchsorted(pk, kq)
    while len(q):
        inside = p < n
        hit = inside
        hit[inside] = pk[p[inside]] == kq[inside]
        q, p, kq = q[hit], p[hit], kq[hit]
        if not len(q):
            break
        eq = same_uid(p, q)
        out[q[eq]] = p[eq]
        q, p, kq = q[~eq], p[~eq] + 1, kq[~eq]  # another uid with the same key: try the next pool entry
    return out


def _uid_equality(pool: pa.Array, query: pa.Array | np.ndarray
                  ) -> Callable[[np.ndarray, np.ndarray], npt.NDArray[np.bool_]]:
    """``f(p, q)``: whether ``pool[p[i]] == query[q[i]]``; 64-bit words are compared when both have them."""
    if isinstance(query, np.ndarray):
        width = pool.type.byte_width if pa.types.is_fixed_size_binary(pool.type) else fixed_width(pool)
        pw = (fixed_words(pool, width) if pa.types.is_fixed_size_binary(pool.type) else uid_words(pool, width)) \
            if width else None
        if pw is None or pw.shape[1] != query.shape[1]:
            raise ValueError("word queries need a pool of uids of one width")
        w = pw.shape[1]
        pi, qi = word_items(pw), word_items(query)

        def words(p: np.ndarray, q: np.ndarray) -> npt.NDArray[np.bool_]:
            a = np.take(pi, p).view("<u8").reshape(-1, w)  # a memcpy per row
            b = np.take(qi, q).view("<u8").reshape(-1, w)
            diff = a[:, 0] ^ b[:, 0]
            for j in range(1, w):
                diff |= a[:, j] ^ b[:, j]
            return diff == 0

        return words

    def strings(p: np.ndarray, q: np.ndarray) -> npt.NDArray[np.bool_]:
        eq = pc.equal(pool.take(pa.array(p)), query.take(pa.array(q)))
        return pc.fill_null(eq, False).to_numpy(zero_copy_only=False)

    return strings


def _allowed(path: Path | None, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Whether each pool row was in round r's manifest (all of them without a bit file)."""
    if path is None:
        return np.ones(len(rows), bool)
    bits = np.memmap(path, np.uint8, mode="r")
    return ((bits[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1).astype(bool)


def _join_task(b: int, spec: Spec) -> None:
    """Map uid bucket ``b`` of the read parts onto pool rows; split the rows for C (or the driver)."""
    out = spec.part("b", b)
    if out.exists():
        return
    t = read_part(spec.parts("a", spec.n_a), b, _a_schema(spec.width))
    if spec.width:
        query: pa.Array | np.ndarray = fixed_words(t.column("uid"), spec.width)
        keys = mix(query)
    else:
        query = t.column("uid").combine_chunks()
        keys = uid_keys(query)
    pool = read_part([spec.index], b, index_schema(spec.width))
    at = lookup(pool, keys, query)
    known = at >= 0
    prow = pool.column("row").to_numpy()
    row = np.where(known, prow[np.maximum(at, 0)], -1) if len(at) else np.zeros(0, np.int64)
    known[known] = _allowed(spec.allowed, row[known])
    orig = t.column("orig").to_numpy()
    meta: dict[str, Any] = {"unknown": int(np.sum(~known)), "first_unknown": None, "dup": 0, "first_dup": None}
    if meta["unknown"]:
        i = int(np.flatnonzero(~known)[np.argmin(orig[~known])])
        meta["first_unknown"] = [int(orig[i]), _uid_at(t, i)]
    idx = np.flatnonzero(known)
    r = row[idx]
    times = np.bincount(at[idx], minlength=len(prow))  # a pool row matched twice: a duplicate uid
    twice = np.flatnonzero(times > 1)
    if len(twice):
        first = int(np.argmin(prow[twice]))
        meta["dup"] = len(twice)
        meta["first_dup"] = [int(prow[twice[first]]), _uid_at(pool, int(twice[first]))]
    del times, pool
    batch = t.column("batch").to_numpy()
    if spec.split == "batch":
        dest = np.searchsorted(np.asarray(spec.edges, np.int64), batch[idx], side="right") - 1
        n_dest = len(spec.edges)
    else:
        dest, n_dest = r // spec.rows, spec.n_ranges
    order = idx[group_order(dest, n_dest)]
    cols: dict[str, Any] = {"row": row[order], "batch": batch[order], "loss_a": t.column("loss_a").to_numpy()[order]}
    if spec.loss_b:
        cols["loss_b"] = t.column("loss_b").to_numpy()[order]
    if spec.orig:
        cols["orig"] = orig[order]
    del t, query
    counts = np.bincount(dest, minlength=n_dest) if len(dest) else np.zeros(n_dest, np.int64)
    meta["counts"] = _b64(counts)
    _write(out, pa.table(cols, schema=_b_schema(spec.loss_b, spec.orig)), np.repeat(np.arange(n_dest), counts),
           n_dest, meta)


def _uid_at(t: pa.Table, i: int) -> str:
    v = t.column("uid")[i].as_py()
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _write_counts(path: Path, table: pa.Table, dest: np.ndarray, n: int, meta: dict[str, Any]) -> None:
    meta["counts"] = _b64(np.bincount(dest, minlength=n) if len(dest) else np.zeros(n, np.int64))
    _write(path, table, dest, n, meta)


# --- C: rank -------------------------------------------------------------------------------------------
def _epoch_task(c: int, spec: Spec) -> None:
    """Per-batch sums of the training loss in table order, for batch range ``c`` (ascending batch ids)."""
    out = spec.part("c", c)
    if out.exists():
        return
    t = read_part(spec.parts("b", spec.buckets), c, _b_schema(spec.loss_b, True))
    order = np.argsort(t.column("orig").to_numpy(), kind="stable")
    loss = t.column("loss_a").to_numpy()[order].astype(np.float64)
    if spec.loss_b:
        loss = (loss + t.column("loss_b").to_numpy()[order].astype(np.float64)) / 2.0
    groups = make_groups(t.column("batch").to_numpy()[order])
    sums = np.bincount(groups.gid, weights=loss, minlength=groups.n_groups)
    _write(out, pa.table({"sum": sums, "size": groups.size}, schema=EPOCH_SCHEMA), np.zeros(len(sums), np.int64),
           1, {})


def _rank_task(c: int, spec: Spec) -> None:
    """The candidate rule over batch range ``c``; candidates split by pool row range, sorted by row."""
    out = spec.part("c", c)
    if out.exists():
        return
    t = read_part(spec.parts("b", spec.buckets), c, _b_schema(spec.loss_b, False))
    row, batch = t.column("row").to_numpy(), t.column("batch").to_numpy()
    n, start = len(row), spec.offsets[c]

    def draws(k: int) -> npt.NDArray[np.uint64]:
        return uint32_slice(lambda: np.random.default_rng([spec.seed, spec.rng_round, spec.stream]),
                            k * spec.total + start, n)

    canon, cand = canonical_candidates(
        np.zeros(n, np.int64) if spec.scope_global else batch, t.column("loss_a").to_numpy(),
        t.column("loss_b").to_numpy() if spec.loss_b else None, rho_max=spec.rho_max, rho_min=spec.rho_min,
        tiebreak=row, distinct=True, draws=draws)
    code = cand.redundant.astype(np.int8)
    code += 2 * cand.ill_matched.astype(np.int8)
    code -= 1  # -1 none, 0 redundant, 1 ill_matched, 2 both
    order, rows = by_row(row[canon])
    code = code[order]
    table = pa.table({"row": rows, "batch": batch[canon[order]], "loss_rank": cand.loss_rank[order], "code": code},
                     schema=CAND_SCHEMA)
    dest = rows // spec.rows
    mask = _in_force(code, spec.prune_code)
    meta = {"kinds": [_b64(np.bincount(dest[mask & (code == k)], minlength=spec.n_ranges)) for k in range(3)]}
    _write_counts(out, table, dest, spec.n_ranges, meta)


def _in_force(code: np.ndarray, prune_code: int | None) -> npt.NDArray[np.bool_]:
    """Candidates that mutation rounds may drop: every kind, or ``prune_code`` and ``both`` (2)."""
    mask = code >= 0
    if prune_code is not None:
        mask &= (code == prune_code) | (code == 2)
    return mask


# --- the driver ----------------------------------------------------------------------------------------
Mapper = Callable[[Callable[..., Any], list[Any], Spec], list[Any]]


@dataclass
class CandidateRanges:
    """The candidates of a preparation round, a pool row range at a time (sorted by row)."""

    spec: Spec
    n_c: int
    kind_counts: npt.NDArray[np.int64]  # candidates in force of each kind (redundant, ill_matched, both)
    in_force: npt.NDArray[np.int64]  # candidates in force per pool row range

    def range(self, d: int) -> dict[str, np.ndarray]:
        """Candidate rows of pool row range ``d``, sorted by row: ``row, batch, loss_rank, code`` (-1: none)."""
        t = read_part(self.spec.parts("c", self.n_c), d, CAND_SCHEMA)
        cols = {c: _column(t, c) for c in CAND_SCHEMA.names}
        rows = cols["row"]
        if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
            order, cols["row"] = by_row(rows)  # sorted runs, one per batch range
            for c in ("batch", "loss_rank", "code"):
                cols[c] = cols[c][order]
        return cols


def _column(t: pa.Table, name: str) -> np.ndarray:
    col = t.column(name)
    return (col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()).to_numpy()


class LossTable:
    """The loss table of round ``r`` as read for round ``round_``; each pass runs once, when first needed."""

    def __init__(self, run: RunDir, round_: int, r: int, store: PoolStore, allowed: Path | None,
                 mapper: Mapper, rows: int, identity: dict[str, Any]) -> None:
        self.run, self.round, self.r, self.store, self.mapper = run, round_, r, store, mapper
        self.files = loss_files(run, r)
        if not self.files:
            raise InputError(
                f"no loss table for round {r} in {run.losses_dir(r)}; record losses while training "
                f"(curate.trainer.LossRecorder) or run 'curate losses --run {run.root} --round {r} --checkpoint CKPT'"
            )
        self.where = run.losses_dir(r)
        self.rows = max(1, int(rows))
        self.identity = {"round": round_, "losses": r, "files": [_stat(f) for f in self.files],
                         "pool": store.digest, "bits": store.bits, "width": store.width, "rows": self.rows,
                         "allowed": allowed is not None, **identity}
        self.work = work_path(run, round_) / f"losses-{r:04d}"
        self._allowed_src = allowed
        self._spec: Spec | None = None
        self._purpose: str | None = None

    def _begin(self, purpose: str) -> None:
        """A table is read for one purpose per round; its task outputs go to a folder of that purpose."""
        if self._purpose not in (None, purpose):
            raise ValueError(f"the losses of round {self.r} are read once per round ({self._purpose}, {purpose})")
        if self._purpose is None:
            self._purpose = purpose
            self.work = self.work.with_name(f"{self.work.name}-{purpose}")

    # A: read and check --------------------------------------------------------------------------------
    def _read(self) -> Spec:
        if self._spec is not None:
            return self._spec
        _open_work(self.work, {**self.identity, "purpose": self._purpose})
        spec = Spec(self.work, self.store.index_path, self.store.bits, self.rows, width=self.store.width,
                    n_ranges=max(1, -(-len(self.store) // self.rows)))
        items, errors = [], {}
        first = 0
        for fi, f in enumerate(self.files):
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as exc:
                errors[fi] = f"corrupt Parquet file {f}: {str(exc).splitlines()[0]}"
                continue
            missing = {"uid", "batch", "loss_a"} - set(pf.schema_arrow.names)
            if missing:
                errors[fi] = f"loss table {f} lacks columns {sorted(missing)} (need uid, batch, loss_a[, loss_b])"
                continue
            group, held = [], 0
            for g in range(pf.num_row_groups):
                group.append(g)
                held += pf.metadata.row_group(g).num_rows
                if held >= self.rows:
                    items.append((len(items), str(f), group, first, fi))
                    first, group, held = first + held, [], 0
            if group or not pf.num_row_groups:
                items.append((len(items), str(f), group, first, fi))
                first += held
        spec.n_a = len(items)
        results = self.mapper(_read_task, [it[:4] for it in items], spec)
        for it, res in zip(items, results, strict=True):
            if res is not None:
                errors.setdefault(it[4], res)
        if errors:
            raise InputError(errors[min(errors)])
        metas = [part_metadata(p) for p in spec.parts("a", spec.n_a)]
        total = sum(m["rows"] for m in metas)
        if total == 0:
            raise InputError(f"the loss table of round {self.r} in {self.where} is empty")
        nulls = {c: sum(m["nulls"][c] for m in metas) for c in LOSS_SCHEMA.names}
        for col in ("uid", "batch", "loss_a"):
            if nulls[col]:
                raise InputError(f"the loss table of round {self.r} in {self.where} has nulls in {col}")
        if nulls["loss_b"] not in (0, total):
            raise InputError(f"the loss table of round {self.r} in {self.where} has nulls in loss_b (fill all or none)")
        spec.loss_b = nulls["loss_b"] == 0
        for name in ("loss_a", "loss_b") if spec.loss_b else ("loss_a",):
            bad = sum(m["nonfinite"][name] for m in metas)
            if bad:
                raise InputError(
                    f"the loss table of round {self.r} has {bad} NaN or infinite {name} values; "
                    "fix the trainer (diverged loss?) and record the round again"
                )
        values = np.concatenate([_unb64(m["batches"]) for m in metas])
        counts = np.concatenate([_unb64(m["counts"]) for m in metas])
        self.batches, inv = np.unique(values, return_inverse=True)
        self.batch_rows = np.bincount(inv, weights=counts, minlength=len(self.batches)).astype(np.int64)
        spec.total = total
        if self._allowed_src is not None:
            spec.allowed = self._allowed_src
        self._spec = spec
        return spec

    # B: join ------------------------------------------------------------------------------------------------
    def _join(self, split: str, scope_global: bool = False) -> Spec:
        spec = self._read()
        spec.split, spec.orig = split, self._purpose == "epoch"
        if split == "batch":
            spec.edges, sizes = _batch_ranges(self.batches, self.batch_rows, self.rows, scope_global)
            spec.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
        self.mapper(_join_task, list(range(spec.buckets)), spec)
        metas = [part_metadata(p) for p in [*spec.parts("a", spec.n_a), *spec.parts("b", spec.buckets)]]
        unknown = sum(m["unknown"] for m in metas)
        if unknown:
            first = min(m["first_unknown"] for m in metas if m["first_unknown"] is not None)[1]
            raise InputError(
                f"the loss table of round {self.r} has {unknown} uids that were not in round "
                f"{self.r}'s manifest (e.g. {first}); record losses only for samples of that manifest"
            )
        dup = sum(m.get("dup", 0) for m in metas)
        if dup:
            first = min(m["first_dup"] for m in metas if m.get("first_dup") is not None)[1]
            raise InputError(
                f"the loss table of round {self.r} has {dup} duplicate uids (e.g. {first}); "
                "record each sample once per round (no resampling within a round)"
            )
        return spec

    # C and the results ------------------------------------------------------------------------------------
    def epoch_loss(self) -> float:
        """Σ over batches of the batch-mean training loss (``candidates.epoch_loss`` of the whole table)."""
        self._begin("epoch")
        spec = self._join("batch")
        self.mapper(_epoch_task, list(range(len(spec.edges))), spec)
        t = pa.concat_tables([read_part([p], 0, EPOCH_SCHEMA) for p in spec.parts("c", len(spec.edges))])
        return float(np.sum(t.column("sum").to_numpy() / t.column("size").to_numpy()))

    def candidates(self, *, rho_max: float, rho_min: float, scope_global: bool, seed: int, rng_round: int,
                   stream: int, prune_code: int | None) -> CandidateRanges:
        """SCAN's candidates of this table (``methods.scan_candidates``), by pool row range."""
        self._begin("candidates")
        spec = self._join("batch", scope_global)
        spec.scope_global, spec.rho_max, spec.rho_min = scope_global, rho_max, rho_min
        spec.seed, spec.rng_round, spec.stream, spec.prune_code = seed, rng_round, stream, prune_code
        n_c = len(spec.edges)
        self.mapper(_rank_task, list(range(n_c)), spec)
        metas = [part_metadata(p) for p in spec.parts("c", n_c)]
        kinds = np.zeros((3, spec.n_ranges), np.int64)
        for m in metas:
            kinds += np.stack([_unb64(k) for k in m["kinds"]])
        return CandidateRanges(spec, n_c, kinds.sum(axis=1), kinds.sum(axis=0))

    def losses_by_range(self) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
        """(pool rows, training loss (loss_a + loss_b) / 2 or loss_a, float64) a pool row range at a time."""
        self._begin("scores")
        spec = self._join("row")
        schema = _b_schema(spec.loss_b, False)
        for d in range(spec.n_ranges):
            t = read_part(spec.parts("b", spec.buckets), d, schema)
            a = t.column("loss_a").to_numpy().astype(np.float64)
            loss = a if not spec.loss_b else (a + t.column("loss_b").to_numpy().astype(np.float64)) / 2.0
            yield t.column("row").to_numpy(), loss


def _batch_ranges(batches: np.ndarray, rows: np.ndarray, per_task: int, one: bool
                  ) -> tuple[list[int], npt.NDArray[np.int64]]:
    """Consecutive batch ids cut into ranges of about ``per_task`` rows: a range starts at each batch whose
    first row is past the next multiple of ``per_task`` (so a range holds at most ``per_task`` rows plus one
    batch). Returns the first id of each range and its rows. ``one``: a single range (the whole table is
    ranked at once). Where the cuts fall changes no result, only the tasks' sizes."""
    if one or len(batches) == 0:
        return [int(batches[0]) if len(batches) else 0], np.array([int(rows.sum())], np.int64)
    before = np.cumsum(rows) - rows  # rows in earlier batches
    starts = np.flatnonzero(np.r_[True, np.diff(before // per_task) > 0])
    sizes = np.diff(np.r_[before[starts], before[-1] + rows[-1]]).astype(np.int64)
    return batches[starts].astype(np.int64).tolist(), sizes


def local_mapper(fn: Callable[..., Any], items: list[Any], spec: Spec, progress: Progress | None = None) -> list[Any]:
    """Run the tasks here, one after the other."""
    out = []
    for it in items:
        out.append(fn(it, spec))
        if progress is not None:
            progress.advance(1)
    return out


def engine_mapper(engine: Any, progress: Progress | None = None) -> Mapper:
    """Run the tasks on ``engine`` (``Engine.map``: local processes, Ray), or here when it runs work in this
    process; each pass is reported to ``progress`` (one unit per task)."""
    bar = progress or NullProgress()

    def run(fn: Callable[..., Any], items: list[Any], spec: Spec) -> list[Any]:
        bar.start(f"bootstrap: {_PASSES.get(fn.__name__, fn.__name__)}", total=len(items), unit="tasks")
        try:
            if engine is None or not engine.distributed:
                return local_mapper(fn, items, spec, bar)
            return engine.map(fn, items, {"spec": spec}, bar) if items else []
        finally:
            bar.finish()

    return run


_PASSES = {"_read_task": "read losses", "_join_task": "join uids", "_rank_task": "rank batches",
           "_epoch_task": "epoch loss"}
