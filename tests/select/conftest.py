"""Fixtures for selection tests: runs built directly from hand-made embedding matrices."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.io.tables import embedding_schema, fixed_list, write_table
from curate.rundir import RunDir

MakeRun = Callable[..., Path]


def hex_uid(i: int) -> str:
    """A DataComp-style 128-bit hex uid."""
    return hashlib.md5(f"sample-{i}".encode()).hexdigest()


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_run(
    root: Path,
    img: np.ndarray,
    txt: np.ndarray | None = None,
    *,
    clip_score: np.ndarray | None = None,
    text_null: np.ndarray | None = None,
    n_shards: int = 2,
    shard_urls: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    sources: Sequence[dict] | None = None,
) -> Path:
    """Write ``root/embeddings/<shard>.parquet`` (float16, as ``curate embed`` does) and run.json
    (``sources``: each shard's fingerprint, stored with its table as embed does)."""
    n, d = img.shape
    txt = img if txt is None else txt
    if clip_score is None:
        clip_score = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32))
    text_null = np.zeros(n, bool) if text_null is None else text_null
    clip_score = np.where(text_null, np.nan, clip_score)
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    shards = []
    for s in range(n_shards):
        lo, hi = bounds[s], bounds[s + 1]
        name = f"{s:05d}"
        shards.append({"name": name, "url": shard_urls[s] if shard_urls else f"/data/{name}.tar"})
        txt_arr = fixed_list(txt[lo:hi])
        if text_null[lo:hi].any():
            txt_arr = pa.FixedSizeListArray.from_arrays(txt_arr.values, d, mask=pa.array(text_null[lo:hi]))
        cs = clip_score[lo:hi].astype(np.float32)
        table = pa.table(
            {
                "uid": [hex_uid(i) for i in range(lo, hi)],
                "shard": [name] * (hi - lo),
                "key": list(keys[lo:hi]) if keys is not None else [f"{i:09d}" for i in range(lo, hi)],
                "position": pa.array(np.arange(hi - lo), pa.int32()),
                "content_hash": [hex_uid(i) for i in range(lo, hi)],
                "image_emb": fixed_list(img[lo:hi]),
                "text_emb": txt_arr,
                "clip_score": pa.array(cs, mask=np.isnan(cs)),
            },
            schema=embedding_schema(d, {"model": "test", "dim": d, **({"source": sources[s]} if sources else {})}),
        )
        write_table(root / "embeddings" / f"{name}.parquet", table)
    RunDir(root).update("embed", {"model": "test", "shards": shards}, command="test")
    return root


def write_caption_run(root: Path, captions: Sequence[str | None], n_shards: int = 2, d: int = 8,
                      seed: int = 0) -> Path:
    """A run whose shards (``root/shards/<shard>.tar``: a few image bytes, never decoded, and ``txt`` unless
    the caption is None) hold ``captions`` in pool order, with random embeddings and the shards'
    fingerprints recorded with the tables."""
    from curate.io.shards import fingerprint
    from curate.io.tarwrite import write_tar

    n = len(captions)
    rng = np.random.default_rng(seed)
    img = normalise(rng.normal(size=(n, d)))
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    urls = []
    for s in range(n_shards):
        samples = []
        for i in range(int(bounds[s]), int(bounds[s + 1])):
            members = {"jpg": rng.integers(0, 256, 40, dtype=np.uint8).tobytes()}
            if captions[i] is not None:
                members["txt"] = str(captions[i]).encode()
            samples.append((f"{i:09d}", members))
        path = root / "shards" / f"{s:05d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tar(path, samples)
        urls.append(str(path))
    return write_run(root / "run", img, n_shards=n_shards, shard_urls=urls,
                     sources=[fingerprint(u) for u in urls])


def fail_on_call(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, n: int) -> dict[str, int]:
    """Make ``cls.method`` raise ``RuntimeError("injected failure")`` on its ``n``-th call; returns the call
    counter (``{"n": calls}``), which a test may reset (e.g. to -100) to count the calls of a rerun."""
    real = getattr(cls, method)
    calls = {"n": 0}

    def failing(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("injected failure")
        return real(self, *a, **k)

    monkeypatch.setattr(cls, method, failing)
    return calls


@pytest.fixture
def make_run(tmp_path: Path) -> MakeRun:
    """``make_run(img, txt=None, **kw) -> run folder`` under a fresh tmp dir per call."""
    counter = iter(range(1000))

    def make(img: np.ndarray, txt: np.ndarray | None = None, **kw: object) -> Path:
        return write_run(tmp_path / f"run{next(counter)}", img, txt, **kw)  # type: ignore[arg-type]

    return make


def read_scores(selection_dir: Path) -> dict[str, np.ndarray]:
    """``scores.parquet`` as numpy columns (nulls: NaN for floats, -1 for ints, None for strings)."""
    import pyarrow.parquet as pq

    table = pq.read_table(selection_dir / "scores.parquet")
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_integer(col.type):
            out[name] = col.fill_null(-1).to_numpy()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
