"""Are a fresh process's first log-sum-exps the same bits every time? (a reliability benchmark)

Each of ``--forks`` processes is forked from this one (torch imported, nothing computed), computes one
negcliploss tile (a 1000 × 1000 product of unit vectors at d = 32, over τ = 0.05) and the log-sum-exp of
each row, and prints the result's hash. ``threaded``: the log-sum-exp on the process's two threads;
``one-thread``: on one (what ``curate.select.negcliploss.batch_lse`` does since 1565c6f). Run it beside
two CPU-bound programs (``yes > /dev/null``) to reproduce the counts in BENCHMARKS.md.

    python benchmarks/lse_threads.py --mode threaded --forks 1500
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os

import numpy as np
import torch


def tile_hash(mode: str) -> str:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1000, 32)).astype(np.float32)
    b = rng.standard_normal((1000, 32)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    z = (torch.from_numpy(a) @ torch.from_numpy(b).T).mul_(20.0)
    if mode == "one-thread":
        torch.set_num_threads(1)
    r = torch.logsumexp(z, dim=1)
    return hashlib.md5(r.numpy().tobytes()).hexdigest()[:8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["threaded", "one-thread"], default="threaded")
    ap.add_argument("--forks", type=int, default=500)
    args = ap.parse_args()
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(args.forks):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, tile_hash(args.mode).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as fh:
            seen[fh.read()] += 1
        os.waitpid(pid, 0)
    print({"mode": args.mode, "forks": args.forks, "results": dict(seen.most_common())})


if __name__ == "__main__":
    main()
