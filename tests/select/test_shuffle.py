"""The shuffle file of a block: gathered a window of whole partitions at a time, it holds the same
record batches (one per partition, same values, same order, same metadata) as the whole block sorted at
once. The files' bytes may differ by a few bytes of buffer padding per batch (Arrow writes a small
slice's buffer untrimmed); pass 2 reads values."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

import curate.select.pipeline as pl
from curate.io.tables import fixed_list


def _whole_block(path: Path, chunk, rows, part, eligible, carry, parts) -> None:
    """The reference: every entry gathered at once, then one record batch per partition."""
    src = np.repeat(np.arange(len(part)), part.shape[1]) if part.ndim == 2 else np.arange(len(part))
    flat = part.reshape(-1)
    keep = np.flatnonzero(eligible[src] & (flat >= 0))
    keep = keep[np.argsort(flat[keep], kind="stable")]
    order, pv = src[keep], flat[keep]
    cols = {"row": pa.array(rows[order]), "partition": pa.array(pv)}
    for p in sorted(parts):
        name = {"image": "image_emb", "text": "text_emb"}[p]
        cols[name] = chunk.raw[name].take(pa.array(order))
    for k, v in carry.items():
        cols[k] = pa.array(np.asarray(v)[order])
    table = pa.table(cols)
    edges = np.r_[0, np.flatnonzero(np.diff(pv)) + 1, len(pv)] if len(pv) else np.zeros(1, np.int64)
    meta = {b"partitions": json.dumps([int(pv[a]) for a in edges[:-1]]).encode()}
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema.with_metadata(meta)) as w:
        for a, e in itertools.pairwise(edges):
            w.write_batch(table.slice(int(a), int(e - a)).combine_chunks().to_batches()[0])


@pytest.mark.parametrize("window", [1, 5, 64, 8192])
@pytest.mark.parametrize("two_d", [False, True])
def test_windowed_shuffle_has_the_batches_of_the_whole_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           window: int, two_d: bool) -> None:
    rng = np.random.default_rng(window + two_d)
    n, d = 300, 8
    img = rng.normal(size=(n, d)).astype(np.float16)
    txt = rng.normal(size=(n, d)).astype(np.float16)
    chunk = SimpleNamespace(raw={"image_emb": fixed_list(img), "text_emb": fixed_list(txt)})
    part = np.where(rng.random(n) < 0.6, 0, rng.integers(1, 30, n))  # partition 0 is larger than the window
    part[rng.random(n) < 0.1] = -1
    if two_d:
        part = np.stack([part, np.where(part >= 0, (part + 7) % 30, -1)], axis=1)
    eligible = rng.random(n) < 0.9
    rows = np.arange(1000, 1000 + n, dtype=np.int64)
    carry = {"pref": rng.random(n)}
    monkeypatch.setattr(pl, "SHUFFLE_WINDOW", window)
    pl._write_shuffle(tmp_path / "new.arrow", chunk, rows, part, eligible, carry, frozenset({"image", "text"}))
    _whole_block(tmp_path / "ref.arrow", chunk, rows, part, eligible, carry, frozenset({"image", "text"}))
    with pa.OSFile(str(tmp_path / "new.arrow"), "rb") as fa, pa.OSFile(str(tmp_path / "ref.arrow"), "rb") as fb:
        a, b = pa.ipc.open_file(fa), pa.ipc.open_file(fb)
        assert a.schema.equals(b.schema, check_metadata=True)
        assert a.num_record_batches == b.num_record_batches == len(json.loads(a.schema.metadata[b"partitions"]))
        for i in range(a.num_record_batches):
            assert a.get_batch(i).equals(b.get_batch(i))


def test_a_block_without_partitioned_rows_writes_an_empty_shuffle(tmp_path: Path) -> None:
    chunk = SimpleNamespace(raw={"image_emb": fixed_list(np.zeros((4, 2), np.float16))})
    pl._write_shuffle(tmp_path / "s.arrow", chunk, np.arange(4), np.full(4, -1), np.ones(4, bool), {},
                      frozenset({"image"}))
    with pa.OSFile(str(tmp_path / "s.arrow"), "rb") as f:
        reader = pa.ipc.open_file(f)
        assert reader.num_record_batches == 0
        assert json.loads(reader.schema.metadata[b"partitions"]) == []


def test_read_partition_gathers_every_block_in_pool_order(tmp_path: Path) -> None:
    """A partition read from several blocks' shuffle files, copied piece by piece into arrays sized from
    the index, equals its rows gathered from the blocks at once (rows, float16 values, carried columns)."""
    from curate.select.partindex import PartitionIndex, Totals, block_counts, write_index

    rng = np.random.default_rng(7)
    n_blocks, n, d, k = 5, 200, 8, 12
    (tmp_path / "sh").mkdir()
    totals, present, ref = Totals(k), [], []
    for b in range(n_blocks):
        img = rng.normal(size=(n, d)).astype(np.float16)
        txt = rng.normal(size=(n, d)).astype(np.float16)
        chunk = SimpleNamespace(raw={"image_emb": fixed_list(img), "text_emb": fixed_list(txt)})
        part = rng.integers(0, k, n) if b != 2 else np.full(n, 3)  # block 2 holds partition 3 only
        part[rng.random(n) < 0.1] = -1
        eligible = rng.random(n) < 0.9
        rows = np.arange(b * n, (b + 1) * n, dtype=np.int64)
        carry = {"pref": rng.random(n)}
        pl._write_shuffle(tmp_path / "sh" / f"b{b:07d}.arrow", chunk, rows, part, eligible, carry,
                          frozenset({"image", "text"}))
        ok = eligible & (part >= 0)
        totals.add(*block_counts(np.where(ok, part, -1)))
        present.append(block_counts(np.where(ok, part, -1))[0])
        ref.append((rows[ok], part[ok], img[ok], txt[ok], carry["pref"][ok]))
    write_index(tmp_path / "index", n_blocks, present.__getitem__, totals.spread, 1 << 12, totals.sizes)
    index = PartitionIndex(tmp_path / "index")
    readers = pl.ShuffleReaders(tmp_path, cap=3)  # files kept open across partitions, the oldest closed first
    few = pl.ShuffleReaders(tmp_path, max_entries=k)  # a budget of partition entries: about one file open
    for p in [*range(k), *reversed(range(k))]:
        data = pl.read_partition(tmp_path, index, p, frozenset({"image", "text"}), ("pref",),
                                 (None, readers, few)[p % 3])
        want = [tuple(x[r[1] == p] for x in r) for r in ref]
        np.testing.assert_array_equal(data.rows, np.concatenate([w[0] for w in want]))
        np.testing.assert_array_equal(data.raw16("image"), np.concatenate([w[2] for w in want]))
        np.testing.assert_array_equal(data.raw16("text"), np.concatenate([w[3] for w in want]))
        np.testing.assert_array_equal(data.carry["pref"], np.concatenate([w[4] for w in want]))
        assert data.raw16("image").dtype == np.float16
        assert len(readers._open) <= 3
        assert few._entries <= k or len(few._open) == 1
    readers.close()
    few.close()
    with pytest.raises(ValueError, match="rows per partition"):
        write_index(tmp_path / "old", n_blocks, present.__getitem__, totals.spread, 1 << 12)
        pl.read_partition(tmp_path, PartitionIndex(tmp_path / "old"), 0, frozenset({"image"}), ())


def test_the_copies_reserve_is_what_the_task_process_holds_besides_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task keeps float32 copies only in what ``--memory`` leaves after its own resident memory (less the
    partition's float16 rows, which the budget does not count) and the product's scratch."""
    n, d = 1000, 64
    emb = fixed_list(np.ones((n, d), np.float16))
    data = pl.PartitionData(0, np.arange(n), {"image_emb": emb, "text_emb": emb})
    assert data.raw_bytes() == 2 * n * d * 2
    copies = data.held_bytes(2)  # image and text as float32
    assert copies == 2 * n * d * 4

    rss = pl.resident_bytes()  # read from /proc on Linux: this process, torch loaded by the reserve
    assert rss is not None and rss > 0
    held = 300 << 20
    monkeypatch.setattr(pl, "resident_bytes", lambda: held + data.raw_bytes())
    assert pl.task_reserve(data.raw_bytes()) == held + pl.TASK_SCRATCH
    budget = held + pl.TASK_SCRATCH + copies
    assert data.holds(2, budget)  # the copies just fit
    assert not data.holds(2, budget - 1)  # one byte less: normalised a block at a time
    monkeypatch.setattr(pl, "resident_bytes", lambda: held + data.raw_bytes() + 1)
    assert not data.holds(2, budget)  # the process holds a byte more: no room left
    assert data.holds(2, budget, reserve=budget - copies)  # an explicit reserve is taken as given
    monkeypatch.setattr(pl, "resident_bytes", lambda: None)  # not Linux: the fixed overhead
    assert pl.task_reserve(data.raw_bytes()) == pl.TASK_OVERHEAD
