"""Peak RSS and time of one clipcov pass-2 task holding one partition of n rows, by phase.

Each size runs in a fresh process (as a task process would): a synthetic class of n rows × d dims
(float16 image and caption rows near a common centre, so most products are positive), then the
selector's ``partition`` (cross terms, row terms; float32 copies held or read lazily as the memory
budget says) and the first ``--picks`` picks of the reference variant's pick sequence (its class
refreshes). ``--code DIR`` runs another checkout (e.g. a git worktree of an older commit).

    python benchmarks/pass2_memory.py --sizes 30000,60000,90000 --memory 1G --out benchmarks/results/pass2_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


def _task(n: int, d: int, memory: int, picks: int, threads: int) -> dict:
    """One partition's pass 2 in this process; the peaks (MB) and times (s) per phase."""
    import numpy as np
    import pyarrow as pa
    import torch

    torch.set_num_threads(threads)
    from curate.select.clipcov import ClipCov, ClipCovConfig
    from curate.select.pipeline import PartitionData

    rng = np.random.default_rng(0)
    centre = rng.standard_normal(d).astype(np.float32)

    def column() -> pa.FixedSizeListArray:
        x = (rng.standard_normal((n, d)).astype(np.float32) * 0.7 + centre).astype(np.float16)
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)

    data = PartitionData(0, np.arange(n, dtype=np.int64))
    data.raw["image_emb"], data.raw["text_emb"] = column(), column()
    label = rng.standard_normal((1, d))
    label /= np.linalg.norm(label)
    shared = {"device": "cpu", "seed": 0, "memory": memory, "class_text": label, "text_mean": label[0],
              "image_mean": label[0]}
    # the selector's own rule (older checkouts: copies up to half of --memory)
    held = data.holds(2, memory) if hasattr(data, "holds") else data.held_bytes() <= memory // 2
    sel = ClipCov(ClipCovConfig(partition="kmeans:1"))
    peak = [0]

    def poll() -> None:
        while True:
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    before = _rss_mb()
    threading.Thread(target=poll, daemon=True).start()
    t0 = time.perf_counter()
    out = sel.partition(data, shared)
    t1 = time.perf_counter()
    terms_peak, peak[0] = peak[0], 0
    out.cursor.take(picks)
    t2 = time.perf_counter()
    return {"n": n, "d": d, "f16_mb": round(2 * n * d * 2 / 2**20), "held_float32": bool(held),
            "before_mb": before, "terms_peak_mb": terms_peak, "picks_peak_mb": peak[0],
            "peak_mb": max(terms_peak, peak[0]), "terms_s": round(t1 - t0, 2), "picks_s": round(t2 - t1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="30000,60000,90000", help="rows of the partition, comma-separated")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--memory", default="1G", help="the select --memory budget")
    ap.add_argument("--picks", type=int, default=2000, help="picks of the reference sequence to take")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose curate/ runs")
    ap.add_argument("--label", default="", help="a name for this series in the output (e.g. a commit)")
    ap.add_argument("--out", default=None, help="append the rows to this JSON file")
    ap.add_argument("--_one", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    code = Path(args.code).resolve()
    sys.path.insert(0, str(code))
    from curate.select.base import parse_bytes  # the parser curate select uses for --memory

    memory = parse_bytes(args.memory)
    if args._one:
        print(json.dumps(_task(int(args._one[0]), args.d, memory, args.picks, args.threads)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--d", str(args.d), "--memory", args.memory, "--picks", str(args.picks),
               "--threads", str(args.threads), "--code", str(code), "--_one", str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(code)})
        got = json.loads(out.stdout.strip().splitlines()[-1])
        row = {"series": args.label or str(code), "memory": args.memory, **got}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else {"rows": []}
        old["machine"] = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
        old["rows"] = [r for r in old["rows"] if (r["series"], r["memory"], r["n"]) not in
                       {(x["series"], x["memory"], x["n"]) for x in rows}] + rows
        path.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
