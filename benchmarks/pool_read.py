"""Reading the pool's embedding tables: the figures behind BENCHMARKS §4's "second pass".

Three measurements, each in a fresh process so that peak RSS is its own:

* ``decode``: seconds to decode the ``image_emb`` column of one row group, written as before
  (pyarrow's defaults: dictionary attempt, Snappy) and as ``write_embedding_table`` writes it now
  (vector columns plain and uncompressed). Best of ``--repeats``, the two layouts interleaved.
* ``block``: the RSS a process gains reading one 65,536-row block of image and text with
  ``PoolSource.chunk``, the bytes Arrow holds then, and the RSS after the block is dropped, with and
  without handing Arrow's freed memory back (``release_arrow_memory``).
* ``gather``: seconds and peak RSS of ``gather_rows`` for the k-means sample of kmeans:1000 (256k rows).

    python benchmarks/pool_read.py --n 1000000 --out benchmarks/results/pool_read.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            got[line[:5]] = int(line.split()[1]) / 1024
    return got["VmRSS"], got["VmHWM"]


def decode(run: Path, repeats: int) -> dict:
    import pyarrow.parquet as pq

    from curate.io.tables import write_embedding_table

    src = sorted((run / "embeddings").glob("*.parquet"))[0]
    table = pq.read_table(src)
    old, new = run / "layout-old.parquet", run / "layout-new.parquet"
    pq.write_table(table, old)
    write_embedding_table(new, table)
    best = {"old": float("inf"), "new": float("inf")}
    for _ in range(repeats):
        for name, path in (("old", old), ("new", new)):
            f = pq.ParquetFile(path)
            t0 = time.perf_counter()
            f.read_row_group(0, columns=["image_emb"])
            best[name] = min(best[name], time.perf_counter() - t0)
    out = {"rows": table.num_rows, "old_s": best["old"], "new_s": best["new"],
           "old_mb": old.stat().st_size / 2**20, "new_mb": new.stat().st_size / 2**20}
    old.unlink()
    new.unlink()
    return out


def block(run: Path, release: bool) -> dict:
    import pyarrow as pa

    import curate.select.source as source_mod
    from curate.select.source import PoolSource

    if not release:  # the reader as it was before: Arrow keeps what it freed
        source_mod.release_arrow_memory = lambda: None
    src = PoolSource.open(run)
    start = rss_mb()[0]
    s, e = src.blocks()[1]
    chunk = src.chunk(s, e, {"image", "text"})
    held = pa.total_allocated_bytes() / 2**20
    after_read = rss_mb()[0]
    del chunk
    src.release()
    if release:
        source_mod.release_arrow_memory()
    return {"release": release, "rss_gain_mb": after_read - start, "arrow_mb": held,
            "rss_after_drop_gain_mb": rss_mb()[0] - start}


def gather(run: Path) -> dict:
    from curate.select.partition import default_kmeans_sample, sample_rows
    from curate.select.source import PoolSource, gather_rows

    src = PoolSource.open(run)
    rows = sample_rows(len(src), default_kmeans_sample(1000), 0)
    start = rss_mb()[0]
    t0 = time.perf_counter()
    data = gather_rows(src, {"image", "text"}, rows, lambda c: c.image_ok & c.text_ok)
    return {"rows": len(data), "seconds": time.perf_counter() - t0, "peak_gain_mb": rss_mb()[1] - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/curate-pool-read")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        what, run = args.one[0], Path(args.one[1])
        res = {"decode": lambda: decode(run, args.repeats), "block": lambda: block(run, True),
               "block-kept": lambda: block(run, False), "gather": lambda: gather(run)}[what]()
        print(json.dumps(res))
        return
    from select_scale import make_pool

    run = Path(args.workdir) / f"n{args.n}"
    if not (run / "class_text.npy").exists():
        make_pool(run, args.n, 512, 1000, 0)
    res = {}
    for what in ("decode", "block-kept", "block", "gather"):
        out = subprocess.run([sys.executable, __file__, "--one", what, str(run), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        res[what] = json.loads(out.stdout.strip().splitlines()[-1])
        print(what, res[what], file=sys.stderr, flush=True)
    d, bk, b, g = res["decode"], res["block-kept"], res["block"], res["gather"]
    lines = [
        "# Reading the pool's embedding tables (`benchmarks/pool_read.py`)", "",
        f"N = {args.n:,} synthetic rows, d = 512, files of 100,000 rows (one row group each); "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}. "
        f"`python benchmarks/pool_read.py --n {args.n}`", "",
        "| measurement | value |", "|---|---:|",
        f"| decode `image_emb` of one {d['rows']:,}-row group, pyarrow defaults (dictionary, Snappy) "
        f"| {d['old_s']:.2f} s ({d['old_mb']:.0f} MB file) |",
        f"| the same, vectors plain and uncompressed (`write_embedding_table`) | {d['new_s']:.2f} s "
        f"({d['new_mb']:.0f} MB file) |",
        f"| RSS gained reading one 65,536-row block (image + text), Arrow's freed memory kept "
        f"| {bk['rss_gain_mb']:.0f} MB (Arrow holds {bk['arrow_mb']:.0f} MB) |",
        f"| ... after dropping the block | {bk['rss_after_drop_gain_mb']:.0f} MB |",
        f"| RSS gained reading the block, freed memory handed back (current) | {b['rss_gain_mb']:.0f} MB "
        f"(Arrow holds {b['arrow_mb']:.0f} MB) |",
        f"| ... after dropping the block | {b['rss_after_drop_gain_mb']:.0f} MB |",
        f"| k-means sample of kmeans:1000 ({g['rows']:,} rows): `gather_rows` | {g['seconds']:.1f} s, "
        f"peak +{g['peak_gain_mb']:.0f} MB |",
    ]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
