"""The run directory: one folder holds one curation run (README.md, "Data contracts": the run folder).

Every writer here is atomic: it writes a temporary file in the target folder and renames it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate import __version__
from curate.errors import InputError
from curate.fs import exclusive_lock, make_temp_file

RUN_FORMAT_VERSION = 1
#: Seconds a ``run.json`` update waits for another process's update (each takes milliseconds).
RUN_JSON_LOCK_WAIT = 120.0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = make_temp_file(path.parent, f".{path.name}.{os.getpid()}-", ".tmp")  # the umask's mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON with a one-line error on a missing or corrupt file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"corrupt JSON in {path}: {exc}") from None


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

    def selection_dir(self, name: str) -> Path:
        return self.root / "selections" / name

    @property
    def bootstrap_dir(self) -> Path:
        return self.root / "bootstrap"

    def losses_dir(self, round_: int) -> Path:
        return self.root / "losses" / f"round-{round_:04d}"

    def manifest_file(self, round_: int) -> Path:
        return self.root / "manifests" / f"round-{round_:04d}.parquet"

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
        from curate.io.tarwrite import remove_dead_temps

        busy = f"another curate command has been updating {self.run_json} for {RUN_JSON_LOCK_WAIT:.0f} s; try again"
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / ".run-json.lock", busy, wait=RUN_JSON_LOCK_WAIT, remove=True):
            remove_dead_temps(self.root, f".{self.run_json.name}.")  # left by a writer killed mid-update
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
