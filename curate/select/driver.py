"""``run_selection``: run a method's pipeline and write ``RUN/selections/NAME/`` (scores table + manifest).

Outputs of one selection are written into a temporary folder next to the final one, which then
replaces it in one rename, so a reader sees either the old selection or the new one, never a mix.
The same inputs, method, options and seed give byte-identical tables.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.embed.state import check_pool_complete
from curate.engines import Engine, engine_scope
from curate.errors import UsageError
from curate.fs import read_json
from curate.io.manifest import Manifest, ManifestWriter, read_manifest
from curate.progress import NullProgress, Progress
from curate.rundir import RunDir, SelectionDraft, check_selection_name
from curate.schemas import ID_COLUMNS, scores_schema
from curate.select.base import DEFAULT_MEMORY, SelectContext, get_selector, resolve_budget
from curate.select.manage import dependents, input_selection
from curate.select.pipeline import (
    PerPartition,
    PipelineResult,
    WorkDir,
    iter_blocks,
    run_pipeline,
    table_columns,
    work_identity,
)
from curate.select.source import PoolSource


@dataclass
class SelectionResult:
    """What ``run_selection`` wrote, with the numbers the CLI summarises."""

    name: str
    path: Path
    header: dict[str, Any]
    pool_size: int
    kept: int
    pruned_by_reason: dict[str, int]
    per_partition: list[dict[str, Any]] = field(default_factory=list)  # label, pool, kept
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def manifest(self) -> Manifest:
        """The manifest, read from disk (its rows are only loaded when asked for)."""
        return read_manifest(self.path / "manifest.parquet")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (``--json``)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "method": self.header.get("method"),
            "pool": self.pool_size,
            "kept": self.kept,
            "pruned_by_reason": self.pruned_by_reason,
            "per_partition": self.per_partition,
            "info": self.info,
            "content_hash": self.header.get("content_hash"),
            "seconds": round(self.seconds, 3),
        }


def _nullable(values: np.ndarray) -> pa.Array:
    """A numpy column as Arrow, with NaN (floats) or -1 (partition ints) as null."""
    if values.dtype.kind == "f":
        return pa.array(values, mask=np.isnan(values))
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int32), mask=values < 0)
    return pa.array(values)


def scores_block(ids: pa.Table, blk: dict[str, Any], columns: dict[str, str]) -> pa.Table:
    """One block of ``scores.parquet``: ``uid, shard, key, position, selected, rank, reason`` + method columns."""
    rank = blk["rank"]
    names = np.asarray(blk["reason_names"], dtype=object)
    cols: dict[str, pa.Array] = {
        "selected": pa.array(blk["selected"]),
        "rank": pa.array(rank, mask=rank < 0),
        "reason": pa.array(names[blk["reason_codes"]].tolist(), pa.string()),
    }
    for name in columns:
        cols[name] = _nullable(np.asarray(blk["columns"][name]))
    return pa.Table.from_arrays([*(ids.column(n) for n in ID_COLUMNS), *cols.values()],
                                schema=scores_schema(columns))


def _write_outputs(folder: Path, res: PipelineResult, selector: Any) -> tuple[ManifestWriter, dict[str, int],
                                                                               np.ndarray | None]:
    """``scores.parquet`` block by block, and the manifest's rows; the pruned counts per reason and the
    (pool, kept) counts per partition."""
    pruned: dict[str, int] = {}
    per_part = None
    if res.part_sizes is not None:
        per_part = np.zeros((len(res.part_sizes), 2), np.int64)
    writer = ManifestWriter(folder / "manifest.parquet")
    table_writer = None
    try:
        for blk in iter_blocks(res, selector):
            table = scores_block(blk["ids"], blk, table_columns(selector, res))
            if table_writer is None:
                table_writer = pq.ParquetWriter(folder / "scores.parquet", table.schema)
            table_writer.write_table(table)
            codes, names = blk["reason_codes"], blk["reason_names"]
            c = np.bincount(codes, minlength=len(names))
            for i, n in enumerate(names):
                if i and c[i]:
                    pruned[n] = pruned.get(n, 0) + int(c[i])
            sel = blk["selected"]
            writer.add(blk["ids"].filter(pa.array(sel)))
            part = blk["partition"]
            if per_part is not None and part is not None:
                ok = part >= 0
                k = len(per_part)
                per_part[:, 0] += np.bincount(part[ok], minlength=k)
                per_part[:, 1] += np.bincount(part[ok & sel], minlength=k)
    except BaseException:
        writer.abort()
        raise
    finally:
        if table_writer is not None:
            table_writer.close()
    return writer, pruned, per_part


_PARTITION_OPTIONS = ("partition", "classes", "kmeans_sample")


def _per_partition(cls: Any, spec: str | None, opts: dict[str, Any]) -> tuple[PerPartition | None, dict[str, Any]]:
    """The per-partition budgets and the options they take from ``opts`` (for methods without partitions)."""
    from curate.select.partition import Partitioner, parse_per_partition

    if spec is None:
        return None, {}
    mode, cap = parse_per_partition(spec)
    if cls.budget_mode == "none":
        raise UsageError(f"--per-partition does not apply to --method {cls.name} (it has no budget)")
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    taken = {k: opts.pop(k) for k in _PARTITION_OPTIONS if k not in fields and opts.get(k) is not None}
    partitioner = None
    if not cls.own_partitions:
        partitioner = Partitioner(taken.get("partition", "imagenet"), taken.get("classes"), taken.get("kmeans_sample"))
        taken.setdefault("partition", "imagenet")
    return PerPartition(mode, cap, partitioner), {"per_partition": spec, **taken}


def _with_tag(name: str, pp_params: dict[str, Any]) -> str:
    """``clip-score-f0.3`` → ``clip-score-f0.3-pp-sqrt`` (``-km20``/``-cls`` for its own partitions)."""
    if not pp_params:
        return name
    mode = str(pp_params["per_partition"]).replace(":", "")
    part = pp_params.get("partition")
    if pp_params.get("classes"):
        tag = "-cls"
    elif part and part.startswith("kmeans:"):
        tag = f"-km{part.split(':')[1]}"
    elif part and part.startswith("selection:"):
        tag = f"-by-{part.split(':', 1)[1]}"
    else:
        tag = ""
    return f"{name}-pp-{mode}{tag}"


def _check_same_pool(name: str, old: Mapping[str, Any], pool: Mapping[str, Any]) -> None:
    """A selection of this name made on another pool (a run embedded further since) is not replaced
    silently: the pool is part of what makes two selections the same."""
    before = old.get("pool") or {}
    size = before.get("samples", (old.get("counts") or {}).get("pool"))
    if size == pool["samples"] and before.get("digest", pool["digest"]) == pool["digest"]:
        return
    what = (f"a pool of {size:,} samples" if isinstance(size, int) and size != pool["samples"]
            else "another pool of the same size")
    raise UsageError(f"selection {name!r} was made on {what}; the run's pool now has {pool['samples']:,} "
                     "samples: pass --force to replace it, or choose --name")


@dataclass
class SelectionPlan:
    """What ``run_selection`` would do (``curate select --dry-run``): checked, nothing computed or written."""

    name: str
    path: Path
    method: str
    pool_size: int
    budget: int | None  # samples to keep; None when the method's options decide (threshold, eps)
    params: dict[str, Any]
    seed: int
    existing: str  # "none", "same" (rewritten with the same parameters) or "replaced" (--force)
    pool: dict[str, Any] = field(default_factory=dict)  # samples, digest, pending_shards, partial

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "method": self.method, "pool": self.pool_size,
                "budget": self.budget, "params": self.params, "seed": self.seed, "existing": self.existing,
                "partial": self.pool.get("partial", False), "dry_run": True}


@dataclass
class _Prepared:
    plan: SelectionPlan
    selector: Any
    source: PoolSource
    per_partition: PerPartition | None


def _prepare(
    run_root: str | os.PathLike[str], method: str, fraction: float | None, count: int | None, name: str | None,
    seed: int, options: Mapping[str, Any] | None, force: bool, class_text: np.ndarray | None,
    allow_partial: bool = False, per_partition: str | None = None, memory: int = DEFAULT_MEMORY,
) -> _Prepared:
    """Check everything a selection needs before any work: the options, the pool, the name."""
    run = RunDir(run_root)
    run.require()
    cls = get_selector(method)
    opts = dict(options or {})
    pp, pp_params = _per_partition(cls, per_partition, opts)
    selector = cls(cls.config_class.from_options(method, opts))
    if name is not None:
        check_selection_name(name)
    if (fraction is not None or count is not None) and cls.budget_mode == "none":
        raise UsageError(f"--method {method} takes no --fraction/--count")
    if memory < 1 << 20:
        raise UsageError(f"memory budget must be at least 1 MiB, got {memory} bytes")
    pending = check_pool_complete(run, allow_partial)
    source = PoolSource.open(run.root)
    source.require(selector.needs | selector.partition_parts)
    pool_info = {"samples": len(source), "digest": source.uid_digest(), "pending_shards": len(pending),
                 "partial": bool(pending)}
    budget = resolve_budget(fraction, count, len(source))
    selector.check_budget(budget)
    selector.check_pool(len(source))
    inputs = list(selector.input_selections())
    by = getattr(pp.partitioner, "selection", None) if pp is not None else None
    if by:
        inputs.append((by, f"--partition selection:{by}"))
    for input_name, option in inputs:  # before anything runs (and in --dry-run): they exist, on this pool
        input_selection(run.root, input_name, len(source), option)
    name = check_selection_name(name or _with_tag(selector.default_name(fraction, count, seed), pp_params))
    params: dict[str, Any] = {"method": method, "fraction": fraction, "count": count, **selector.config.to_dict(),
                              **selector.inputs()}
    params.update(pp_params)
    if class_text is not None:
        params["class_text"] = f"given ({class_text.shape[0]} classes)"
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    final = run.selection_dir(name)
    existing = "none"
    if final.exists():
        old = read_json(final / "manifest.json") if (final / "manifest.json").exists() else {}
        existing = "same" if old.get("params") == params and old.get("seed") == seed else "replaced"
        if existing == "replaced" and not force:
            raise UsageError(f"selection {name!r} exists with other parameters; pass --force or choose --name")
        if not force:
            _check_same_pool(name, old, pool_info)
    plan = SelectionPlan(name, final, method, len(source), budget, params, seed, existing, pool_info)
    return _Prepared(plan, selector, source, pp)


def plan_selection(
    run_root: str | os.PathLike[str],
    method: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    name: str | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    class_text: np.ndarray | None = None,
    allow_partial: bool = False,
    per_partition: str | None = None,
    memory: int = DEFAULT_MEMORY,
) -> SelectionPlan:
    """Check a selection's inputs and options as :func:`run_selection` does and say what it would write.

    Nothing is scored and nothing is written; the errors are those ``run_selection`` would raise first.
    """
    return _prepare(run_root, method, fraction, count, name, seed, options, force, class_text, allow_partial,
                    per_partition, memory).plan


def run_selection(
    run_root: str | os.PathLike[str],
    method: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    name: str | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    device: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    class_text: np.ndarray | None = None,
    class_names: list[str] | None = None,
    command: str | None = None,
    engine: Engine | str | None = None,
    engine_options: Mapping[str, Any] | None = None,
    allow_partial: bool = False,
    memory: int = DEFAULT_MEMORY,
    per_partition: str | None = None,
) -> SelectionResult:
    """Run one selection method over a run's embeddings and write its score table and manifest.

    Args:
        run_root: the run folder (needs ``run.json`` and ``embeddings/``).
        method: a registered selector name (see :func:`curate.select.list_selectors`).
        fraction: keep ``int(pool * fraction)`` samples; or ``count`` samples (one of them, or
            neither for methods whose options replace a budget, e.g. clip-score ``threshold``).
        name: the selection's folder name in ``RUN/selections/`` (default: the method, every option that
            changes the result and the budget, see ``Selector.default_name``).
        seed: seeds every random choice (random subset, k-means).
        options: the method's options (fields of its config class); ``None`` values are ignored.
        device: ``auto``, ``cpu`` or ``cuda[:i]`` for torch work (clipcov).
        force: replace an existing selection of this name made with different parameters or on another pool.
        class_text, class_names: precomputed class embeddings for clipcov's zero-shot partition.
        command: the command line to record in provenance.
        engine: where the tasks run: an :class:`~curate.engines.Engine` (started and closed by the
            caller) or a registered engine name (``local``, ``ray``) with ``engine_options`` (e.g.
            ``{"address": "auto"}``, ``{"workers": 4}``). Every engine selects the same samples with the
            same scores.
        allow_partial: select from a run whose embed has not finished (pending shards); otherwise that is
            an ``InputError``. The manifest header records the pool either way (``pool``: samples, digest,
            pending shards), and a selection made on another pool is not replaced without ``force``.
        memory: bytes a task or the driver may hold besides one partition's embeddings; above it,
            rankings and picks spill to the selection's work folder. The result does not depend on it.
        per_partition: ``proportional``, ``sqrt`` or ``cap:T``: budgets per partition (the method's own
            partitions, or those of the ``partition``/``classes``/``kmeans_sample`` options for methods
            without partitions), so that every partition keeps its share (docs/select.md).
    """
    t0 = time.perf_counter()
    prep = _prepare(run_root, method, fraction, count, name, seed, options, force, class_text, allow_partial,
                    per_partition, memory)
    plan, selector, source = prep.plan, prep.selector, prep.source
    run = RunDir(run_root)
    with run.selection_lock(plan.name):  # one writer per name; a second one is refused at once
        work = WorkDir(plan.path.parent / f".work-{plan.name}")
        identity = work_identity(source, method, plan.params, seed, plan.budget, memory)
        ray_device = device if device in ("auto", "cpu", "cuda") else "auto"
        with engine_scope(engine, engine_options, ray_device) as eng:
            ctx = SelectContext(run.root, seed, device, progress or NullProgress(), class_text, class_names, eng,
                                memory=memory)
            res = run_pipeline(selector, source, plan.budget, ctx, work, identity, prep.per_partition)
        selector.check_result(res.kept)
        cmd = command or f"curate select --run {run.root} --method {method}"
        try:
            with run.write_selection(plan.name) as draft:
                written = _write_selection(draft, plan, selector, source, res, cmd)
        finally:
            res.picks.close()
        work.remove()
    if plan.existing == "replaced":
        _warn_dependents(run.root, plan.name)
    return _result(plan, selector, res, written, time.perf_counter() - t0)


def _warn_dependents(run_root: Path, name: str) -> None:
    """After ``--force`` replaced selection ``name``: say which selections were computed from the old one."""
    deps = dependents(run_root, name)
    if deps:
        logging.getLogger("curate.select").warning(
            f"selection {name!r} was replaced; made from the old one (re-run them): {', '.join(deps)}")


@dataclass
class _Written:
    header: dict[str, Any]
    pruned: dict[str, int]
    per_partition: np.ndarray | None
    info: dict[str, Any]


def _write_selection(draft: SelectionDraft, plan: SelectionPlan, selector: Any, source: PoolSource,
                     res: PipelineResult, cmd: str) -> _Written:
    """Write the score table and manifest into the draft folder and fill in its run.json record."""
    writer, pruned, per_part = _write_outputs(draft.folder, res, selector)
    info = {**selector.info(res.shared), **res.info}
    if res.part_sizes is not None:
        info["nonempty_classes" if plan.method == "clipcov" else "nonempty_partitions"] = int(
            (res.part_sizes > 0).sum())
    header = writer.finish(
        kind="selection",
        command=cmd,
        params=plan.params,
        seed=plan.seed,
        pool_size=len(source),
        pruned_by_reason=pruned,
        extra={
            "method": plan.method,
            "selection": plan.name,
            "budget": plan.budget,
            "info": info,
            "parents": _parents(selector, res.shared),
            "embeddings": {"rows": len(source), "meta": source.meta},
            "pool": plan.pool,
        },
    )
    draft.record = {
        "method": plan.method,
        "params": plan.params,
        "seed": plan.seed,
        "pool": len(source),
        "pool_partial": plan.pool["partial"],
        "kept": res.kept,
        "content_hash": header["content_hash"],
    }
    draft.command = cmd
    return _Written(header, pruned, per_part, info)


def _parents(selector: Any, shared: dict[str, Any]) -> list[dict[str, Any]]:
    """The selections this one was computed from: the method's inputs, and the partitions' selection."""
    parent = (shared.get("per_partition") or {}).get("parent")
    return [*selector.parents(shared), *([parent] if parent else [])]


def _result(plan: SelectionPlan, selector: Any, res: PipelineResult, written: _Written,
            seconds: float) -> SelectionResult:
    per_part = written.per_partition
    names = selector.partition_names(res.shared)
    rows = [{"partition": (names[k] if names and k < len(names) else str(k)), "pool": int(p), "kept": int(kk)}
            for k, (p, kk) in enumerate(per_part) if p] if per_part is not None else []
    return SelectionResult(
        name=plan.name,
        path=plan.path,
        header=written.header,
        pool_size=plan.pool_size,
        kept=res.kept,
        pruned_by_reason=written.pruned,
        per_partition=sorted(rows, key=lambda r: (-r["pool"], r["partition"])),
        info=written.info,
        seconds=seconds,
    )
