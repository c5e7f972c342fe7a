"""Run folders and tools for the crash/resume and bad-input tests: synthetic runs, snapshots, kill loops."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.io.tables import embedding_schema, fixed_list, write_table
from curate.io.tarwrite import write_tar
from curate.rundir import RunDir


def uid_of(i: int) -> str:
    return f"{i:032x}"


def clustered_run(root: Path, n: int, dim: int = 32, n_shards: int = 8, k: int = 12, seed: int = 0,
                  shard_urls: list[str] | None = None, keys: list[str] | None = None) -> Path:
    """A run whose embeddings are ``n`` samples around ``k`` centres (image and text near each other)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    lab = rng.integers(0, k, n)
    img = centres[lab] + 0.5 * rng.normal(size=(n, dim))
    txt = centres[lab] + 0.5 * rng.normal(size=(n, dim))
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float16)
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float16)
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    shards = []
    for s in range(n_shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        name = f"{s:05d}"
        shards.append({"name": name, "url": shard_urls[s] if shard_urls else f"/data/{name}.tar"})
        score = np.einsum("ij,ij->i", img[lo:hi].astype(np.float32), txt[lo:hi].astype(np.float32))
        table = pa.table(
            {
                "uid": [uid_of(i) for i in range(lo, hi)],
                "shard": [name] * (hi - lo),
                "key": list(keys[lo:hi]) if keys is not None else [f"{i:09d}" for i in range(lo, hi)],
                "position": pa.array(np.arange(hi - lo), pa.int32()),
                "content_hash": [uid_of(i) for i in range(lo, hi)],
                "image_emb": fixed_list(img[lo:hi]),
                "text_emb": fixed_list(txt[lo:hi]),
                "clip_score": pa.array(score.astype(np.float32)),
            },
            schema=embedding_schema(dim, {"model": "test", "dim": dim}),
        )
        write_table(root / "embeddings" / f"{name}.parquet", table)
    RunDir(root).update("embed", {"model": "test", "shards": shards}, command="test")
    return root


def source_shards(folder: Path, n: int, n_shards: int, member_bytes: int = 3000, seed: int = 0,
                  caption: Callable[[int], str] = lambda i: f"caption {i}") -> list[str]:
    """Tars of ``n`` samples (random 'jpg' bytes + caption + json uid) whose keys match ``clustered_run``."""
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    urls = []
    for s in range(n_shards):
        samples = []
        for i in range(int(bounds[s]), int(bounds[s + 1])):
            samples.append((f"{i:09d}", {
                "jpg": rng.integers(0, 256, member_bytes, dtype=np.uint8).tobytes(),
                "txt": caption(i).encode(),
                "json": json.dumps({"uid": uid_of(i)}).encode(),
            }))
        path = folder / f"{s:05d}.tar"
        write_tar(path, samples)
        urls.append(str(path))
    return urls


# --- snapshots ------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def visible(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files under final names: no path component starts with '.' (temp files and folders)."""
    return {k: v for k, v in files.items() if not any(part.startswith(".") for part in Path(k).parts)}


def hidden(files: dict[str, bytes]) -> list[str]:
    return sorted(set(files) - set(visible(files)))


def run_json_content(data: bytes) -> dict[str, object]:
    """run.json without its command log (which records when each command ran)."""
    rec = json.loads(data)
    rec.pop("commands", None)
    return rec


def same_outputs(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Paths whose bytes differ (run.json: content without the command log); empty when equal."""
    diff = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        if Path(k).name == "run.json":
            if run_json_content(a[k]) != run_json_content(b[k]):
                diff.append(k)
        elif a[k] != b[k]:
            diff.append(k)
    return diff


# --- kill loops -----------------------------------------------------------------------------------
_CTX = multiprocessing.get_context("forkserver")
# open_clip and faiss: curate.rundir.versions() imports them to record their versions
_CTX.set_forkserver_preload(
    ["curate.cli.app", "curate.select", "curate.bootstrap", "curate.io.reshard", "open_clip", "faiss"]
)


def _child(args: list[str], err_path: str) -> None:
    """Run ``curate ARGS`` in a process forked from the pre-imported fork server; stderr to a file."""
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(err, 2)
    os.dup2(null, 1)
    from curate.cli.app import main

    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Command:
    """``curate ARGS`` in a child process that starts with curate already imported (no import time).

    Kills at a random time then land in the command's work, not in ``import torch``.
    """

    def __init__(self, args: list[str], err_path: Path) -> None:
        self.err_path = err_path
        self.proc = _CTX.Process(target=_child, args=(args, str(err_path)))
        self.proc.start()

    def wait(self, timeout: float | None = None) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode

    def kill(self) -> bool:
        """SIGKILL the command; False when it had ended already.

        The fork server, not this process, is the command's parent and reaps it, so a command that ends
        between a ``wait`` timeout and the kill is gone (``ProcessLookupError``), not a zombie.
        """
        assert self.proc.pid is not None
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            self.proc.join()
            return False
        self.proc.join()
        return True

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


def run_to_end(args: list[str], err_path: Path, timeout: float = 300) -> tuple[int, str, float]:
    """Run to completion; (exit code, stderr, wall seconds)."""
    t0 = time.perf_counter()
    cmd = Command(args, err_path)
    code = cmd.wait(timeout)
    if code is None:
        cmd.kill()
        raise AssertionError(f"curate {' '.join(args)} did not finish in {timeout} s")
    return code, cmd.stderr, time.perf_counter() - t0


@dataclass
class KillReport:
    """What a kill loop saw."""

    kills: int = 0  # the process was still running when killed
    finished_first: int = 0  # it ended before the kill time
    mixed_states: int = 0  # after the kill, some outputs were new and some still old
    leftovers: list[str] = field(default_factory=list)  # hidden files left after the rerun
    kill_times: list[float] = field(default_factory=list)


def kill_and_rerun(
    args: list[str],
    prepare: Callable[[], Path],
    reference: dict[str, bytes],
    before: dict[str, bytes],
    wall: float,
    err_path: Path,
    n: int = 10,
    seed: int = 0,
) -> KillReport:
    """``n`` times: fresh folder, start ``args``, SIGKILL it at a seeded random time, check, rerun, compare.

    After each kill every visible file must hold its bytes from before the command or from the reference
    run (never a third, partial state); the rerun must exit 0 and leave the visible files identical to
    the reference. ``wall`` is the uninterrupted run's wall time; kill times are drawn in [0.05, 1.0] of it.
    """
    rng = random.Random(seed)
    rep = KillReport()
    for _ in range(n):
        root = prepare()
        at = rng.uniform(0.05, 1.0) * wall
        rep.kill_times.append(round(at, 2))
        cmd = Command(args, err_path)
        if cmd.wait(timeout=at) is None and cmd.kill():
            rep.kills += 1
        else:
            rep.finished_first += 1
        after = visible(snapshot(root))
        changed = {k for k in set(reference) | set(before) if Path(k).name != "run.json"
                   and before.get(k) != reference.get(k)}
        for path, data in after.items():
            if Path(path).name == "run.json":
                json.loads(data)  # complete JSON, never a partial write
            elif data != before.get(path) and data != reference.get(path):
                raise AssertionError(f"after a kill at {at:.2f} s, {path} is neither its old nor its final content")
        done = {k for k in changed if after.get(k) == reference.get(k)}
        if done and done != changed:
            rep.mixed_states += 1
        code, err, _ = run_to_end(args, err_path)
        assert code == 0, f"rerun after a kill at {at:.2f} s failed: {err}"
        files = snapshot(root)
        diff = same_outputs(visible(files), visible(reference))
        assert not diff, f"rerun after a kill at {at:.2f} s differs from the uninterrupted run in {diff[:5]}"
        rep.leftovers += hidden(files)
    return rep
