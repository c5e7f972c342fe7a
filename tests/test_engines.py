"""Engines without Ray: the registry, the local engine and the per-device process launcher (2 CPU processes)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from curate.engines import ItemWorker, list_engines, make_engine, parse_devices, run_per_device
from curate.engines.base import EngineOptions
from curate.errors import CurateError, InputError, UsageError
from curate.fs import write_json
from curate.progress import Progress


class FileWorker(ItemWorker):
    """Writes ``out/<item>.json`` per item (atomically), as embed writes one table per shard."""

    label = "files"
    unit = "items"

    def __init__(self, out: str, fail_on: str | None = None, crash_on: str | None = None, sleep: float = 0.0):
        self.out, self.fail_on, self.crash_on, self.sleep = out, fail_on, crash_on, sleep
        self.device: str | None = None

    def open(self, device: str) -> None:
        self.device = device

    def process(self, items: Sequence[Any], progress: Progress) -> list[Any]:
        progress.start(self.label, total=None, unit=self.unit)
        results = []
        for item in items:
            if item == self.fail_on:
                raise InputError(f"bad item {item}")
            if item == self.crash_on:
                os._exit(3)
            time.sleep(self.sleep)
            rec = {"item": item, "pid": os.getpid(), "device": self.device, "start_method": mp.get_start_method()}
            write_json(Path(self.out) / f"{item}.json", rec)
            results.append(rec)
            progress.advance(1)
        return results


class Events:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.advanced = 0.0
        self.finished = 0

    def start(self, task: str, total: float | None = None, unit: str = "samples") -> None:
        self.started.append(task)

    def advance(self, n: float = 1) -> None:
        self.advanced += n

    def finish(self) -> None:
        self.finished += 1


ITEMS = [f"item{i}" for i in range(7)]


def scaled(x: int, factor: int) -> int:
    return x * factor


def failing(x: int) -> int:
    if x == 3:
        raise InputError(f"no such item: {x}")
    return x


def test_registry_lists_engines_and_rejects_unknown_ones() -> None:
    assert list_engines()[:2] == ["local", "ray"]
    with pytest.raises(UsageError, match="unknown engine 'spark'; choose one of: local, ray"):
        make_engine("spark")
    with pytest.raises(UsageError, match="--ray-address does not apply to --engine local"):
        make_engine("local", address="auto")
    with pytest.raises(UsageError, match="--devices does not apply to --engine ray"):
        make_engine("ray", devices=["cpu", "cpu"])
    assert make_engine("local", devices=["cpu", "cpu"]).options == EngineOptions(devices=("cpu", "cpu"))
    with pytest.raises(UsageError, match="--workers must be >= 1 \\(got 0"):
        make_engine("local", workers=0)
    assert not make_engine("local", workers=1).distributed


def test_parse_devices() -> None:
    import torch

    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices("cpu") == ["cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert parse_devices("all") == ([f"cuda:{i}" for i in range(n)] or ["cpu"])
    for bad, msg in [("", "bad --devices"), ("cpu,,cpu", "bad --devices"), ("tpu", "unknown device"),
                     ("meta", "unsupported device"), ("all,cpu", "cannot be combined"), ("gpu0", "unknown device")]:
        with pytest.raises(UsageError, match=msg):
            parse_devices(bad)
    if n == 0:
        with pytest.raises(UsageError, match="CUDA is not available"):
            parse_devices("0,1")
    else:
        assert parse_devices("0") == ["cuda:0"]
        with pytest.raises(UsageError, match="names a GPU twice"):
            parse_devices("0,cuda:0")


def test_local_engine_runs_items_in_process(tmp_path: Path) -> None:
    ev = Events()
    with make_engine("local", device="cpu") as eng:
        res = eng.run_items(FileWorker(str(tmp_path)), ITEMS, ev)
        assert eng.map(scaled, [7, 9], {"factor": 4}) == [28, 36]
    assert [r["item"] for r in res] == ITEMS
    assert {r["pid"] for r in res} == {os.getpid()} and {r["device"] for r in res} == {"cpu"}
    assert ev.advanced == len(ITEMS)


def test_two_cpu_processes_split_items_by_rank_and_keep_order(tmp_path: Path) -> None:
    ev = Events()
    res = make_engine("local", devices=["cpu", "cpu"]).run_items(FileWorker(str(tmp_path)), ITEMS, ev)
    assert [r["item"] for r in res] == ITEMS  # results come back in item order
    pids = [r["pid"] for r in res]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert all(pids[i] == pids[i % 2] for i in range(len(ITEMS)))  # rank r got items[r::2]
    # the children's own pools (embed's decode workers) start as this process's would, not by spawn
    assert {r["start_method"] for r in res} == {mp.get_start_method()}
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(ITEMS)
    assert ev.started == ["files"] and ev.advanced == len(ITEMS) and ev.finished == 1  # relayed progress


def test_a_failing_device_process_raises_its_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^bad item item3$"):
        run_per_device(FileWorker(str(tmp_path), fail_on="item3"), ITEMS, ["cpu", "cpu"])


def test_a_crashed_device_process_is_reported_not_hung(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=r"device process 0 \(cpu\) died with exit code 3"):
        run_per_device(FileWorker(str(tmp_path), crash_on="item2"), ITEMS, ["cpu", "cpu"])


_PARENT = """
import sys
sys.path[:0] = {path!r}
from test_engines import FileWorker
from curate.engines import run_per_device
run_per_device(FileWorker({out!r}, sleep=0.5), [f"item{{i}}" for i in range(40)], ["cpu", "cpu"])
"""


def test_device_processes_die_with_their_parent(tmp_path: Path) -> None:
    """A killed run leaves no child writing into the run folder (the parent's lock covers them)."""
    out = tmp_path / "out"
    code = _PARENT.format(path=[str(Path(__file__).parent), *sys.path], out=str(out))
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.json"))) < 2:  # both children are working
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    children = {json.loads(p.read_text())["pid"] for p in out.glob("*.json")}
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in children):
        assert time.monotonic() < deadline, "device processes outlived their parent"
        time.sleep(0.2)
    n = len(list(out.glob("*.json")))
    time.sleep(1.5)
    assert len(list(out.glob("*.json"))) == n  # nothing writes any more
    assert not list(out.glob(".*.tmp"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().split()[2] != "Z"


_SLOW_MAP = '''
import os, sys, time
from pathlib import Path

def task(item, out):
    Path(out, f"{item}.{os.getpid()}").write_text("started")
    time.sleep(120)
    return item

if __name__ == "__main__":
    from curate.engines.devices import process_map
    try:
        process_map(task, [0, 1], {"out": sys.argv[1]}, 2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
'''


def test_sigint_to_the_parent_alone_stops_its_task_processes(tmp_path: Path) -> None:
    """``kill -INT`` (or a scheduler) signals only the command, not its task processes: the command must
    stop them and exit, not wait for the running tasks to end."""
    script = tmp_path / "slow_map.py"
    script.write_text(_SLOW_MAP)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # no terminal group: the signal reaches the parent only
    try:
        deadline = time.time() + 120
        while len(list(out.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        started = list(out.iterdir())
        assert len(started) == 2, "the task processes did not start"
        pids = [int(f.suffix[1:]) for f in started]
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
        assert time.time() - t0 < 30  # the tasks would have slept 120 s
        assert proc.returncode == 130 and "interrupted" in stdout
        assert "Traceback" not in stdout and "Error" not in stdout, stdout  # the pool's threads stay quiet
        time.sleep(0.5)
        for pid in pids:
            try:
                os.kill(pid, 0)
                state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
                alive = state not in ("Z", "X")
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            assert not alive, f"task process {pid} still runs"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
