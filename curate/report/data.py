"""What a report reads from a run folder: CLIP scores, selections, bootstrap rounds and their losses.

Every loader tolerates a partial run: a missing stage gives an empty result, never an error. A stage
whose files are unreadable raises :class:`curate.errors.CurateError`, which the report shows as a note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import InputError
from curate.fs import read_json
from curate.io.tables import embedding_files, read_parquet
from curate.rundir import RunDir

#: Scores-table columns a report uses (the others are left on disk).
SELECTION_COLUMNS = ("uid", "shard", "key", "selected", "rank", "reason", "score", "gain", "partition")

#: What the ``score`` column of each selection method means (axis labels).
SCORE_LABELS: dict[str, str] = {
    "clip-score": "CLIP score",
    "clipcov": "unary gain u_i",
    "random": "random key",
    "semdedup": "1 - max cosine to an earlier cluster mate",
    "negcliploss": "negCLIPLoss (CLIP score - batch normalisation term)",
    "normsim": "NormSim (image similarity to the target set)",
    "combine": "recipe (weighted sum of normalised scores)",
    "metaclip": "-log10 of the smallest cap at which the sample is kept",
}
#: Score values that stand for "nothing to compare with" (semdedup: 2 = first member of its cluster).
SCORE_SENTINELS: dict[str, float] = {"semdedup": 2.0}
#: Methods whose score spans decades and reads best on a log axis (semdedup's cosine distances).
SCORE_LOG = frozenset({"semdedup"})
#: Where a method records the score that separates kept from pruned: (header part, key), first found wins.
SCORE_CUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "clip-score": (("info", "effective_threshold"), ("params", "threshold")),
    "semdedup": (("info", "effective_eps"), ("params", "eps")),
    "negcliploss": (("info", "effective_threshold"), ("params", "threshold")),
    "combine": (("info", "effective_threshold"), ("params", "threshold")),
}
#: The same, as a short label under gallery thumbnails (None: not worth showing there).
SCORE_SHORT: dict[str, str | None] = {
    "clip-score": None,  # the CLIP score is shown anyway
    "clipcov": "u_i",
    "random": None,
    "semdedup": "1-dup sim",
    "negcliploss": "negCLIPLoss",
    "normsim": "NormSim",
    "combine": "recipe",
    "metaclip": "-log10 cap",
}


@dataclass
class Embeddings:
    """uid and CLIP score of every embedded sample (NaN where the sample has no caption)."""

    uid: pa.Array
    shard: pa.Array
    key: pa.Array
    clip_score: np.ndarray
    shards: list[str]

    def __len__(self) -> int:
        return len(self.uid)

    def index(self, uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each uid in the embeddings; -1 for uids that are not embedded."""
        return pc.index_in(uids, value_set=self.uid).fill_null(-1).to_numpy(zero_copy_only=False)

    def lookup(self, uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """CLIP score of each uid (NaN for uids that are not embedded)."""
        idx = self.index(uids)
        out = np.full(len(idx), np.nan, np.float32)
        ok = idx >= 0
        out[ok] = self.clip_score[idx[ok]]
        return out


def load_embeddings(run: RunDir) -> Embeddings:
    files = embedding_files(run.root)
    cols: dict[str, list[pa.Array]] = {"uid": [], "shard": [], "key": []}
    scores: list[np.ndarray] = []
    shards: list[str] = []
    for f in files:
        t = read_parquet(f, ["uid", "shard", "key", "clip_score"])
        for c, chunks in cols.items():
            chunks.extend(t.column(c).cast(pa.string()).chunks)
        scores.append(t.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32))
        shards.append(f.stem)
    arr = {c: pa.concat_arrays(v) if v else pa.array([], pa.string()) for c, v in cols.items()}
    return Embeddings(arr["uid"], arr["shard"], arr["key"], np.concatenate(scores) if scores
                      else np.zeros(0, np.float32), shards)


@dataclass
class Selection:
    """One ``RUN/selections/NAME``: its manifest header and per-sample score table."""

    name: str
    header: dict[str, Any]
    table: pa.Table  # SELECTION_COLUMNS that exist in the file

    @property
    def method(self) -> str:
        return str(self.header.get("method") or self.header.get("params", {}).get("method") or "?")

    @property
    def selected(self) -> np.ndarray:
        return self.table.column("selected").fill_null(False).to_numpy(zero_copy_only=False)

    @property
    def reasons(self) -> np.ndarray:
        return self.table.column("reason").fill_null("?").to_numpy(zero_copy_only=False).astype(str)

    @property
    def cut(self) -> float | None:
        """The score that separates kept from pruned, for methods that have one (:data:`SCORE_CUTS`)."""
        for part, key in SCORE_CUTS.get(self.method, ()):
            v = (self.header.get(part) or {}).get(key)
            if isinstance(v, (int, float)):
                return float(v)
        return None

    def column(self, name: str) -> np.ndarray | None:
        """A numeric column as float64 with NaN for nulls, or None when the method has no such column."""
        if name not in self.table.column_names:
            return None
        return self.table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)

    def partition_names(self, n: int) -> list[str]:
        """Display names of partitions 0..n-1: class names of zero-shot partitions, metadata entries of
        metaclip, else ``cluster k``."""
        params = self.header.get("params", {})
        if self.method == "metaclip":  # partitions are metadata entries
            from curate.select.metaclip import load_metadata

            try:
                md = load_metadata(params.get("metadata", ""))
            except InputError:  # the metadata file moved since the selection ran
                md = None
            if md is not None and md.sha256 == params.get("metadata_sha256") and len(md.entries) >= n:
                return md.entries[:n]
            return [f"entry {k}" for k in range(n)]
        kmeans = self.method != "clipcov" or str(params.get("partition", "imagenet")).startswith("kmeans")
        names: list[str] | None = None
        if kmeans:
            return [f"cluster {k}" for k in range(n)]
        if params.get("classes"):
            from curate.select.partition import read_class_names

            try:
                names = read_class_names(params["classes"])
            except InputError:  # the class file moved since the selection ran
                names = None
        else:
            try:
                from curate.models import imagenet_zeroshot_metadata

                names = imagenet_zeroshot_metadata()[0]
            except Exception:  # open_clip missing or broken: fall back to numbers
                names = None
        if names is None or len(names) < n:
            return [f"class {k}" for k in range(n)]
        return list(names[:n])


def _normalise(table: pa.Table, header: dict[str, Any], emb: Embeddings) -> pa.Table:
    """Add ``shard``, ``key`` (from the embeddings) and ``reason`` to score tables that lack them."""
    if "selected" not in table.column_names:
        raise InputError("scores table has no 'selected' column")
    if "shard" not in table.column_names or "key" not in table.column_names:
        idx = emb.index(table.column("uid"))
        take = pa.array(idx, mask=idx < 0)
        for c, arr in (("shard", emb.shard), ("key", emb.key)):
            if c not in table.column_names:
                table = table.append_column(c, arr.take(take).fill_null("?"))
    if "reason" not in table.column_names:
        reasons = list((header.get("counts") or {}).get("pruned_by_reason") or {})
        why = reasons[0] if len(reasons) == 1 else "pruned"
        sel = table.column("selected").fill_null(False).to_numpy(zero_copy_only=False)
        table = table.append_column("reason", pa.array(np.where(sel, "kept", why)))
    return table


def load_selections(run: RunDir, emb: Embeddings, names: list[str] | None = None,
                    notes: dict[str, str] | None = None) -> list[Selection]:
    """Selections with both files present, sorted by name (or in the order of ``names``).

    A selection whose files cannot be read is left out; ``notes["selection NAME"]`` says why.
    """
    found = run.selection_names()
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            have = ", ".join(found) or "none"
            raise InputError(f"no selection {missing[0]!r} in {run.root} (selections: {have})")
        found = list(names)
    out = []
    for name in found:
        d = run.selection_dir(name)
        if not (d / "scores.parquet").exists() or not (d / "manifest.json").exists():
            continue
        try:
            header = read_json(d / "manifest.json")
            cols = [c for c in SELECTION_COLUMNS if c in _parquet_columns(d / "scores.parquet")]
            table = _normalise(read_parquet(d / "scores.parquet", cols), header, emb)
        except InputError as exc:
            if notes is None:
                raise
            notes[f"selection {name}"] = str(exc)
            continue
        out.append(Selection(name, header, table))
    return out


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"corrupt Parquet file {path}: {str(exc).splitlines()[0]}") from None


@dataclass
class Round:
    """One bootstrap round: its manifest header and, when recorded, the mean training loss."""

    round: int
    header: dict[str, Any]
    mean_loss: float | None = None
    loss_rows: int = 0
    loss_note: str | None = None

    @property
    def phase(self) -> str:
        return str(self.header.get("phase") or "?")

    @property
    def counts(self) -> dict[str, Any]:
        return dict(self.header.get("counts") or {})

    @property
    def kept(self) -> int:
        return int(self.counts.get("kept") or 0)

    @property
    def pruned_by_reason(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in (self.counts.get("pruned_by_reason") or {}).items()}

    @property
    def rho_cur(self) -> float | None:
        v = (self.header.get("bootstrap") or {}).get("rho_cur")
        return float(v) if v is not None else None

    @property
    def loss_round(self) -> int | None:
        """The round whose losses decided this one's candidates (SCAN mutation rounds)."""
        cand = (self.header.get("bootstrap") or {}).get("candidates") or {}
        v = cand.get("from_round")
        return int(v) if v is not None else None


def sample_losses(run: RunDir, round_: int) -> pa.Table | None:
    """uid, loss (mean of loss_a and loss_b when both are recorded) of one round; None when not recorded."""
    from curate.bootstrap.data import loss_files, read_losses

    if not loss_files(run, round_):
        return None
    table, _ = read_losses(run, round_)
    a = table.column("loss_a").cast(pa.float64())
    b = table.column("loss_b").cast(pa.float64())
    loss = a if b.null_count == table.num_rows else pc.divide(pc.add(a, b.fill_null(a)), 2.0)
    return pa.table({"uid": table.column("uid"), "loss": loss})


def load_rounds(run: RunDir) -> list[Round]:
    """Every bootstrap round with a manifest, in order, with its mean loss where losses exist."""
    d = run.manifests_dir
    paths = sorted(d.glob("round-*.json")) if d.is_dir() else []
    out = []
    for p in paths:
        try:
            n = int(p.stem.split("-", 1)[1])
        except ValueError:
            continue
        r = Round(n, read_json(p))
        try:
            losses = sample_losses(run, n)
        except InputError as exc:
            r.loss_note = str(exc)
            losses = None
        if losses is not None and losses.num_rows:
            v = losses.column("loss").to_numpy(zero_copy_only=False)
            v = v[np.isfinite(v)]
            r.mean_loss = float(v.mean()) if len(v) else None
            r.loss_rows = losses.num_rows
        out.append(r)
    return out


@dataclass
class RoundSamples:
    """Pool rows of one round in the given shards, with their fate: kept or pruned with a reason."""

    round: Round
    table: pa.Table  # uid, shard, key, selected, reason
    loss: np.ndarray  # per row: the loss of the round whose losses decided this one (NaN if not recorded)
    loss_round: int | None = None


def round_samples(run: RunDir, rnd: Round, state: dict[str, Any] | None, shards: list[str]) -> RoundSamples:
    """Join a round's decisions with the pool rows of ``shards`` (memory bounded by those shards)."""
    from curate.bootstrap.data import load_round_pool
    from curate.bootstrap.rounds import decisions_path

    pool = load_round_pool(run.root, (state or {}).get("init"))
    in_shards = pc.is_in(pool.table.column("shard"), value_set=pa.array(shards, pa.string()))
    rows = np.flatnonzero(in_shards.to_numpy(zero_copy_only=False))
    code = np.zeros(len(rows), np.int64)  # 0 = kept, else 1 + index into names
    names: list[str] = []
    path = decisions_path(run, rnd.round)
    if path.exists():
        dec = read_parquet(path, ["row", "pruned", "reason"])
        dec = dec.filter(dec.column("pruned"))
        pos = np.searchsorted(rows, dec.column("row").to_numpy())
        hit = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == dec.column("row").to_numpy())
        why = dec.column("reason").cast(pa.string()).fill_null("pruned").dictionary_encode().combine_chunks()
        names = why.dictionary.to_pylist()
        code[pos[hit]] = why.indices.to_numpy(zero_copy_only=False)[hit] + 1
    reason = np.array(["kept", *names], dtype=object)[code].astype(str)
    table = pool.table.select(["uid", "shard", "key"]).take(pa.array(rows))
    table = table.append_column("selected", pa.array(code == 0)).append_column("reason", pa.array(reason))
    loss_round = rnd.loss_round if rnd.loss_round is not None else (rnd.round - 1 if rnd.round > 0 else None)
    loss = np.full(len(rows), np.nan)
    found = None
    if loss_round is not None:
        try:
            lt = sample_losses(run, loss_round)
        except InputError:
            lt = None
        if lt is not None:
            idx = pc.index_in(table.column("uid"), value_set=lt.column("uid")).fill_null(-1).to_numpy(
                zero_copy_only=False)
            loss[idx >= 0] = lt.column("loss").to_numpy(zero_copy_only=False)[idx[idx >= 0]]
            found = loss_round
    return RoundSamples(rnd, table, loss, found)


@dataclass
class RunData:
    """Everything a report shows, read once."""

    run: RunDir
    record: dict[str, Any]
    summary: dict[str, Any]  # curate.inspect.inspect_run
    embeddings: Embeddings
    selections: list[Selection] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    state: dict[str, Any] | None = None
    notes: dict[str, str] = field(default_factory=dict)  # stage -> why it could not be read

    @property
    def shard_urls(self) -> dict[str, str]:
        return {s["name"]: s["url"] for s in self.record.get("embed", {}).get("shards", []) if "url" in s}


def load_run(run_root: str | os.PathLike[str], selections: list[str] | None = None) -> RunData:
    """Read a run for a report; stages that are absent are empty, unreadable ones leave a note."""
    from curate.bootstrap.rounds import load_state
    from curate.inspect import inspect_run

    run = RunDir(run_root)
    record = run.require()
    data = RunData(run, record, inspect_run(run.root), load_embeddings(run))
    data.selections = load_selections(run, data.embeddings, selections, data.notes)
    try:
        data.rounds = load_rounds(run)
        data.state = load_state(run.root)
    except InputError as exc:
        data.notes["rounds"] = str(exc)
    return data
