"""List and delete a run's selections (``curate selections``), and open one as the input of another.

A selection is the folder ``RUN/selections/NAME`` plus its record in ``run.json`` (written together by
``curate select`` and ``curate bootstrap coreset``). Deleting one is safe:

* only a selection that ``run.json`` records, whose folder holds nothing but the files curate writes
  there (``scores.parquet``, ``manifest.parquet``, ``manifest.json`` and the default export files);
* never one that another selection was computed from (set algebra lists it among its ``parents``) or
  that the bootstrap rounds start from (``--init``): delete those first, or ``bootstrap --reset``;
* under the selection's lock (a ``curate select`` writing that name refuses, and vice versa); the
  folder is first renamed away, then the run.json record is removed, then the files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate.errors import InputError, UsageError
from curate.fs import read_json, remove_dead_temps
from curate.io.export import DEFAULT_NAMES
from curate.rundir import RunDir, check_selection_name

#: The files curate writes in a selection folder (select, coreset, and export's default names).
SELECTION_FILES = ("scores.parquet", "manifest.parquet", "manifest.json", *DEFAULT_NAMES.values())


@dataclass
class InputSelection:
    """An earlier selection of the same pool that a new one reads (set algebra, combine, partitions)."""

    name: str
    scores: Path  # its score table, one row per pool sample in pool order
    manifest: Path
    header: dict[str, Any]

    def parent(self, run_root: str | os.PathLike[str], **extra: Any) -> dict[str, Any]:
        """The record of this input in the new selection's header (``parents``)."""
        return {"name": self.name, "path": str(self.manifest.relative_to(run_root)),
                "method": self.header.get("method"), "content_hash": self.header.get("content_hash"), **extra}


def input_rows(name: str, scores: str | os.PathLike[str], start: int, uids: Any, columns: list[str]) -> Any:
    """Rows ``start ..`` of an earlier selection's score table (``uid`` and ``columns``), one per uid of the
    block (``uids``, a pyarrow array), checked to be the block's samples in the same order."""
    from curate.select.source import read_rows

    t = read_rows(str(scores), start, start + len(uids), ["uid", *columns])
    if not t.column("uid").equals(uids):
        raise InputError(f"selection {name!r} holds uids that are not in this run's embeddings; re-run it")
    return t


def input_selection(run_root: str | os.PathLike[str], name: str, pool_size: int, what: str = "") -> InputSelection:
    """Selection ``name`` of the run, checked to be one of this pool (``pool_size`` rows); one-line errors
    otherwise (``what`` prefixes them, e.g. ``--partition selection:NAME``)."""
    import pyarrow.parquet as pq

    from curate.io.manifest import read_manifest_header

    prefix = f"{what}: " if what else ""
    run = RunDir(run_root)
    path, scores = run.selection_manifest(check_selection_name(name)), run.selection_scores(name)
    if not path.exists() or not scores.exists():
        raise InputError(f"{prefix}no selection {name!r} in {run_root}/selections; run 'curate select --name {name}'")
    rows = pq.read_metadata(scores).num_rows
    if rows != pool_size:
        raise InputError(f"{prefix}selection {name!r} was made on a pool of {rows} samples, the run has "
                         f"{pool_size} now; re-run it")
    return InputSelection(name, scores, path, read_manifest_header(path))


@dataclass
class SelectionInfo:
    """One selection of a run, as ``curate selections`` lists it."""

    name: str
    path: Path
    status: str  # ok | missing (recorded, no folder) | unrecorded (a folder run.json does not list)
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    kept: int | None = None
    pool: int | None = None
    created: str | None = None  # when its manifest was written (UTC)
    content_hash: str | None = None
    parents: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "status": self.status, "method": self.method,
                "params": self.params, "seed": self.seed, "kept": self.kept, "pool": self.pool,
                "created": self.created, "content_hash": self.content_hash, "parents": self.parents}


@dataclass
class DeleteResult:
    """What ``delete_selection`` removed."""

    name: str
    removed: list[Path]
    record_only: bool = False  # the folder was gone already; only the run.json record was removed


def params_text(params: dict[str, Any]) -> str:
    """A short ``key=value`` summary of a selection's parameters (the method and unset ones left out)."""
    parts = []
    for k, v in params.items():
        if k == "method" or v is None or v is False:
            continue
        text = ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
        parts.append(f"{k}={text}")
    return " ".join(parts)


def _folders(run: RunDir) -> list[str]:
    return run.selection_names()


def _created(path: Path) -> str | None:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")


def _header(folder: Path) -> dict[str, Any]:
    try:
        header = read_json(folder / "manifest.json")
    except InputError:
        return {}
    return header if isinstance(header, dict) else {}


def list_selections(run_root: str | os.PathLike[str]) -> list[SelectionInfo]:
    """Every selection of the run (recorded in run.json or present as a folder), sorted by name."""
    run = RunDir(run_root)
    records = run.require().get("selections") or {}
    out = []
    for name in sorted(set(records) | set(_folders(run))):
        folder = run.selection_dir(name)
        rec = records.get(name) or {}
        header = _header(folder) if folder.is_dir() else {}
        counts = header.get("counts") or {}
        status = "unrecorded" if name not in records else "ok" if folder.is_dir() else "missing"
        out.append(SelectionInfo(
            name=name, path=folder, status=status,
            method=rec.get("method") or header.get("method"),
            params=dict(rec.get("params") or header.get("params") or {}),
            seed=rec.get("seed", header.get("seed")),
            kept=rec.get("kept", counts.get("kept")),
            pool=rec.get("pool", counts.get("pool")),
            created=_created(folder / "manifest.parquet"),
            content_hash=rec.get("content_hash") or header.get("content_hash"),
            parents=[p.get("name") for p in header.get("parents") or [] if isinstance(p, dict)],
        ))
    return out


def dependents(run_root: str | os.PathLike[str], name: str) -> list[str]:
    """What was computed from selection ``name``: other selections (set algebra) and the bootstrap rounds."""
    run = RunDir(run_root)
    found = [f"selection {other!r}" for other in _folders(run)
             if other != name and name in [p.get("name") for p in _header(run.selection_dir(other)).get("parents")
                                           or [] if isinstance(p, dict)]]
    state_file = run.bootstrap_dir / "state.json"
    if state_file.is_file():
        init = (read_json(state_file) or {}).get("init")
        folder = run.selection_dir(name).resolve()
        if init and (init == name or Path(init).resolve() in {folder, folder / "manifest.parquet"}):
            found.append("the bootstrap rounds (--init)")
    return found


def delete_selection(run_root: str | os.PathLike[str], name: str,
                     command: str | None = None) -> DeleteResult:
    """Delete selection ``name`` of a run safely (see the module docstring); return what was removed."""
    check_selection_name(name)
    run = RunDir(run_root)
    records = run.require().get("selections") or {}
    folder = run.selection_dir(name)
    cmd = command or f"curate selections {run.root} --delete {name}"
    if name not in records and not os.path.lexists(folder):
        have = ", ".join(sorted(set(records) | set(_folders(run)))) or "none"
        raise InputError(f"no selection {name!r} in {run.root} (selections: {have})")
    with run.selection_lock(name):
        records = run.load().get("selections") or {}
        if name not in records:
            raise UsageError(f"{folder} is not recorded in {run.run_json}: curate did not write it, so it is left "
                             "as it is")
        deps = dependents(run.root, name)
        if deps:
            raise UsageError(f"selection {name!r} is the source of {', '.join(deps)}; delete "
                             f"{'those' if len(deps) > 1 else 'that'} first")
        remove_dead_temps(folder.parent, f".{name}.old-")  # left by a killed earlier delete or select
        if not os.path.lexists(folder):  # a killed earlier delete: the folder is gone, the record is not
            run.update_entry("selections", name, None, command=cmd)
            return DeleteResult(name, [], record_only=True)
        if folder.is_symlink() or not folder.is_dir():
            raise UsageError(f"{folder} is not a folder curate wrote; it is left as it is")
        entries = sorted(p.name for p in folder.iterdir())
        foreign = [e for e in entries if e not in SELECTION_FILES or not (folder / e).is_file()
                   or (folder / e).is_symlink()]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise UsageError(f"{folder} holds files curate did not write ({foreign[0]}{more}); move them out first")
        old = folder.with_name(f".{name}.old-{os.getpid()}")
        os.replace(folder, old)  # gone from the listing at once; a crash here leaves a record to delete again
        run.update_entry("selections", name, None, command=cmd)
        removed = []
        for e in entries:
            with contextlib.suppress(FileNotFoundError):
                (old / e).unlink()
                removed.append(folder / e)
        with contextlib.suppress(OSError):
            old.rmdir()
    return DeleteResult(name, removed)
