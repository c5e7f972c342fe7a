"""The run directory: one folder holds one curation run (README.md, "Data contracts": the run folder).

Every writer here is atomic: it writes a temporary file in the target folder and renames it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate import __version__
from curate.errors import InputError, UsageError
from curate.fs import (
    exclusive_lock,
    make_temp_dir,
    read_json,
    remove_dead_temps,
    remove_dead_temps_of,
    remove_stale_locks,
    write_json,
)
from curate.schemas import RUN_FORMAT_VERSION

#: Seconds a ``run.json`` update waits for another process's update (each takes milliseconds).
RUN_JSON_LOCK_WAIT = 120.0
_SELECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,119}$")


def check_selection_name(name: str) -> str:
    """``name`` when it is a valid selection name (a folder name under RUN/selections), else a one-line error."""
    if not _SELECTION_NAME.match(name):
        raise UsageError(f"bad selection name {name!r}: use letters, digits, '.', '_', '+', '-' (max 120)")
    return name


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final`` (replacing an old folder) with renames only."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_DISTRIBUTIONS = {"torch": "torch", "open_clip": "open_clip_torch", "numpy": "numpy", "pyarrow": "pyarrow",
                  "PIL": "pillow", "webdataset": "webdataset", "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss")}


def versions() -> dict[str, str]:
    """Versions of the packages that decide results, for provenance (from package metadata: no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"curate": __version__, "python": platform.python_version()}
    for mod, dists in _DISTRIBUTIONS.items():
        for dist in (dists,) if isinstance(dists, str) else dists:
            try:
                out[mod] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


class RunDir:
    """Paths and provenance of one run folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # --- layout -------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def embedding_file(self, shard: str) -> Path:
        return self.embeddings_dir / f"{shard}.parquet"

    def stats_file(self, step: str) -> Path:
        return self.root / "stats" / f"{step}.json"

    def shard_stats_file(self, step: str, shard: str) -> Path:
        return self.root / "stats" / step / f"{shard}.json"

    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selection_dir(self, name: str) -> Path:
        return self.selections_dir / name

    def selection_manifest(self, name: str) -> Path:
        return self.selection_dir(name) / "manifest.parquet"

    def selection_scores(self, name: str) -> Path:
        return self.selection_dir(name) / "scores.parquet"

    def selection_names(self) -> list[str]:
        """Names of the selection folders present (hidden work and temporary folders left out), sorted."""
        d = self.selections_dir
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    @property
    def bootstrap_dir(self) -> Path:
        return self.root / "bootstrap"

    def losses_dir(self, round_: int) -> Path:
        return self.root / "losses" / f"round-{round_:04d}"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def manifest_file(self, round_: int) -> Path:
        return self.manifests_dir / f"round-{round_:04d}.parquet"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # --- provenance ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.exists()

    def load(self) -> dict[str, Any]:
        """The run record, or an empty one when the run is new."""
        if not self.run_json.exists():
            return {"format_version": RUN_FORMAT_VERSION, "commands": []}
        return read_json(self.run_json)

    def require(self) -> dict[str, Any]:
        """The run record; a clear error when ``root`` is not a run folder."""
        if not self.run_json.exists():
            raise InputError(f"{self.root} is not a curate run (no run.json); run 'curate embed' first")
        return self.load()

    def embedded_shards(self) -> list[dict[str, Any]]:
        """``run.json``'s ``embed.shards`` records (name, url, fingerprint, ...) in embedding order."""
        return [s for s in (self.load().get("embed") or {}).get("shards", []) if "name" in s and "url" in s]

    def shard_urls(self) -> dict[str, str]:
        """Shard name → URL of every shard ``curate embed`` recorded, in embedding order."""
        return {s["name"]: s["url"] for s in self.embedded_shards()}

    def manifests(self) -> dict[int, Path]:
        """Round → manifest file of every bootstrap round written, in round order."""
        d = self.manifests_dir
        found = {}
        for p in d.glob("round-*.parquet") if d.is_dir() else []:
            with contextlib.suppress(ValueError):
                found[int(p.stem.split("-", 1)[1])] = p
        return dict(sorted(found.items()))

    # --- selections ---------------------------------------------------------------------------
    def selection(self, name: str) -> dict[str, Any] | None:
        """``run.json``'s record of selection ``name`` (method, params, kept, manifest, ...), or None."""
        return (self.load().get("selections") or {}).get(name)

    def selections(self) -> dict[str, dict[str, Any]]:
        """``run.json``'s records of every selection, by name."""
        return dict(self.load().get("selections") or {})

    @contextlib.contextmanager
    def selection_lock(self, name: str) -> Iterator[None]:
        """Hold the lock of selection ``name`` (``RUN/selections/.NAME.lock``, removed on release).

        Every command that writes or deletes a selection holds it, so two of them never write one name at
        once: the second is refused with one line (it does not wait: a selection can take hours, and the
        name would then hold the first one's result, or a clash of parameters, anyway).
        """
        folder = self.selections_dir
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

    @contextlib.contextmanager
    def write_selection(self, name: str) -> Iterator[SelectionDraft]:
        """Write selection ``name`` atomically: files go to ``draft.folder`` (a temporary folder), which
        replaces ``RUN/selections/NAME`` with renames only when the block succeeds; ``draft.record`` then
        becomes ``run.json["selections"][NAME]``. Call while holding :meth:`selection_lock`.
        """
        final = self.selection_dir(check_selection_name(name))
        remove_dead_temps(final.parent, f".{name}.tmp-")  # left by a killed earlier attempt
        remove_dead_temps(final.parent, f".{name}.old-")
        draft = SelectionDraft(make_temp_dir(final.parent, f".{name}.tmp-{os.getpid()}-"))  # the umask's mode
        try:
            yield draft
            _replace_dir(draft.folder, final)
        finally:
            shutil.rmtree(draft.folder, ignore_errors=True)
        record = {**draft.record, "manifest": str(Path("selections") / name / "manifest.parquet")}
        self.update_entry("selections", name, record, command=draft.command)

    def update(self, section: str, value: Mapping[str, Any], command: str | None = None) -> None:
        """Set ``run.json[section] = value`` and append a command record, atomically."""
        self.modify(section, lambda _: dict(value), command)

    def update_entry(self, section: str, key: str, value: Any, command: str | None = None) -> None:
        """Set ``run.json[section][key] = value`` (remove the key when ``value`` is None), atomically.

        The read and the write happen under the run.json lock, so two commands recording different
        entries at once (two selections, say) both keep theirs.
        """

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            entries = dict(current or {})
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
            return entries

        self.modify(section, change, command)

    def modify(self, section: str, change: Callable[[Any], Any], command: str | None = None) -> None:
        """Set ``run.json[section] = change(current value or None)`` (None removes the section), atomically.

        Read, change and write happen while holding ``RUN/.run-json.lock``: concurrent commands wait
        for each other instead of losing each other's updates.
        """
        busy = f"another curate command has been updating {self.run_json} for {RUN_JSON_LOCK_WAIT:.0f} s; try again"
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / ".run-json.lock", busy, wait=RUN_JSON_LOCK_WAIT, remove=True):
            remove_dead_temps_of(self.run_json)  # left by a writer killed mid-update
            rec = self.load()
            value = change(rec.get(section))
            if value is None:
                rec.pop(section, None)
            else:
                rec[section] = value
            rec["versions"] = versions()
            if command is not None:
                rec.setdefault("commands", []).append(
                    {"command": command, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                )
            write_json(self.run_json, rec)


class SelectionDraft:
    """A selection being written: its temporary folder, then the run.json record and command to log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.record: dict[str, Any] = {}
        self.command: str | None = None
