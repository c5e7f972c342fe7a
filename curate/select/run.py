"""``run_selection``: score, decide, and write ``RUN/selections/NAME/`` (scores table + manifest).

Outputs of one selection are written into a temporary folder next to the final one, which then
replaces it in one rename, so a reader sees either the old selection or the new one, never a mix.
The same inputs, method, options and seed give byte-identical tables.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.bootstrap.data import hash_strings
from curate.embed.state import check_pool_complete
from curate.engines import Engine, make_engine
from curate.errors import UsageError
from curate.fs import exclusive_lock, make_temp_dir, remove_stale_locks
from curate.io.manifest import Manifest, build_manifest, write_manifest
from curate.io.tables import write_table
from curate.io.tarwrite import remove_dead_temps
from curate.progress import NullProgress, Progress
from curate.run import RunDir, read_json
from curate.select.base import Decision, Scores, SelectContext, get_selector, resolve_budget
from curate.select.pool import load_pool

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,119}$")


@dataclass
class SelectionResult:
    """What ``run_selection`` wrote, with the numbers the CLI summarises."""

    name: str
    path: Path
    manifest: Manifest
    pool_size: int
    kept: int
    pruned_by_reason: dict[str, int]
    per_partition: list[dict[str, Any]] = field(default_factory=list)  # label, pool, kept
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (``--json``)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "method": self.manifest.header.get("method"),
            "pool": self.pool_size,
            "kept": self.kept,
            "pruned_by_reason": self.pruned_by_reason,
            "per_partition": self.per_partition,
            "info": self.info,
            "content_hash": self.manifest.header.get("content_hash"),
            "seconds": round(self.seconds, 3),
        }


@contextlib.contextmanager
def selection_lock(run: RunDir, name: str) -> Iterator[None]:
    """Hold the lock of selection ``name`` (``RUN/selections/.NAME.lock``, removed on release).

    Every command that writes or deletes a selection holds it, so two of them never write one name at
    once: the second is refused with one line (it does not wait: a selection can take hours, and the
    name would then hold the first one's result, or a clash of parameters, anyway).
    """
    folder = run.root / "selections"
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        remove_stale_locks(folder, ".*.lock")  # left by killed writers
        with exclusive_lock(folder / f".{name}.lock", f"selection {name!r} is being written by another curate "
                            "command; wait for it to finish or choose another --name", remove=True):
            yield
    finally:
        if created:  # a command that failed before writing leaves no empty selections/ behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"bad selection name {name!r}: use letters, digits, '.', '_', '+', '-' (max 120)")
    return name


def _nullable(values: np.ndarray) -> pa.Array:
    """A numpy column as Arrow, with NaN (floats) or -1 (partition ints) as null."""
    if values.dtype.kind == "f":
        return pa.array(values, mask=np.isnan(values))
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int32), mask=values < 0)
    return pa.array(values)


def scores_table(ids: pa.Table, scores: Scores, decision: Decision) -> pa.Table:
    """``uid, shard, key, position, selected, rank, reason`` + the method's columns."""
    n = ids.num_rows
    rank = np.full(n, -1, np.int64)
    rank[decision.order] = np.arange(len(decision.order))
    cols: dict[str, pa.Array] = {
        "selected": pa.array(rank >= 0),
        "rank": pa.array(rank, mask=rank < 0),
        "reason": pa.DictionaryArray.from_arrays(
            pa.array(scores.reasons.codes), pa.array(scores.reasons.names)
        ).dictionary_decode(),
    }
    for name, values in {**scores.columns, **decision.columns}.items():
        cols[name] = _nullable(np.asarray(values))
    table = ids
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table


def _partition_counts(scores: Scores, selected: np.ndarray) -> list[dict[str, Any]]:
    part = scores.columns.get("partition")
    if part is None:
        return []
    part = np.asarray(part)
    ok = part >= 0
    size = np.bincount(part[ok], minlength=1)
    kept = np.bincount(part[ok & selected], minlength=len(size))
    names = scores.state.get("names")
    rows = [
        {"partition": (names[k] if names and k < len(names) else str(k)), "pool": int(size[k]), "kept": int(kept[k])}
        for k in np.flatnonzero(size)
    ]
    return sorted(rows, key=lambda r: (-r["pool"], r["partition"]))


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final`` (replacing an old folder) with renames only."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


@contextlib.contextmanager
def _engine(engine: Engine | str | None, options: Mapping[str, Any] | None, device: str) -> Iterator[Engine | None]:
    """The engine to use: a given instance as is, or one made from a name and closed afterwards."""
    if engine is None or isinstance(engine, Engine):
        if options:
            raise UsageError("engine options need an engine name")
        yield engine
        return
    opts = dict(options or {})
    if engine == "ray":
        opts.setdefault("device", device if device in ("auto", "cpu", "cuda") else "auto")
    with make_engine(engine, **opts) as eng:
        yield eng


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


def _prepare(
    run_root: str | os.PathLike[str], method: str, fraction: float | None, count: int | None, name: str | None,
    seed: int, options: Mapping[str, Any] | None, force: bool, class_text: np.ndarray | None,
    allow_partial: bool = False,
) -> tuple[SelectionPlan, Any, Any]:
    """Check everything a selection needs before any work: the plan, the selector and the pool."""
    run = RunDir(run_root)
    run.require()
    cls = get_selector(method)
    selector = cls(cls.config_class.from_options(method, dict(options or {})))
    if name is not None:
        check_name(name)
    if (fraction is not None or count is not None) and cls.budget_mode == "none":
        raise UsageError(f"--method {method} takes no --fraction/--count")
    pending = check_pool_complete(run, allow_partial)
    pool = load_pool(run.root, selector.needs)
    pool_info = {"samples": len(pool), "digest": hash_strings(pool.ids.column("uid")), "pending_shards": len(pending),
                 "partial": bool(pending)}
    budget = resolve_budget(fraction, count, len(pool))
    selector.check_budget(budget)
    selector.check_pool(len(pool))
    name = check_name(name or selector.default_name(fraction, count, seed))
    params: dict[str, Any] = {"method": method, "fraction": fraction, "count": count, **selector.config.to_dict()}
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
    plan = SelectionPlan(name, final, method, len(pool), budget, params, seed, existing, pool_info)
    return plan, selector, pool


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
) -> SelectionPlan:
    """Check a selection's inputs and options as :func:`run_selection` does and say what it would write.

    Nothing is scored and nothing is written; the errors are those ``run_selection`` would raise first.
    """
    return _prepare(run_root, method, fraction, count, name, seed, options, force, class_text, allow_partial)[0]


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
        force: replace an existing selection of this name made with different parameters.
        class_text, class_names: precomputed class embeddings for clipcov's zero-shot partition.
        command: the command line to record in provenance.
        engine: where the heavy per-partition work runs: an :class:`~curate.engines.Engine` (started and
            closed by the caller) or a registered engine name (``local``, ``ray``) with ``engine_options``
            (e.g. ``{"address": "auto"}``). Every engine selects the same samples with the same scores.
        allow_partial: select from a run whose embed has not finished (pending shards); otherwise that is
            an ``InputError``. The manifest header records the pool either way (``pool``: samples, digest,
            pending shards), and a selection made on another pool is not replaced without ``force``.
    """
    t0 = time.perf_counter()
    plan, selector, pool = _prepare(run_root, method, fraction, count, name, seed, options, force, class_text,
                                    allow_partial)
    run, name, params, final, budget = RunDir(run_root), plan.name, plan.params, plan.path, plan.budget
    with selection_lock(run, name):  # one writer per name; a second one is refused at once
        with _engine(engine, engine_options, device) as eng:
            ctx = SelectContext(run.root, seed, device, progress or NullProgress(), class_text, class_names, eng)
            scores = selector.score(pool, ctx)
            decision = selector.decide(pool, scores, budget, ctx)
        order = np.asarray(decision.order, np.int64)
        if not scores.eligible[order].all() or len(np.unique(order)) != len(order):
            raise AssertionError(f"selector {method} picked ineligible or repeated samples")
        if decision.reason is not None:
            scores.reasons.set(scores.eligible, decision.reason)
        scores.reasons.codes[order] = 0
        table = scores_table(pool.ids, scores, decision)
        info = {**scores.info, **decision.info}
        pruned = scores.reasons.counts()
        cmd = command or f"curate select --run {run.root} --method {method}"
        manifest = build_manifest(
            pool.ids.take(pa.array(order)),
            kind="selection",
            command=cmd,
            params=params,
            seed=seed,
            pool_size=len(pool),
            pruned_by_reason=pruned,
            extra={
                "method": method,
                "selection": name,
                "budget": budget,
                "info": info,
                "parents": decision.parents,
                "embeddings": {"rows": len(pool), "meta": pool.meta},
                "pool": plan.pool,
            },
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(final.parent, f".{name}.tmp-")  # left by a killed earlier attempt
        remove_dead_temps(final.parent, f".{name}.old-")
        tmp = make_temp_dir(final.parent, f".{name}.tmp-{os.getpid()}-")  # the umask's mode, not mkdtemp's 0700
        try:
            write_table(tmp / "scores.parquet", table)
            write_manifest(tmp / "manifest.parquet", manifest)
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        run.update_entry("selections", name, {
            "method": method,
            "params": params,
            "seed": seed,
            "pool": len(pool),
            "pool_partial": plan.pool["partial"],
            "kept": len(order),
            "manifest": str(Path("selections") / name / "manifest.parquet"),
            "content_hash": manifest.header["content_hash"],
        }, command=cmd)
    selected = np.zeros(len(pool), bool)
    selected[order] = True
    return SelectionResult(
        name=name,
        path=final,
        manifest=manifest,
        pool_size=len(pool),
        kept=len(order),
        pruned_by_reason=pruned,
        per_partition=_partition_counts(scores, selected),
        info=info,
        seconds=time.perf_counter() - t0,
    )
