"""The driver's cost of knowing where each partition is, at pool sizes this machine cannot embed.

select's pass 1 keeps each block's partitions (sparse); the driver adds up rows and blocks per
partition and writes the partition index (each partition's blocks) in slices of ``--memory`` / 4
(curate.select.partindex). This benchmark feeds that code the layout of a pool of N rows in blocks of
65,536 rows whose rows fall uniformly into K partitions (semdedup's default K = √N clusters, or
N / 128 clusters for a per-image-cluster filter), without writing the pool: each block's partitions
are drawn from a seeded generator. Each size runs in a fresh process; its peak RSS, the time to add
up and to write the index, the index's bytes on disk, and what the dense (block × partition) int64
matrix of earlier releases would have held are printed and written to ``--out``.

    python benchmarks/partition_index.py --sizes 12.8M,128M,1.28B --clusters sqrt --memory 1G
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK_ROWS = 1 << 16


def _count(text: str) -> int:
    """A pool size: ``12.8M``, ``1.28B`` (decimal: thousands, millions, billions) or a plain number."""
    units = {"K": 1e3, "M": 1e6, "B": 1e9}
    t = text.strip().upper()
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def _memory(text: str) -> int:
    """``--memory`` read as ``curate select`` reads it."""
    sys.path.insert(0, str(ROOT))
    from curate.select.base import parse_bytes

    return parse_bytes(text)


def _one(n: int, clusters: str, memory: int, folder: Path) -> dict:
    """One size in this process (a fresh one: the caller starts it)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from curate.select.partindex import PartitionIndex, Totals, write_index

    n_blocks = -(-n // BLOCK_ROWS)
    k = round(n ** 0.5) if clusters == "sqrt" else max(1, n // 128)

    def present_of(b: int) -> np.ndarray:
        rows = min(BLOCK_ROWS, n - b * BLOCK_ROWS)
        draw = np.random.default_rng([7, b]).integers(0, k, size=rows)
        return np.unique(draw)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    totals = Totals(k)
    for b in range(n_blocks):  # what _reduce_blocks does with each block's sparse counts
        p = present_of(b)
        totals.add(p, np.ones(len(p), np.int64))
    t1 = time.perf_counter()
    write_index(folder, n_blocks, present_of, totals.spread, memory // 4)
    t2 = time.perf_counter()
    index = PartitionIndex(folder)
    lookups = np.random.default_rng(3).integers(0, k - 1, size=200)
    t3 = time.perf_counter()
    for lo in lookups:  # a pass-2 task's question: which blocks hold its partitions
        index.blocks(int(lo), int(lo) + 1)
    t4 = time.perf_counter()
    pairs = int(totals.spread.sum())
    return {"n": n, "clusters": clusters, "k": k, "blocks": n_blocks, "pairs": pairs, "memory": memory,
            "add_s": round(t1 - t0, 2), "index_s": round(t2 - t1, 2), "lookup_ms": round((t4 - t3) / 200 * 1e3, 3),
            "index_bytes": (folder / "blocks.npy").stat().st_size + (folder / "offsets.npy").stat().st_size,
            "dense_bytes": n_blocks * k * 8, "import_rss_mb": round(base, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="12.8M,128M")
    ap.add_argument("--clusters", choices=("sqrt", "n128"), default="sqrt")
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "partition_index.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, folder = args.one.split(",", 1)
        print(json.dumps(_one(int(n), args.clusters, _memory(args.memory), Path(folder))))
        return
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for text in args.sizes.split(","):
        n = _count(text)
        with tempfile.TemporaryDirectory(prefix="pindex-") as tmp:
            out = subprocess.run([sys.executable, __file__, "--one", f"{n},{tmp}/index", "--clusters", args.clusters,
                                  "--memory", args.memory], check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(row))
        rows = [r for r in rows if (r["n"], r["clusters"], r["memory"]) != (n, args.clusters, row["memory"])]
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
