"""Builders for bootstrap tests: runs with a synthetic pool and hand-made loss tables (no model, no shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.io.tables import embedding_schema, fixed_list, write_table
from curate.rundir import RunDir


def uid_of(i: int) -> str:
    return f"{i:032x}"


def make_pool_run(root: Path, n: int, per_shard: int = 50, dim: int = 4) -> RunDir:
    """A run folder whose embeddings hold ``n`` samples over ``ceil(n/per_shard)`` shards."""
    run = RunDir(root)
    shards = []
    for s, start in enumerate(range(0, n, per_shard)):
        idx = np.arange(start, min(n, start + per_shard))
        name = f"{s:05d}"
        emb = np.zeros((len(idx), dim), np.float16)
        table = pa.table(
            {
                "uid": [uid_of(i) for i in idx],
                "shard": [name] * len(idx),
                "key": [f"{i:09d}" for i in idx],
                "position": pa.array(idx - start, pa.int32()),
                "content_hash": [f"{i:032x}" for i in idx],
                "image_emb": fixed_list(emb),
                "text_emb": fixed_list(emb),
                "clip_score": pa.array(np.zeros(len(idx), np.float32)),
            },
            schema=embedding_schema(dim),
        )
        write_table(run.embedding_file(name), table)
        shards.append({"name": name, "url": f"/data/{name}.tar"})
    run.update("embed", {"shards": shards, "model": "none"}, command="test pool")
    return run


def write_losses(
    run: RunDir,
    round_: int,
    uids: list[str] | np.ndarray,
    batch: np.ndarray,
    loss_a: np.ndarray,
    loss_b: np.ndarray | None = None,
    part: int = 0,
) -> Path:
    """Write one loss part of a round."""
    cols = {
        "uid": pa.array(list(uids), pa.string()),
        "batch": pa.array(np.asarray(batch), pa.int64()),
        "loss_a": pa.array(np.asarray(loss_a), pa.float32()),
    }
    if loss_b is not None:
        cols["loss_b"] = pa.array(np.asarray(loss_b), pa.float32())
    path = run.losses_dir(round_) / f"part-{part:05d}.parquet"
    write_table(path, pa.table(cols))
    return path


def manifest_uids(run: RunDir, round_: int) -> list[str]:
    from curate.io.manifest import read_manifest

    return read_manifest(run.manifest_file(round_)).table.column("uid").to_pylist()


def record_random_losses(run: RunDir, round_: int, batch_size: int = 10, seed: int = 0, level: float = 1.0) -> None:
    """Losses for every sample of round ``round_``'s manifest, in batches of ``batch_size``."""
    uids = manifest_uids(run, round_)
    rng = np.random.default_rng([seed, round_])
    n = len(uids)
    batch = np.arange(n) // batch_size
    write_losses(run, round_, uids, batch, level * rng.random(n) + 0.1, level * rng.random(n) + 0.1)
