"""One process per device on this machine (``--devices``): ``items[rank::world]`` per process.

The parent spawns one child per device (``spawn`` start method: no CUDA state is forked), sends each
its share of the items, relays the children's progress events to its own :class:`Progress`, and
gathers one result per item. Children die with their parent (Linux ``PR_SET_PDEATHSIG``, plus a
watchdog thread elsewhere), so a killed run leaves no process behind that still writes into the run
folder; the parent's run lock therefore covers its children.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from curate import logs
from curate.engines.base import ItemWorker
from curate.errors import CurateError, UsageError
from curate.progress import NullProgress, Progress, set_total

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)
_POLL_S = 0.2


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (``auto``: CUDA when present); ``UsageError`` when it can't be used.

    The one place a device option (``--device``, ``--devices``) is resolved; torch is imported here.
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu" and dev.type != "mps":
        raise UsageError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def device_name(device: str | None) -> str:
    """:func:`check_device` as a string (``auto`` → ``cuda`` or ``cpu``)."""
    return str(check_device(device))


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """``all`` | ``0,1`` | ``cuda:0,cuda:1`` | ``cpu,cpu`` → torch device strings, validated.

    ``all`` is every visible CUDA GPU, or the CPU (one process) on a machine without one. A bare
    number N means ``cuda:N``; ``cpu`` may be repeated to run several CPU processes.
    """
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    if not tokens or any(not t for t in tokens):
        raise UsageError(f"bad --devices {spec!r}: use all, a list of GPU numbers (0,1) or cpu,cpu")
    if tokens == ["all"]:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    out = []
    for t in tokens:
        dev = f"cuda:{t}" if t.isdigit() else t
        if dev == "all":
            raise UsageError("--devices all cannot be combined with other devices")
        d = check_device(dev)
        if d.type == "cuda" and d.index is None:
            d = type(d)("cuda", 0)
        out.append(str(d))
    gpus = [d for d in out if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise UsageError(f"--devices {spec!r} names a GPU twice; give each GPU once")
    return out


def threads_per_process(world: int) -> int:
    """Torch threads per child so that the children share the CPU cores instead of oversubscribing."""
    return max(1, (os.cpu_count() or 1) // world)


@contextlib.contextmanager
def torch_threads(n: int, when: bool = True) -> Any:
    """Torch's intra-op threads set to ``n`` inside the block (only ``when``), restored after it."""
    import torch

    before = torch.get_num_threads()
    if when and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if when and n != before:
            torch.set_num_threads(before)


class _QueueProgress:
    """A Progress that forwards events to the parent through a queue."""

    def __init__(self, q: Any, rank: int) -> None:
        self.q, self.rank = q, rank

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.q.put(("start", self.rank, (task, total, unit)))

    def set_total(self, total: float | None) -> None:
        self.q.put(("total", self.rank, total))

    def advance(self, n: float = 1) -> None:
        self.q.put(("advance", self.rank, n))

    def finish(self) -> None:
        return None


def _die_with_parent(parent: int) -> None:
    """Exit when the parent dies (Linux: kernel signal; elsewhere: a polling thread)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="curate-parent-watch", daemon=True).start()


def _child(worker: ItemWorker, device: str, rank: int, items: list[Any], threads: int, parent: int, q: Any,
           start_method: str, one_line_logs: bool = False) -> None:
    """Entry point of one device process."""
    _die_with_parent(parent)
    if one_line_logs:  # the parent prints curate's warnings as one-line messages: so does this process
        logs.install()
    # a spawned process defaults to spawn; the worker's own pools (DataLoader decode workers) get the
    # parent's default back, or each of them would start a fresh interpreter too
    mp.set_start_method(start_method, force=True)
    if "torch" in sys.modules:  # imported while the worker was unpickled
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when the worker imports it
    try:
        worker.open(device)
        try:
            results = worker.process(items, _QueueProgress(q, rank))
        finally:
            worker.close()
        q.put(("done", rank, results))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        q.put(("interrupted", rank, None))
    except CurateError as exc:
        q.put(("error", rank, (type(exc), str(exc), None)))
    except BaseException as exc:  # a bug: keep the child's traceback for the parent's message
        q.put(("error", rank, (None, f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def run_per_device(
    worker: ItemWorker, items: Sequence[Any], devices: Sequence[str], progress: Progress | None = None
) -> list[Any]:
    """Run ``worker`` over ``items`` with one process per device; results in item order.

    Device ``rank`` gets ``items[rank::len(devices)]``. The first failing child stops the others and
    its error is raised here (a :class:`CurateError` keeps its type and one-line message).
    """
    progress = progress or NullProgress()
    world = len(devices)
    method = mp.get_start_method()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    threads = threads_per_process(world)
    shares = [list(items[r::world]) for r in range(world)]
    procs = []
    for rank, dev in enumerate(devices):
        if not shares[rank]:
            continue
        args = (worker, dev, rank, shares[rank], threads, os.getpid(), q, method, logs.installed())
        p = ctx.Process(target=_child, args=args,
                        name=f"curate-device-{rank}", daemon=False)
        p.start()
        procs.append((rank, p))
    results: dict[int, list[Any]] = {}
    totals: dict[int, float | None] = {}
    started = False
    try:
        while len(results) < len(procs):
            try:
                kind, rank, payload = q.get(timeout=_POLL_S)
            except queue_mod.Empty:
                dead = [(r, p) for r, p in procs if r not in results and not p.is_alive()]
                if dead:
                    time.sleep(_POLL_S)  # a result may still be in the pipe
                    try:
                        kind, rank, payload = q.get(timeout=_POLL_S)
                    except queue_mod.Empty:
                        r, p = dead[0]
                        raise CurateError(f"device process {r} ({devices[r]}) died with exit code {p.exitcode}; "
                                          "rerun to resume (finished items are kept)") from None
                else:
                    continue
            if kind == "start":
                if not started:
                    progress.start(*payload)
                    started = True
            elif kind == "advance":
                progress.advance(payload)
            elif kind == "total":  # each process estimates its share; the sum once every one has
                totals[rank] = payload
                if len(totals) == len(procs) and None not in totals.values():
                    set_total(progress, sum(totals.values()))
            elif kind == "done":
                results[rank] = payload
            elif kind == "interrupted":
                raise KeyboardInterrupt
            else:  # error
                etype, msg, tb = payload
                if etype is not None:
                    raise etype(msg)
                _log.error("device process %d (%s) failed:\n%s", rank, devices[rank], tb)
                raise RuntimeError(f"device process {rank} ({devices[rank]}) failed: {msg}")
    finally:
        progress.finish()
        for _, p in procs:
            if p.is_alive() and len(results) < len(procs):
                p.terminate()
        for _, p in procs:
            p.join()
        q.close()
    out: list[Any] = [None] * len(items)
    for rank, res in results.items():
        if len(res) != len(shares[rank]):
            raise RuntimeError(f"device process {rank} returned {len(res)} results for {len(shares[rank])} items")
        for j, r in enumerate(res):
            out[rank + j * world] = r
    return out


_SHARED: dict[str, Any] = {}  # a task process's shared arguments, received once when it starts


def _pool_init(parent: int, threads: int, start_method: str, shared: dict[str, Any]) -> None:
    """Initialiser of a task process: die with the parent, share the cores, keep the parent's start method,
    hold the shared arguments (sent once per process, not once per item)."""
    _SHARED.clear()
    _SHARED.update(shared)
    _die_with_parent(parent)
    mp.set_start_method(start_method, force=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _pool_call(fn: Any, item: Any) -> Any:
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return fn(item, **_SHARED)


def process_map(fn: Any, items: Sequence[Any], shared: dict[str, Any] | None, workers: int,
                progress: Progress | None = None) -> list[Any]:
    """``[fn(item, **shared) for item in items]`` in ``workers`` processes of this machine, in item order.

    Processes are spawned (no forked torch or CUDA state), share the cores evenly, and die with this
    process, so a killed command leaves nothing running. The first failure is raised here; a
    :class:`CurateError` keeps its type and one-line message.
    """
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    progress = progress or NullProgress()
    if not items:
        return []
    ctx = mp.get_context("spawn")
    threads = threads_per_process(workers)
    kw = dict(shared or {})
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx, initializer=_pool_init,
                             initargs=(os.getpid(), threads, mp.get_start_method(), kw)) as pool:
        futures = [pool.submit(_pool_call, fn, it) for it in items]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # raises the task's error
                    progress.advance(1)
        except BaseException as exc:
            if isinstance(exc, Exception):  # a task failed: the others end their running tasks
                for f in pending:
                    f.cancel()
            else:  # Ctrl-C, or a signal to this process alone: the broken pool fails every pending future
                _stop_processes(pool)
            raise
        return [f.result() for f in futures]


def _stop_processes(pool: Any) -> None:
    """Terminate a pool's task processes. A signal sent to this process alone (``kill -INT``, a job
    scheduler) does not reach them, and leaving the pool would wait for every running task to end.
    A task's output is written atomically when it ends, so a stopped task is redone on resume."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
