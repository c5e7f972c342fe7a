"""``curate embed --devices cpu,cpu`` (two CPU processes) writes the local engine's tables; resume, lock, kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.embed import EmbedConfig, run_embed
from curate.embed.state import run_lock
from curate.errors import UsageError
from curate.rundir import RunDir
from tests.conftest import COLORS, jpeg_bytes
from tests.embed_helpers import CURATE, REPO, defect_shard, make_local_dir

N_SHARDS, PER_SHARD = 7, 9


def engine_world(root: Path) -> list[str]:
    """Seven small shards with distinct content (sizes, captions, some json uids) and one defect shard."""
    from curate.io.tarwrite import write_tar

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(N_SHARDS):
        samples = []
        for i in range(PER_SHARD):
            c = COLORS[(s * 3 + i) % len(COLORS)]
            members = {"jpg": jpeg_bytes(c, 20 + (s + 5 * i) % 19), "txt": f"shard {s} item {i} {c}".encode()}
            if i % 4 == 0:
                members["json"] = json.dumps({"uid": f"{s:016x}{i:016x}"}).encode()
            samples.append((f"{s:03d}_{i:02d}", members))
        p = root / f"part-{s:03d}.tar"
        write_tar(p, samples)
        out.append(str(p))
    expected_drops = defect_shard(root / "part-900.tar")
    return [*out, str(root / "part-900.tar")], expected_drops  # type: ignore[return-value]


def tables(run: Path) -> dict[str, tuple[object, dict]]:
    """Each shard's table (all columns, row order) and its Parquet metadata, by shard name."""
    out = {}
    for p in sorted((run / "embeddings").glob("*.parquet")):
        assert not p.name.startswith(".")
        t = pq.read_table(p)
        out[p.stem] = (t.replace_schema_metadata(None), json.loads(t.schema.metadata[b"curate"]))
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Same tables (every column, row order, metadata: provenance, source fingerprint, stats) and totals."""
    ta, tb = tables(a), tables(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        assert ta[name][0].equals(tb[name][0]), name
        assert ta[name][1] == tb[name][1], name
    sa, sb = (json.loads((r / "stats" / "embed.json").read_text()) for r in (a, b))
    assert sa == sb
    ra, rb = (json.loads((r / "run.json").read_text())["embed"] for r in (a, b))
    assert ra == rb


def reference_world(root: Path, seed: int) -> dict:
    """``engine_world`` shards, a ``local-dir:`` model and their uninterrupted one-process run (``ref``)."""
    shards, drops = engine_world(root / "shards")
    # a local-dir: model: a config registered at run time exists only in the process that registered it
    model = f"local-dir:{make_local_dir(root / 'model', seed=seed)}"
    ref = root / "ref"
    res = run_embed(EmbedConfig(shards=shards, run=str(ref), model=model, device="cpu", batch_size=4, workers=1))
    assert res.shards_done == N_SHARDS + 1 and res.failed == []
    return {"root": root, "shards": shards, "drops": drops, "model": model, "ref": ref}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return reference_world(tmp_path_factory.mktemp("engines"), seed=3)


def cfg(world: dict, run: Path, **kw: object) -> EmbedConfig:
    return EmbedConfig(shards=world["shards"], run=str(run), model=world["model"], batch_size=4, workers=1,
                       **kw)  # type: ignore[arg-type]


def test_two_cpu_processes_resume_a_run_to_the_local_tables(world, tmp_path: Path) -> None:
    """Three shards embedded in this process, the other five by two CPU processes: every table, every
    column and the metadata (provenance, source fingerprint, stats) equal an uninterrupted one-process run."""
    run = tmp_path / "run"
    first = run_embed(dataclasses.replace(cfg(world, run, device="cpu"), shards=world["shards"][:3]))
    assert first.shards_done == 3
    res = run_embed(cfg(world, run, devices="cpu,cpu"))
    assert res.shards_done == N_SHARDS + 1 - 3 and res.shards_skipped == 3 and res.failed == []
    assert res.samples_written == (N_SHARDS - 3) * PER_SHARD + 6
    drops = {k: v for k, v in world["drops"].items() if k.startswith("dropped_")}
    assert {k: res.stats.get(k) for k in drops} == drops  # every drop reason, summed by the parent
    assert_same_run(world["ref"], run)
    again = run_embed(cfg(world, run, devices="cpu,cpu"))
    assert again.shards_done == 0 and again.shards_skipped == N_SHARDS + 1 and again.samples_written == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"devices": "cpu,cpu", "device": "cpu"}, "either --device .this process. or --devices"),
        ({"devices": "cpu,cpu", "engine": "ray"}, "--devices does not apply to --engine ray"),
        ({"devices": "cpu,,cpu"}, "bad --devices"),
        ({"engine": "spark"}, "unknown engine 'spark'"),
        ({"ray_address": "auto"}, "--ray-address does not apply to --engine local"),
    ],
)
def test_bad_engine_options(world, tmp_path: Path, kw, message) -> None:
    with pytest.raises(UsageError, match=message):
        run_embed(cfg(world, tmp_path / "run", **kw))
    assert not (tmp_path / "run" / "embeddings").exists()


def kill_world(root: Path) -> list[str]:
    """24 shards of 16 samples (24-63 px): enough work for a kill to land mid-run."""
    from curate.io.tarwrite import write_tar

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(24):
        samples = [(f"{s:03d}_{i:02d}", {"jpg": jpeg_bytes(COLORS[(s + i) % len(COLORS)], 24 + (7 * s + i) % 40),
                                         "txt": f"kill {s} {i}".encode()}) for i in range(16)]
        p = root / f"k-{s:03d}.tar"
        write_tar(p, samples)
        out.append(str(p))
    return out


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_cli_devices_lock_kill_and_resume(world, tmp_path: Path) -> None:
    """While ``curate embed --devices cpu,cpu`` runs, the run is locked; kill -9 of the parent alone stops
    its device processes; a rerun finishes with the tables of an uninterrupted run."""
    shards = kill_world(tmp_path / "shards")
    ref = tmp_path / "ref"
    run_embed(EmbedConfig(shards=shards, run=str(ref), model=world["model"], device="cpu", batch_size=4, workers=1))
    run = tmp_path / "run"
    args = ["embed", *shards, "--run", str(run), "--model", world["model"], "--batch-size", "4", "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*CURATE, *args, "--devices", "cpu,cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "embeddings").exists() or not list((run / "embeddings").glob("*.parquet")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(UsageError, match="another 'curate embed' is writing"), run_lock(RunDir(run), "embed"):
        pass  # the parent holds the lock for its device processes
    proc.send_signal(signal.SIGKILL)  # the parent only: its device processes must follow it
    proc.wait()
    deadline = time.monotonic() + 30
    while _group(proc.pid):
        assert time.monotonic() < deadline, f"processes outlived their parent: {_group(proc.pid)}"
        time.sleep(0.1)
    done = sorted(p.name for p in (run / "embeddings").glob("*.parquet"))
    assert 0 < len(done) < len(shards)  # killed mid-run
    res = run_embed(EmbedConfig(shards=shards, run=str(run), model=world["model"], device="cpu", batch_size=4,
                                workers=1))
    assert res.shards_skipped == len(done) and res.shards_done == len(shards) - len(done)
    assert_same_run(ref, run)
    assert not [p for p in (run / "embeddings").iterdir() if p.name.startswith(".")]
