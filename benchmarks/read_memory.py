"""Peak RSS of reading one partition from the shuffle files, as a pass-2 task does (``read_partition``).

A synthetic shuffle (``--blocks`` blocks of ``--rows`` rows × ``--dim`` float16 image and caption
embeddings, ``--partitions`` seeded partitions) is written once into ``--workdir`` with the pipeline's
own writer and partition index. Each measurement runs in a fresh process: it reads the largest
partition (or, with ``--read-all``, every partition in turn, as a pass-2 task of many small partitions
does) and reports its peak RSS above the RSS it had before the read, next to the partition's float16
bytes, and the RSS left once the partition is dropped. ``--code DIR`` reads with another checkout (e.g.
a git worktree of an older commit), on the same files, so two checkouts are compared side by side.

    python benchmarks/read_memory.py --workdir /tmp/readmem --code /tmp/wt-old --code . \\
        --out benchmarks/results/read_memory.json
    python benchmarks/read_memory.py --workdir /tmp/readmem-many --partitions 1000 --read-all \\
        --code /tmp/wt-old --code . --repeats 3 --out benchmarks/results/read_memory_many.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status(key: str) -> int:
    """``key`` of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) // 1024
    return 0


def build(work: Path, blocks: int, rows: int, dim: int, partitions: int) -> None:
    """The shuffle files and the partition index of a seeded pool (skipped when already there)."""
    import numpy as np

    import curate.select.pipeline as pl
    from curate.io.tables import fixed_list
    from curate.select.partindex import Totals, block_counts, write_index

    if (work / "index" / "offsets.npy").exists():
        return
    (work / "sh").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    totals, present = Totals(partitions), []
    for b in range(blocks):
        chunk = type("Chunk", (), {})()
        chunk.raw = {name: fixed_list(rng.standard_normal((rows, dim), np.float32).astype(np.float16))
                     for name in ("image_emb", "text_emb")}
        part = rng.integers(0, partitions, rows)
        pl._write_shuffle(work / "sh" / f"b{b:07d}.arrow", chunk, np.arange(b * rows, (b + 1) * rows), part,
                          np.ones(rows, bool), {}, frozenset({"image", "text"}))
        got, counts = block_counts(part)
        totals.add(got, counts)
        present.append(got)
    kw = {"sizes": totals.sizes} if "sizes" in inspect.signature(write_index).parameters else {}
    write_index(work / "index", blocks, present.__getitem__, totals.spread, 1 << 26, **kw)
    np.save(work / "sizes.npy", totals.sizes)


def measure(work: Path, read_all: bool) -> dict:
    """Read the largest partition (or every partition, one after another, as a pass-2 task of many small
    partitions does) in this process; the peak RSS above the RSS before the reads, and their time."""
    import numpy as np

    import curate.select.pipeline as pl
    from curate.select.partindex import PartitionIndex

    sizes = np.load(work / "sizes.npy")
    which = [int(p) for p in np.flatnonzero(sizes)] if read_all else [int(np.argmax(sizes))]
    index = PartitionIndex(work / "index")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM starts again from the current RSS
    before, t0 = _status("VmRSS"), time.perf_counter()
    held = 0
    # a task's files stay open across its partitions where the checkout can (ShuffleReaders)
    kw = {"readers": pl.ShuffleReaders(work)} if hasattr(pl, "ShuffleReaders") else {}
    for p in which:
        data = pl.read_partition(work, index, p, frozenset({"image", "text"}), (), **kw)
        held = max(held, sum(a.nbytes for a in data.raw.values()) >> 20)
        del data
    for readers in kw.values():
        readers.close()
    seconds = time.perf_counter() - t0
    return {"partitions_read": len(which), "partition_rows": int(sizes[which].max()), "float16_mib": held,
            "before_mib": before, "peak_above_mib": _status("VmHWM") - before,
            "after_above_mib": _status("VmRSS") - before, "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--code", action="append", default=None, help="checkout(s) to read with (default: this one)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--read-all", action="store_true", help="read every partition, not only the largest")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.workdir, args.read_all)))
        return
    codes = [Path(c).resolve() for c in (args.code or [str(ROOT)])]
    env = {**os.environ, "PYTHONPATH": str(codes[-1])}
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                    f"from read_memory import build; from pathlib import Path; build(Path({str(args.workdir)!r}), "
                    f"{args.blocks}, {args.rows}, {args.dim}, {args.partitions})"], check=True, env=env)
    results = []
    for r in range(args.repeats):  # alternating checkouts: A B A B
        for code in codes:
            commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "curate"], capture_output=True,
                                   text=True).stdout.strip()
            one = [sys.executable, __file__, "--one", "--workdir", str(args.workdir)]
            out = subprocess.run(one + (["--read-all"] if args.read_all else []),
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(code)})
            rec = {"code": str(code), "commit": commit + ("+changes" if dirty else ""), "repeat": r,
                   **json.loads(out.stdout)}
            print(json.dumps(rec), flush=True)
            results.append(rec)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                        "cpus": os.cpu_count(), "blocks": args.blocks, "rows": args.rows,
                                        "dim": args.dim, "partitions": args.partitions, "read_all": args.read_all,
                                        "results": results},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
