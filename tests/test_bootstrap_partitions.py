"""The partitioned rounds write the files of the in-memory rounds, byte for byte, at any part size.

Each scenario runs the same rounds on two copies of a run: ``tests/bootstrap_oracle.py`` (the in-memory
implementation the rounds had before) and ``bootstrap_round`` with tiny parts (``partition_rows``), so that
the uid index has many buckets, the loss table many read tasks, batch ranges and pool row ranges, and the
pool many chunks (``POOL_CHUNK`` is lowered on both sides). Every file under the run must be equal after every
round, except the pool cache (its layout differs by design) and run.json's command log (timestamps).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bootstrap_helpers import make_pool_run, manifest_uids
from bootstrap_oracle import oracle_round

import curate.bootstrap.data as bdata
import curate.bootstrap.rounds as bengine
import curate.bootstrap.store as bstore
from curate.bootstrap import bootstrap_round
from curate.errors import InputError
from curate.io.manifest import build_manifest, write_manifest
from curate.io.tables import embedding_schema, fixed_list, write_table
from curate.rundir import RunDir

CACHE = {"bootstrap/pool.arrow", "bootstrap/pool-index.arrow"}


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pool chunks of 64 rows on both sides (the manifest is cut from whole chunks and hashed per chunk)."""
    for mod in (bdata, bstore, bengine):
        monkeypatch.setattr(mod, "POOL_CHUNK", 64)
    return 64


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel in CACHE:
            continue
        data = p.read_bytes()
        if p.name == "run.json":
            rec = json.loads(data)
            rec.pop("commands", None)
            data = json.dumps(rec, sort_keys=True).encode()
        out[rel] = data
    return out


def _assert_same(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb), sorted(set(fa) ^ set(fb))
    diff = [k for k in fa if fa[k] != fb[k]]
    assert not diff, diff
    hidden = [k for k in fb if any(part.startswith(".") for part in Path(k).parts)]
    assert not hidden, hidden


def record(run: RunDir, round_: int, seed: int, *, loss_b: bool = True, parts: int = 3, ties: bool = True,
           max_batch: int = 40) -> None:
    """Losses for every sample of round ``round_``'s manifest: shuffled, batches of 1..max_batch rows with sparse
    ids, each batch's rows spread over ``parts`` files, small row groups, tied losses."""
    uids = np.array(manifest_uids(run, round_), dtype=object)
    rng = np.random.default_rng([seed, round_])
    n = len(uids)
    uids = uids[rng.permutation(n)]
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, max_batch + 1)))
    batch = np.repeat(np.arange(len(sizes)) * 7 + 1000, sizes)[:n]
    a = rng.gamma(2.0, 1.0, n)
    b = rng.gamma(2.0, 1.0, n)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    part = rng.integers(0, parts, n)
    for k in range(parts):
        sel = part == k
        cols = {"uid": pa.array(list(uids[sel]), pa.string()), "batch": pa.array(batch[sel], pa.int64()),
                "loss_a": pa.array(a[sel], pa.float32())}
        if loss_b:
            cols["loss_b"] = pa.array(b[sel], pa.float32())
        path = run.losses_dir(round_) / f"part-{k:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path, row_group_size=53)


def _scenario(tmp_path: Path, base: RunDir, rounds: list[dict], loss: Callable[[RunDir, int], None] | None,
              **new_kw: object) -> None:
    """Run ``rounds`` (kwargs of each round) on the oracle's copy and on the partitioned copy; compare."""
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(base.root, old)
    shutil.copytree(base.root, new)
    for r, kw in enumerate(rounds):
        if r and loss is not None:
            loss(RunDir(old), r - 1)
            loss(RunDir(new), r - 1)
        s_old = oracle_round(old, r, **kw)
        s_new = bootstrap_round(new, r, **kw, **new_kw).summary  # type: ignore[arg-type]
        assert s_new == s_old, r
        _assert_same(old, new)


def test_scan_plateau_and_cycles(tmp_path: Path, small_chunks: int) -> None:
    base = make_pool_run(tmp_path / "base", 1500, per_shard=137)
    knobs = {"prune_td": 0.9, "t_cos": 2}  # the plateau rule (losses every warm-up round), then 2 cycles
    rounds = [{"knobs": knobs, "seed": 5}] + [{}] * 8
    _scenario(tmp_path, base, rounds, lambda run, r: record(run, r, seed=1), partition_rows=97)


def test_scan_global_scope_one_direction(tmp_path: Path, small_chunks: int) -> None:
    base = make_pool_run(tmp_path / "base", 900, per_shard=100)
    knobs = {"warmup_rounds": 0, "rank_scope": "global", "prune_mode": "redundant", "rho_min": 0.4}
    _scenario(tmp_path, base, [{"knobs": knobs}] + [{}] * 3,
              lambda run, r: record(run, r, seed=2, loss_b=False), partition_rows=50)


def test_scan_ill_matched_without_ties(tmp_path: Path, small_chunks: int) -> None:
    base = make_pool_run(tmp_path / "base", 700, per_shard=64)
    knobs = {"warmup_rounds": 1, "prune_mode": "ill_matched", "t_cos": 1}
    _scenario(tmp_path, base, [{"knobs": knobs, "seed": 3}] + [{}] * 5,
              lambda run, r: record(run, r, seed=3, ties=False, parts=1, max_batch=300), partition_rows=128)


def test_infobatch_pruned_rounds(tmp_path: Path, small_chunks: int) -> None:
    """Later rounds read losses of pruned rounds (the allowed rows come from the decisions)."""
    base = make_pool_run(tmp_path / "base", 1200, per_shard=90)
    rounds = [{"method": "infobatch", "knobs": {"total_rounds": 6, "prune_ratio": 0.4}, "seed": 2}] + [{}] * 6
    _scenario(tmp_path, base, rounds, lambda run, r: record(run, r, seed=4), partition_rows=64)


def test_none_and_init_selection(tmp_path: Path, small_chunks: int) -> None:
    base = make_pool_run(tmp_path / "base", 600, per_shard=70)
    uids = manifest_uids_of_pool(base)[::3]
    _init_selection(base, uids, "third")
    _scenario(tmp_path / "a", base, [{"method": "none"}, {}, {}], None, partition_rows=10)
    _scenario(tmp_path / "b", base, [{"init": "third", "knobs": {"warmup_rounds": 0}}, {}, {}],
              lambda run, r: record(run, r, seed=5), partition_rows=33)


def test_ragged_uids(tmp_path: Path, small_chunks: int) -> None:
    """Uids of many lengths (keys from padded words; no fixed-width fast path)."""
    base = _ragged_pool_run(tmp_path / "base", 800)
    _scenario(tmp_path, base, [{"knobs": {"warmup_rounds": 0, "t_cos": 1}}] + [{}] * 3,
              lambda run, r: record(run, r, seed=6), partition_rows=40)


def test_uids_of_an_odd_width(tmp_path: Path, small_chunks: int) -> None:
    """Uids of one width that is not a multiple of 8 bytes (padded words on both sides of the join)."""
    base = _ragged_pool_run(tmp_path / "base", 700, uid=lambda i: f"u{i:012d}")
    _scenario(tmp_path, base, [{"knobs": {"warmup_rounds": 0, "t_cos": 1}}] + [{}] * 3,
              lambda run, r: record(run, r, seed=9), partition_rows=45)


def test_worker_processes_write_the_same_files(tmp_path: Path, small_chunks: int) -> None:
    """Tasks in two local processes (``--workers 2``): the same bytes as in this process."""
    base = make_pool_run(tmp_path / "base", 500, per_shard=60)
    _scenario(tmp_path, base, [{"knobs": {"warmup_rounds": 1}, "seed": 1}] + [{}] * 2,
              lambda run, r: record(run, r, seed=7), partition_rows=120, engine="local",
              engine_options={"workers": 2})


def test_default_parts_on_a_real_chunk_size(tmp_path: Path) -> None:
    """Pool chunks of 65,536 rows (no patching): a pool of two chunks and one part per pass."""
    base = make_pool_run(tmp_path / "base", 70_000, per_shard=10_000)
    _scenario(tmp_path, base, [{"knobs": {"warmup_rounds": 0, "t_cos": 1}}, {}, {}],
              lambda run, r: record(run, r, seed=8, parts=2, max_batch=4096))


# --- errors: the same message, whatever the part size ---------------------------------------------------
def _damaged(kind: str) -> Callable[[RunDir], None]:
    def f(run: RunDir) -> None:
        uids = manifest_uids(run, 1)
        n = len(uids)
        rng = np.random.default_rng(0)
        a = rng.random(n).astype(np.float32)
        cols = {"uid": uids, "batch": np.arange(n) // 10, "loss_a": a, "loss_b": rng.random(n).astype(np.float32)}
        d = run.losses_dir(1)
        d.mkdir(parents=True, exist_ok=True)
        second = None
        if kind == "unknown":
            cols["uid"] = [*uids[:-3], "x" * 32, uids[5], "y" * 32]  # a duplicate hidden behind unknowns
        elif kind == "duplicate":
            cols["uid"] = [*uids[:-2], uids[400], uids[17]]
        elif kind == "nan":
            a[[3, 300]] = np.nan
            cols["loss_b"][7] = np.inf
        elif kind == "partial_b":
            second = {"uid": ["zz"], "batch": [0], "loss_a": [1.0]}
        elif kind == "types_then_columns":
            second = {"uid": ["zz"], "loss_a": [1.0]}
            cols["loss_a"] = [f"{x}" if i != 250 else "abc" for i, x in enumerate(a)]
        elif kind == "null_batch":
            cols["batch"] = pa.array([None if i == 9 else i // 10 for i in range(n)], pa.int64())
        pq.write_table(pa.table(cols), d / "part-00000.parquet", row_group_size=37)
        if second is not None:
            pq.write_table(pa.table(second), d / "part-00001.parquet")

    return f


@pytest.mark.parametrize("kind", ["unknown", "duplicate", "nan", "partial_b", "types_then_columns", "null_batch"])
def test_errors_match_the_in_memory_rounds(tmp_path: Path, kind: str) -> None:
    base = make_pool_run(tmp_path / "base", 450, per_shard=50)
    bootstrap_round(base.root, 0, knobs={"warmup_rounds": 1})
    bootstrap_round(base.root, 1)
    _damaged(kind)(base)
    msgs = []
    for name, fn, kw in (("old", oracle_round, {}), ("new", bootstrap_round, {"partition_rows": 23})):
        run = tmp_path / name
        shutil.copytree(base.root, run)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        with pytest.raises(InputError) as exc:
            fn(run, 2, **kw)
        msgs.append(str(exc.value).replace(str(run), "RUN"))
        if name == "new":
            after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
            assert after == before  # nothing written, no task output left
    assert msgs[0] == msgs[1]


# --- helpers ---------------------------------------------------------------------------------------
def manifest_uids_of_pool(run: RunDir) -> list[str]:
    from curate.bootstrap.data import load_round_pool

    return load_round_pool(run.root).uids.to_pylist()


def _init_selection(run: RunDir, uids: list[str], name: str) -> None:
    from curate.bootstrap.data import load_round_pool

    pool = load_round_pool(run.root).table
    rows = pool.filter(pa.compute.is_in(pool.column("uid"), value_set=pa.array(uids)))
    m = build_manifest(rows, kind="selection", command="test", pool_size=pool.num_rows)
    write_manifest(run.selection_dir(name) / "manifest.parquet", m)


def _ragged_pool_run(root: Path, n: int, per_shard: int = 75,
                     uid: Callable[[int], str] = lambda i: f"u{i}-" + "x" * (i % 23)) -> RunDir:
    run = RunDir(root)
    shards = []
    for s, start in enumerate(range(0, n, per_shard)):
        idx = np.arange(start, min(n, start + per_shard))
        name = f"{s:05d}"
        emb = np.zeros((len(idx), 4), np.float16)
        table = pa.table({
            "uid": [uid(int(i)) for i in idx],
            "shard": [name] * len(idx),
            "key": [f"{i:09d}" for i in idx],
            "position": pa.array(idx - start, pa.int32()),
            "content_hash": [f"{i:032x}" for i in idx],
            "image_emb": fixed_list(emb),
            "text_emb": fixed_list(emb),
            "clip_score": pa.array(np.zeros(len(idx), np.float32)),
        }, schema=embedding_schema(4))
        write_table(run.embedding_file(name), table)
        shards.append({"name": name, "url": f"/data/{name}.tar"})
    run.update("embed", {"shards": shards, "model": "none"}, command="test pool")
    return run


# --- resume ---------------------------------------------------------------------------------------------
class _Stop(BaseException):
    """Stands for a kill (not an input error: the work folder stays)."""


def test_a_stopped_round_resumes_from_the_finished_tasks(tmp_path: Path, small_chunks: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.bootstrap.tasks as btasks

    base = make_pool_run(tmp_path / "base", 1500, per_shard=137)
    bootstrap_round(base.root, 0, knobs={"warmup_rounds": 1})
    bootstrap_round(base.root, 1)
    record(RunDir(base.root), 1, seed=11)
    reference = tmp_path / "reference"
    shutil.copytree(base.root, reference)
    bootstrap_round(reference, 2, partition_rows=97)

    ran: list[tuple[str, bool]] = []  # (stage, whether its part was already written)
    real = {"a": btasks._read_task, "b": btasks._join_task, "c": btasks._rank_task}

    def counted(stage: str, stop_after: int | None) -> Callable[..., object]:
        def task(item: object, spec: btasks.Spec) -> object:
            if stop_after is not None and sum(s == stage for s, _ in ran) >= stop_after:
                raise _Stop
            ran.append((stage, spec.part(stage, item[0] if isinstance(item, tuple) else item).exists()))
            return real[stage](item, spec)
        return task

    monkeypatch.setattr(btasks, "_read_task", counted("a", None))
    monkeypatch.setattr(btasks, "_join_task", counted("b", None))
    monkeypatch.setattr(btasks, "_rank_task", counted("c", 3))  # stopped in the third pass
    with pytest.raises(_Stop):
        bootstrap_round(base.root, 2, partition_rows=97)
    work = bengine.work_path(base, 2)
    assert work.is_dir() and not base.manifest_file(2).exists()
    first = len(ran)
    assert not any(done for _, done in ran)
    monkeypatch.setattr(btasks, "_rank_task", counted("c", None))
    bootstrap_round(base.root, 2, partition_rows=97)
    again = ran[first:]
    # the rerun found the parts of the finished tasks (all of the first two passes, three of the third)
    assert [s for s, done in again if done] == [s for s, _ in ran[:first]]
    assert sum(s == "c" and not done for s, done in again) > 0
    assert not work.exists()
    _assert_same(reference, base.root)


def test_reset_removes_a_stopped_rounds_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.bootstrap.tasks as btasks
    from curate.bootstrap import reset_rounds

    run = make_pool_run(tmp_path / "run", 300, per_shard=70)
    bootstrap_round(run.root, 0, knobs={"warmup_rounds": 0})
    record(run, 0, seed=12)

    def stop(item: object, spec: btasks.Spec) -> None:
        raise _Stop

    monkeypatch.setattr(btasks, "_rank_task", stop)
    with pytest.raises(_Stop):
        bootstrap_round(run.root, 1, partition_rows=50)
    work = bengine.work_path(run, 1)
    assert any(p.is_file() for p in work.rglob("*"))
    res = reset_rounds(run.root)
    assert not work.exists() and any(".work-round-0001" in str(p) for p in res.removed)
    assert not res.kept
