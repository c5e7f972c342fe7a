"""The pool on disk (``store.py``): built streaming, the rows of the in-memory pool, a bucketed uid index that
finds every uid (equal keys included), the cache's life cycle, and the checks of the in-memory pool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from bootstrap_helpers import make_pool_run, uid_of

from curate.bootstrap import store as bstore
from curate.bootstrap.data import load_round_pool, pool_cache_path, pool_index_path
from curate.bootstrap.data import read_sorted_pool as bstore_read_sorted
from curate.bootstrap.store import INDEX_SCHEMA, open_pool_store
from curate.bootstrap.tasks import lookup
from curate.bootstrap.uidindex import mix, uid_keys, uid_words
from curate.errors import InputError
from curate.io.manifest import build_manifest, write_manifest
from curate.io.tables import read_parquet, write_table
from curate.rundir import RunDir


def _rows(store: bstore.PoolStore) -> pa.Table:
    return pa.concat_tables(list(store.chunks())) if len(store) else bstore.POOL_SCHEMA.empty_table()


def _assert_like_load_pool(run: RunDir, init: str | None = None, bucket_rows: int = 64) -> bstore.PoolStore:
    expected = load_round_pool(run.root, init)  # in memory, from the inputs (nothing cached yet)
    store = open_pool_store(run.root, init, bucket_rows=bucket_rows)
    store.ready()
    assert store.fresh and len(store) == len(expected) and store.digest == expected.digest
    assert _rows(store).equals(expected.table.combine_chunks())
    # every uid is found at its row through its bucket
    uids = expected.uids
    keys = uid_keys(uids)
    found = np.full(len(uids), -1)
    for b in range(store.buckets):
        sel = np.flatnonzero(bstore.bucket_of(keys, store.bits) == b)
        bucket = store.bucket(b)
        at = lookup(bucket, keys[sel], uids.take(pa.array(sel)))
        found[sel] = bucket.column("row").to_numpy()[at]
    assert np.array_equal(found, np.arange(len(uids)))
    return store


def test_streaming_pool_equals_the_in_memory_pool(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 1000, per_shard=77)
    store = _assert_like_load_pool(run)
    assert store.bits == 4 and store.width == 32  # 1000 rows in buckets of <= 64: 16 buckets
    store.commit()
    again = open_pool_store(run.root, bucket_rows=64)
    assert not again.fresh and again.digest == store.digest and _rows(again).equals(_rows(store))
    assert load_round_pool(run.root).table.combine_chunks().equals(_rows(store))  # the in-memory reader of the cache


def test_irregular_layouts_take_the_general_sort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    general = []
    monkeypatch.setattr(bstore, "read_sorted_pool", lambda files: general.append(1) or bstore_read_sorted(files))
    run = make_pool_run(tmp_path / "run", 600, per_shard=100)
    emb = sorted(run.embeddings_dir.glob("*.parquet"))
    t = read_parquet(emb[2])
    write_table(emb[2], t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows))))  # out of order
    write_table(run.embeddings_dir / "zz-empty.parquet", t.slice(0, 0))
    _assert_like_load_pool(run)
    assert not general  # one shard per file: streamed
    # a file holding two shards: the general (in-memory) sort
    a, b = read_parquet(emb[3]), read_parquet(emb[4])
    write_table(emb[3], pa.concat_tables([b, a]))
    emb[4].unlink()
    _assert_like_load_pool(RunDir(run.root))
    assert general


def test_uids_of_several_widths_after_fixed_ones(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 300, per_shard=100)
    last = sorted(run.embeddings_dir.glob("*.parquet"))[-1]
    t = read_parquet(last)
    write_table(last, t.set_column(0, "uid", pa.array([f"odd-{i}" * (1 + i % 3) for i in range(t.num_rows)])))
    store = _assert_like_load_pool(run, bucket_rows=40)
    assert store.width is None and pa.types.is_string(store.bucket(0).schema.field("uid").type)


def test_duplicate_uids_and_empty_pools_are_errors(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 200, per_shard=50)
    last = sorted(run.embeddings_dir.glob("*.parquet"))[-1]
    t = read_parquet(last)
    write_table(last, t.set_column(0, "uid", pa.array([uid_of(7), *t.column("uid").to_pylist()[1:]])))
    with pytest.raises(InputError, match="has duplicate uids") as exc:
        open_pool_store(run.root, bucket_rows=16).ready()
    with pytest.raises(InputError) as old:
        load_round_pool(run.root)
    assert str(exc.value) == str(old.value)
    assert not [p for p in run.bootstrap_dir.rglob("*") if p.is_file()]  # temporaries removed
    empty = make_pool_run(tmp_path / "empty", 0)
    with pytest.raises(InputError, match="no embeddings"):
        open_pool_store(empty.root)


def test_equal_keys_are_told_apart_by_the_uids() -> None:
    """A bucket where two different uids share a key: lookups compare the uids (as strings or words)."""
    uids = [uid_of(i) for i in range(6)]
    keys = np.array([5, 9, 9, 9, 12, 20], np.uint64)  # uids 1, 2, 3 collide on key 9
    bucket = pa.table({"key": keys, "row": np.arange(100, 106), "uid": uids}, schema=INDEX_SCHEMA)
    q = pa.array([uids[3], uids[1], "f" * 32, uids[2], uids[5]])
    qk = np.array([9, 9, 9, 9, 20], np.uint64)
    assert lookup(bucket, qk, q).tolist() == [3, 1, -1, 2, 5]
    words = uid_words(q, 32)
    assert lookup(bucket, qk, words).tolist() == [3, 1, -1, 2, 5]


def test_uid_keys() -> None:
    fixed = pa.array([uid_of(i) for i in range(100)])
    assert np.array_equal(uid_keys(fixed), mix(uid_words(fixed, 32)))  # the in-memory index's keys
    ragged = pa.array(["a", "abcdefghi", "", "x" * 17, "a", None])
    k = uid_keys(ragged)
    assert k[0] == k[4] and k[2] == k[5] and len(set(k.tolist())) == 4
    # a value keys the same in any array, whatever the other values' lengths
    assert uid_keys(pa.array(["abcdefghi"]))[0] == k[1]
    assert uid_keys(pa.chunked_array([ragged.slice(0, 2), ragged.slice(2)])).tolist() == k.tolist()


def test_cache_is_rebuilt_when_stale_or_damaged(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 300, per_shard=100)
    open_pool_store(run.root, bucket_rows=64).commit()
    digest = open_pool_store(run.root).digest
    f = sorted(run.embeddings_dir.glob("*.parquet"))[0]
    os.utime(f, ns=(1, 1))  # another mtime: the inputs' fingerprint changes
    assert open_pool_store(run.root).fresh
    open_pool_store(run.root).commit()
    pool_cache_path(run).write_bytes(pool_cache_path(run).read_bytes()[:100])  # damaged
    store = open_pool_store(run.root)
    assert store.fresh and store.digest == digest
    store.commit()
    # a cache of the previous layout (one record batch, no bucketed index) is rebuilt
    pool_index_path(run).unlink()
    assert open_pool_store(run.root).fresh


def test_init_manifest_is_streamed_and_checked(tmp_path: Path) -> None:
    run = make_pool_run(tmp_path / "run", 500, per_shard=60)
    pool = load_round_pool(run.root).table
    sel = pool.filter(pa.array(np.arange(pool.num_rows) % 3 == 0))
    write_manifest(run.selection_dir("third") / "manifest.parquet", build_manifest(sel, kind="selection", command="t"))
    _assert_like_load_pool(run, "third")
    # a row that names another shard than the one embedding it is still an embedded sample
    moved = sel.set_column(1, "shard", pa.array(["00000"] * sel.num_rows)).sort_by([("shard", "ascending"),
                                                                                    ("uid", "ascending")])
    moved = moved.set_column(3, "position", pa.array(np.arange(moved.num_rows, dtype=np.int32)))
    write_table(run.selection_dir("moved") / "manifest.parquet", moved)
    _assert_like_load_pool(RunDir(run.root), "moved")
    # samples of another run
    other = make_pool_run(tmp_path / "other", 50, per_shard=50)
    stranger = load_round_pool(other.root).table.set_column(0, "uid", pa.array([f"z{i:031d}" for i in range(50)]))
    write_manifest(run.selection_dir("x") / "manifest.parquet", build_manifest(stranger, kind="s", command="t"))
    with pytest.raises(InputError, match="50 of 50 samples are not embedded") as exc:
        open_pool_store(run.root, "x").ready()
    with pytest.raises(InputError) as old:
        load_round_pool(run.root, "x")
    assert str(exc.value) == str(old.value)
    shutil.rmtree(other.root)


def test_a_failed_init_check_leaves_the_pool_rows_to_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index thread's ``--init`` check may fail while the round still reads the pool rows: the round
    gets that check's one-line error (not a missing temporary file), and nothing is left behind."""
    from curate.bootstrap.rounds import bootstrap_round

    run = make_pool_run(tmp_path / "run", 500, per_shard=60)
    pool = load_round_pool(run.root).table
    sel = pool.filter(pa.array(np.arange(pool.num_rows) % 2 == 0))
    write_manifest(run.selection_dir("half") / "manifest.parquet", build_manifest(sel, kind="selection", command="t"))
    shutil.rmtree(run.bootstrap_dir, ignore_errors=True)

    def fails_at_once(*_: object) -> None:  # before the round has read a single pool row
        raise InputError("the --init check failed")

    monkeypatch.setattr(bstore, "_check_embedded", fails_at_once)
    with pytest.raises(InputError, match=r"^the --init check failed$"):
        bootstrap_round(run.root, 0, init="half")
    left = sorted(p.relative_to(run.root).as_posix() for p in run.bootstrap_dir.rglob("*"))
    assert left == [] and not run.bootstrap_dir.exists()
