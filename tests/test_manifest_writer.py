"""Streaming writers: ``RowGroupWriter`` and ``ManifestWriter`` write the bytes of the one-shot writers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import InputError
from curate.io.manifest import ManifestWriter, build_manifest, content_hash, read_manifest, write_manifest
from curate.io.tables import ROW_GROUP_ROWS, RowGroupWriter


def _pool(n: int, per_shard: int = 1000, chunk: int = 4096) -> pa.Table:
    i = np.arange(n)
    t = pa.table({
        "uid": [f"{x:032x}" for x in i],
        "shard": [f"{x // per_shard:05d}" for x in i],
        "key": [f"k{x}" for x in i],
        "position": pa.array((i % per_shard).astype(np.int32)),
    })
    return pa.Table.from_batches(t.to_batches(max_chunksize=chunk))


HEAD = {"params": {"a": 1}, "seed": 3, "round": 2, "phase": "mutate", "parent": "p", "pruned_by_reason": {"r": 5},
        "extra": {"bootstrap": {"z": 1}}}


@pytest.mark.parametrize("weighted", [False, True])
def test_pieces_give_the_bytes_of_build_manifest(tmp_path: Path, weighted: bool) -> None:
    n, chunk = 30_000, 4096
    pool = _pool(n, chunk=chunk)
    rng = np.random.default_rng(0)
    keep = rng.random(n) < 0.6
    w = np.where(rng.random(n) < 0.5, 2.0, 1.0).astype(np.float32)
    rows = pool.filter(pa.array(keep))  # the filtered chunks, as bootstrap always cut its manifests
    if weighted:
        rows = rows.append_column("weight", pa.array(w[keep]))
    m = build_manifest(rows, kind="bootstrap", command="x", pool_size=n, presorted=True, **HEAD)
    write_manifest(tmp_path / "a.parquet", m)
    writer = ManifestWriter(tmp_path / "b.parquet", hash_batches="pieces")
    for s in range(0, n, chunk):
        piece = pool.slice(s, chunk).filter(pa.array(keep[s : s + chunk]))
        if weighted:
            piece = piece.append_column("weight", pa.array(w[s : s + chunk][keep[s : s + chunk]]))
        writer.add(piece)
    head = writer.finish(kind="bootstrap", command="x", pool_size=n, **HEAD)
    assert head == m.header
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.parquet", "b.json", "b.parquet"]


def test_rows_mode_hashes_the_rows_as_one_table(tmp_path: Path) -> None:
    rows = _pool(10_000, chunk=10_000).combine_chunks()  # one chunk, as a sort gives
    writer = ManifestWriter(tmp_path / "m.parquet")
    for s in range(0, 10_000, 777):
        writer.add(rows.slice(s, 777))
    head = writer.finish(kind="selection", command="x", pool_size=20_000)
    assert head["content_hash"] == build_manifest(rows, kind="selection", command="x").header["content_hash"]
    assert head["counts"] == {"pool": 20_000, "kept": 10_000, "pruned": 10_000, "pruned_by_reason": {}}
    assert read_manifest(tmp_path / "m.parquet").table.column("uid").equals(rows.column("uid"))
    # the hash of a table cut into other chunks differs: "pieces" keeps the pieces' own batches
    pieces = ManifestWriter(tmp_path / "p.parquet", hash_batches="pieces")
    for s in range(0, 10_000, 777):
        pieces.add(rows.slice(s, 777))
    chunked = pa.Table.from_batches(rows.to_batches(max_chunksize=777))
    got = pieces.finish(kind="selection", command="x")["content_hash"]
    assert got == content_hash(build_manifest(chunked, kind="s", command="x", presorted=True).table)
    assert got != head["content_hash"]


def test_empty_manifest(tmp_path: Path) -> None:
    m = build_manifest(_pool(10).slice(0, 0), kind="bootstrap", command="x", pool_size=10, presorted=True)
    write_manifest(tmp_path / "a.parquet", m)
    w = ManifestWriter(tmp_path / "b.parquet", hash_batches="pieces")
    w.add(_pool(10).slice(0, 0))
    assert w.finish(kind="bootstrap", command="x", pool_size=10) == m.header
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_rows_out_of_order_and_bad_weights_are_errors(tmp_path: Path) -> None:
    rows = _pool(3000)
    w = ManifestWriter(tmp_path / "m.parquet")
    w.add(rows.slice(1000, 500))
    with pytest.raises(InputError, match="order"):
        w.add(rows.slice(0, 10))
    w.abort()
    w = ManifestWriter(tmp_path / "m.parquet")
    with pytest.raises(InputError, match="order"):
        w.add(pa.concat_tables([rows.slice(5, 1), rows.slice(4, 1)]))
    with pytest.raises(InputError, match="finite and positive"):
        w.add(rows.slice(0, 2).append_column("weight", pa.array([1.0, 0.0], pa.float32())))
    w.abort()
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_row_group_writer_matches_write_table() -> None:
    n = ROW_GROUP_ROWS + 123_457
    rng = np.random.default_rng(1)
    t = pa.table({"row": np.arange(n), "x": rng.random(n).astype(np.float32),
                  "k": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 3, n).astype(np.int8)),
                                                      pa.array(["a", "b", "c"]))})
    kw = {"use_dictionary": ["k"], "write_statistics": False}
    one = io.BytesIO()
    pq.write_table(t, one, **kw)
    many = io.BytesIO()
    w = RowGroupWriter(many, t.schema, **kw)
    for s in range(0, n, 300_001):
        w.write(t.slice(s, 300_001))
    w.close()
    assert one.getvalue() == many.getvalue()
    empty, none = io.BytesIO(), io.BytesIO()
    pq.write_table(t.slice(0, 0), empty, **kw)
    w = RowGroupWriter(none, t.schema, **kw)
    w.close()
    assert empty.getvalue() == none.getvalue()
