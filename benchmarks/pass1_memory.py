"""Peak RSS of select's pass-1 tasks, stage by stage, and what Arrow holds while reading a row group.

``stages``: the selector's setup runs in one process; three pass-1 blocks then run in a fresh process
(as a task process would), with its RSS polled every 2 ms and the peak kept per stage (read a block,
normalise it, scan it, write the shuffle and the block's table). ``--code DIR`` runs another checkout
(e.g. a git worktree of an older commit) on the same files.

``arrow``: iterate one row group of an embedding table in batches of 16,384 rows and print Arrow's
allocated bytes after each batch (a vector column's share of a row group is decoded whole).

    python benchmarks/pass1_memory.py stages --run RUN --method clipcov --options '{"partition": "kmeans:1000"}'
    python benchmarks/pass1_memory.py arrow --file RUN/embeddings/00001.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def _prepare(code: Path, run: Path, method: str, options: dict, out: Path) -> None:
    """Setup in this process; the task spec (as a task process receives it) pickled to ``out``."""
    sys.path.insert(0, str(code))
    from curate.select import pipeline as P
    from curate.select.base import SelectContext, get_selector
    from curate.select.source import PoolSource

    src = PoolSource.open(run)
    cls = get_selector(method)
    sel = cls(cls.config_class(**options))
    shared = P._setup(sel, src, SelectContext(run, seed=0, memory=1 << 30), None, None)
    work = Path(tempfile.mkdtemp(prefix="pass1-", dir=out.parent))
    for d in ("p1", "sh", "runs"):
        (work / d).mkdir()
    spec = P.TaskSpec(src, work, sel.name, sel.config.to_dict(), shared, sel.rule(len(src) // 10, shared),
                      memory=1 << 30)
    out.write_bytes(pickle.dumps(spec))


def _task(code: Path, spec_path: Path, blocks: list[int]) -> None:
    """Run pass-1 blocks in this (fresh) process; print the peak RSS per stage as JSON."""
    sys.path.insert(0, str(code))
    import curate.select.pipeline as P
    import curate.select.source as S

    stage = ["idle"]
    peaks: dict[str, float] = {}

    def poll() -> None:
        while True:
            r, s = _rss_mb(), stage[0]
            peaks[s] = max(peaks.get(s, 0.0), r)
            time.sleep(0.002)

    def wrap(owner: object, name: str, label: str) -> None:
        f = getattr(owner, name)

        def g(*a: object, **k: object) -> object:
            old, stage[0] = stage[0], label
            try:
                return f(*a, **k)
            finally:
                stage[0] = old

        setattr(owner, name, g)

    spec = pickle.loads(spec_path.read_bytes())
    wrap(S.PoolSource, "read", "read a block")
    wrap(S, "pool_from_table", "normalise it")
    wrap(type(spec.selector()), "scan", "scan it")
    wrap(P, "_write_shuffle", "write the shuffle")
    wrap(P, "_write_ipc", "write the block's table")
    threading.Thread(target=poll, daemon=True).start()
    time.sleep(0.05)
    stage[0] = "other"
    P._pass1_task(blocks, spec)
    stage[0] = "after"
    time.sleep(0.05)
    print(json.dumps({k: round(v) for k, v in peaks.items()}))


def _arrow(path: Path, group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    md = f.metadata
    print(f"{path}: {md.num_row_groups} row groups of {md.row_group(group).num_rows} rows (group {group})")
    for cols in (["image_emb"], [c for c in f.schema_arrow.names]):
        for k, b in enumerate(f.iter_batches(batch_size=1 << 14, row_groups=[group], columns=cols)):
            print(f"columns {'all' if len(cols) > 1 else cols[0]}: batch {k} ({b.num_rows} rows): "
                  f"Arrow holds {pa.total_allocated_bytes() / 2**20:.0f} MB, the batch {b.nbytes / 2**20:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stages")
    st.add_argument("--run", required=True)
    st.add_argument("--method", required=True)
    st.add_argument("--options", default="{}", help="the method's options as JSON")
    st.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3])
    st.add_argument("--code", default=str(ROOT), help="the checkout whose curate/ runs")
    st.add_argument("--_prepare", nargs=1, help=argparse.SUPPRESS)
    st.add_argument("--_task", nargs=1, help=argparse.SUPPRESS)
    ar = sub.add_parser("arrow")
    ar.add_argument("--file", required=True)
    ar.add_argument("--group", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "arrow":
        _arrow(Path(args.file), args.group)
        return
    code, run = Path(args.code).resolve(), Path(args.run)
    if args._prepare:
        _prepare(code, run, args.method, json.loads(args.options), Path(args._prepare[0]))
        return
    if args._task:
        _task(code, Path(args._task[0]), args.blocks)
        return
    with tempfile.TemporaryDirectory(prefix="pass1-memory-") as tmp:
        spec = Path(tmp) / "spec.pkl"
        base = [sys.executable, __file__, "stages", "--run", str(run), "--method", args.method,
                "--options", args.options, "--code", str(code), "--blocks", *map(str, args.blocks)]
        env = {**os.environ, "PYTHONPATH": str(code)}
        subprocess.run([*base, "--_prepare", str(spec)], check=True, env=env)
        out = subprocess.run([*base, "--_task", str(spec)], check=True, env=env, capture_output=True, text=True)
        peaks = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{args.method} {args.options} at {code} (blocks {args.blocks}): peak RSS per stage, MB")
        for k, v in peaks.items():
            print(f"  {k:24s} {v:6d}")


if __name__ == "__main__":
    main()
