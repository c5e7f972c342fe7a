"""``curate select --engine ray`` on a two-node Ray cluster started on this machine.

``ray start --head`` and a second ``ray start --address`` node, each with one CPU of its own, so that
tasks really run on two raylets and nothing may assume one node. The tables must equal the local
engine's; a worker node killed mid-run (its raylet and workers, SIGKILL) only costs retries; a killed
driver resumes from the work folder to the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from curate.select import run_selection
from tests.reliability.runs import clustered_run

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Two Ray nodes on this machine, each a ``ray start --block`` process in its own process group."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
        self.head = self._start(["--head", "--port", str(self.port), "--include-dashboard", "false",
                                 "--disable-usage-stats"], "head")
        self._wait_nodes(1)
        self.worker = self._start(["--address", self.address], "worker")
        self._wait_nodes(2)

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.temp / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        return subprocess.Popen([RAY, "start", *args, "--num-cpus", "1", "--temp-dir", str(self.temp / "ray"),
                                 "--block"], stdout=log, stderr=log, env=self.env, start_new_session=True)

    def nodes(self) -> int:
        code = (f"import ray; ray.init(address={self.address!r}, logging_level='error'); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                if self.nodes() >= n:
                    return
            time.sleep(2)
        raise AssertionError(f"the Ray cluster did not reach {n} nodes")

    def kill_worker(self) -> None:
        """SIGKILL the second node: its ``ray start``, raylet and workers (one process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def stop(self) -> None:
        for p in (self.worker, self.head):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in (self.worker, self.head):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=20)
        # whatever is left of this cluster (found by its own temp folder), and nothing else
        mine = str(self.temp)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                if mine in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # a short folder: Ray's socket paths under it must stay within AF_UNIX's 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="curate-rc-", dir="/tmp"))
    c = Cluster(temp)
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pool and its selection on the local engine (the tables every cluster run must give)."""
    run = clustered_run(tmp_path_factory.mktemp("pool") / "run", 6000, dim=32, n_shards=4, k=10)
    run_selection(run, "clipcov", fraction=0.3, options={"partition": "kmeans:10"}, name="local", memory=1 << 20)
    return run


ARGS = ["--method", "clipcov", "--partition", "kmeans:10", "--fraction", "0.3", "--memory", "1M"]


def _cli(run: Path, name: str, extra: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curate.cli.app", "select", "--run", str(run), *ARGS,
                             "--name", name, "--json", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _same(run: Path, a: str, b: str) -> None:
    for f in ("scores.parquet", "manifest.parquet"):
        ta, tb = (pq.read_table(run / "selections" / n / f) for n in (a, b))
        assert ta.equals(tb), f
    assert not list((run / "selections").glob(".work-*")), "the work folder is removed when the selection is written"


def test_two_nodes_give_the_local_tables(cluster: Cluster, base_run: Path) -> None:
    p = _cli(base_run, "ray2", ["--engine", "ray", "--ray-address", cluster.address], cluster.env)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode() if p.stderr else ""
    _same(base_run, "local", "ray2")


def test_killed_worker_node_and_killed_driver(cluster: Cluster, base_run: Path) -> None:
    env = {**cluster.env, "OMP_WAIT_POLICY": "PASSIVE"}
    extra = ["--engine", "ray", "--ray-address", cluster.address]
    # a driver killed mid-run: the rerun resumes from the finished tasks and writes the same bytes
    p = _cli(base_run, "resumed", extra, env)
    work = base_run / "selections" / ".work-resumed"
    end = time.monotonic() + 120
    while time.monotonic() < end and not list((work / "p2").glob("*.arrow")) and p.poll() is None:
        time.sleep(0.2)
    p.kill()
    p.wait()
    q = _cli(base_run, "resumed", extra, env)
    assert q.wait(timeout=600) == 0, q.stderr.read().decode() if q.stderr else ""
    _same(base_run, "local", "resumed")
    # a worker node killed mid-run: tasks are retried on the head node
    p = _cli(base_run, "node-lost", extra, env)
    work = base_run / "selections" / ".work-node-lost"
    end = time.monotonic() + 120
    while time.monotonic() < end and not work.exists() and p.poll() is None:
        time.sleep(0.1)
    cluster.kill_worker()
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.wait(timeout=600) == 0, err
    _same(base_run, "local", "node-lost")
