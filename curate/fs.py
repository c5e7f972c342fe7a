"""File-system helpers shared by every writer: permissions that follow the umask, locks, output paths.

* **Permissions.** ``tempfile.mkstemp`` and ``mkdtemp`` create private entries (``0600``, ``0700``) so
  that nobody can race the creator. Everything curate publishes from them is first given the mode an
  ordinary ``open``/``mkdir`` would give under the process umask (``0666``/``0777`` minus the umask), so
  a teammate or a worker running as another user reads curate's outputs like any other file.
* **Locks.** :func:`exclusive_lock` holds an ``fcntl`` lock on a small file for one writer; the OS drops
  it when the process dies, so a killed writer never blocks the next one.
* **Temporary files.** :func:`atomic_path` writes under ``.<name>.<pid>-<random>.tmp`` and renames onto
  the target; a killed writer's leftovers are found by the pid in their name and removed by the next
  attempt (:func:`remove_dead_temps_of`, :func:`sweep_dead_temps`), never those of a live writer.
* **Output files.** :func:`output_file` turns ``--out`` into a file path (a folder gets a default name
  inside it) and :func:`check_replace` decides whether an existing file may be replaced.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from curate.errors import InputError, UsageError

__all__ = [
    "atomic_path",
    "check_replace",
    "dir_mode",
    "exclusive_lock",
    "file_mode",
    "make_temp_dir",
    "make_temp_file",
    "output_file",
    "pid_alive",
    "read_json",
    "remove_dead_temps",
    "remove_dead_temps_of",
    "remove_stale_locks",
    "run_folder_of",
    "same_file_content",
    "sweep_dead_temps",
    "umask",
    "write_json",
]


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0666`` minus the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0777`` minus the umask."""
    return 0o777 & ~umask()


def make_temp_file(folder: str | os.PathLike[str], prefix: str, suffix: str = "") -> Path:
    """Create an empty, uniquely named file in ``folder`` with the umask's mode; return its path."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(name)


def make_temp_dir(folder: str | os.PathLike[str], prefix: str) -> Path:
    """Create a uniquely named folder in ``folder`` with the umask's mode; return its path."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    path.chmod(dir_mode())
    return path


# --- locks ----------------------------------------------------------------------------------------
def _try_lock(fd: int, wait: float) -> bool:
    import fcntl

    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], busy: str, *, wait: float = 0.0,
                   remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for one process.

    When another process holds it, wait up to ``wait`` seconds, then raise ``UsageError(busy)``.
    ``remove=True`` deletes the lock file on release (while still holding the lock); a process that
    opened the old file meanwhile notices that it was replaced and locks the new one, so two holders
    never coexist. The OS releases the lock when its process dies. No locking where ``fcntl`` is missing.
    """
    path = Path(path)
    try:
        import fcntl  # noqa: F401
    except ImportError:  # not POSIX
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # mode minus the umask, like any new file
        try:
            if not _try_lock(fd, wait):
                raise UsageError(busy)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed the file: lock the one now at ``path``
    try:
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(fd)


def remove_stale_locks(folder: str | os.PathLike[str], pattern: str) -> list[Path]:
    """Remove lock files matching ``pattern`` in ``folder`` that no live process holds."""
    removed: list[Path] = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in sorted(d.glob(pattern)):
        try:
            with exclusive_lock(p, "", remove=True):
                removed.append(p)
        except (UsageError, OSError):
            continue  # held by a live writer, or gone already
    return removed


# --- output files ---------------------------------------------------------------------------------
def output_file(out: str | os.PathLike[str], default_name: str) -> Path:
    """The file ``--out`` names: ``out/default_name`` when ``out`` is a folder or ends with a slash."""
    text = os.fspath(out)
    path = Path(text)
    if path.is_dir():
        return path / default_name
    if text.endswith(("/", os.sep)):
        if os.path.lexists(path):
            raise UsageError(f"--out {text} names a folder, but {path} is not one")
        return path / default_name
    return path


def run_folder_of(path: str | os.PathLike[str]) -> Path | None:
    """The curate run folder (one with ``run.json``) that ``path`` is or lies in, or None."""
    here = Path(path).resolve()
    return next((d for d in (here, *here.parents) if (d / "run.json").is_file()), None)


def same_file_content(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both are regular files with the same bytes."""
    try:
        return Path(a).is_file() and Path(b).is_file() and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def check_replace(target: Path, force: bool, written_by_curate: Callable[[Path], bool] | None = None) -> None:
    """Refuse to replace an existing ``target`` unless curate wrote it or ``force`` is given.

    A folder, a link or anything that is not a regular file is never replaced.
    """
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_file():
        raise UsageError(f"{target} exists and is not a regular file; choose another --out")
    if force or (written_by_curate is not None and written_by_curate(target)):
        return
    raise UsageError(f"{target} exists and curate did not write it; pass --force to replace it or choose another --out")


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


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (on this machine) and has not exited: a zombie (exited,
    not yet reaped by its parent, as a killed command's children can stay for a while) writes nothing."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux), or it just went
        return True
    return state != "Z"


def remove_dead_temps(folder: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove ``folder/<prefix><pid>[-...]`` files and folders whose writing process is gone.

    Temporary outputs carry their writer's pid; a killed writer leaves them behind, and the next attempt
    removes them. Those of live processes (a concurrent writer) are left alone. Returns what was removed.
    """
    pat = re.compile(re.escape(prefix) + r"(\d+)(?:-.*)?$")
    removed = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        m = pat.match(p.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def remove_dead_temps_of(*paths: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left for these outputs when its writer was killed."""
    removed: list[Path] = []
    for p in map(Path, paths):
        removed += remove_dead_temps(p.parent, f".{p.name}.")
    return removed


_TEMP_NAME = re.compile(r"\..+\.(\d+)-[^.]*\.tmp$")


def sweep_dead_temps(*folders: str | os.PathLike[str]) -> list[Path]:
    """Remove every :func:`atomic_path` temporary file in these folders whose writer is gone."""
    removed: list[Path] = []
    for d in map(Path, folders):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _TEMP_NAME.match(p.name)
            if m is not None and p.is_file() and not pid_alive(int(m.group(1))):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
