"""ClipCov's cross terms: the kernel's rate against a plain matrix product, half-precision inputs, and
cross terms estimated from M members of each class.

1. ``--kernel``: ``cross_part`` (products, threshold, float64 row and column sums) against a plain float32
   ``x @ yᵀ`` of the same block shapes, on the same cores, in one run, for classes of several sizes.
2. ``--half``: clipcov on the pools of the test suite (and the embedded sample world when ``--sample RUN``
   names one) with float32 inputs, and with the inputs rounded to float16 / bfloat16 (float32 products,
   the model of a GPU's half-precision product with float32 accumulation): the share of the selection
   that changes.
3. ``--sampled RUN``: clipcov on an existing run (e.g. the 1M zero-shot pool of select_scale.py) exactly
   and with ``--cross-sample M`` for each M: time and Jaccard with the exact selection.

    python benchmarks/cross_terms.py --kernel --half --out benchmarks/results/cross_terms.jsonl
    python benchmarks/cross_terms.py --sampled /tmp/curate-select-scale/n1000000 --m 1000 4000 16000 \
        --out benchmarks/results/cross_terms.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kernel(sizes: list[int], d: int, repeats: int) -> list[dict]:
    import torch

    torch.manual_seed(0)
    out = []
    for n in sizes:
        x = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
        y = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
        best = {"kernel": np.inf, "matmul": np.inf}
        for _ in range(repeats):  # interleaved, so that both see the same load
            for name in best:
                t0 = time.perf_counter()
                _one(name, x, y, n)
                best[name] = min(best[name], time.perf_counter() - t0)
        flops = 2.0 * n * n * d
        out.append({"n": n, "d": d, "kernel_s": best["kernel"], "matmul_s": best["matmul"],
                    "ratio": best["matmul"] / best["kernel"], "matmul_gflops": flops / best["matmul"] / 1e9,
                    "kernel_gflops": flops / best["kernel"] / 1e9})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def _one(what: str, x: object, y: object, n: int) -> None:
    """One pass over a class of ``n``: the cross-term kernel, or the plain products of its block shapes."""
    from curate.select.clipcov import Rows, cross_block_rows, cross_part

    if what == "kernel":
        cross_part(Rows(x), Rows(y), 0, n, 0, n, [y])
        return
    bs = cross_block_rows(n)
    for b in range(0, n, bs):
        _ = x[b : b + bs] @ y.T  # type: ignore[index,union-attr]


def _pools(tmp: Path) -> list[tuple[str, Path, np.ndarray | None]]:
    """The test suite's clipcov pools (tests/select/*), written as runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "select"))
    from conftest import write_run
    from test_select_clipcov import clustered
    from test_select_exact import world

    pools = []
    img, txt, centres = clustered(3000, 32, [0.5, 0.3, 0.2], seed=1)
    pools.append(("clustered 3000×32, 3 classes", write_run(tmp / "a", img, txt), centres))
    img, txt, centres, null = world()
    pools.append(("exactness world 1700×24, 9 Zipf classes", write_run(tmp / "b", img, txt, text_null=null), centres))
    rng = np.random.default_rng(0)
    n, d, c = 2400, 16, 12
    centres = rng.normal(size=(c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1 / np.arange(1, c + 1)
    lab = rng.choice(c, n, p=p / p.sum())
    img = centres[lab] + 0.4 * rng.normal(size=(n, d))
    txt = centres[lab] + 0.4 * rng.normal(size=(n, d))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    pools.append(("engines world 2400×16, 12 Zipf classes", write_run(tmp / "c", img, txt), centres.astype(np.float32)))
    return pools


def half(sample: str | None, fraction: float) -> list[dict]:
    import pyarrow.parquet as pq

    from curate.select import run_selection

    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        pools = _pools(tmp)
        if sample:
            pools.append((f"sample world ({sample})", Path(sample), None))
        for label, run, centres in pools:
            for variant in ("reference", "greedy"):
                sel = {}
                for dtype in ("float32", "float16", "bfloat16"):
                    name = f"half-{variant}-{dtype}"
                    kw = {"class_text": centres} if centres is not None else {}
                    res = run_selection(run, "clipcov", fraction=fraction, name=name, force=True, device="cpu",
                                        options={"variant": variant, "dtype": dtype}, **kw)
                    t = pq.read_table(res.path / "scores.parquet", columns=["selected"]).column(0).to_numpy()
                    sel[dtype] = set(np.flatnonzero(t))
                base = sel["float32"]
                for dtype in ("float16", "bfloat16"):
                    diff = len(base ^ sel[dtype]) // 2
                    rows.append({"pool": label, "variant": variant, "inputs": dtype, "budget": len(base),
                                 "swapped": diff, "jaccard": len(base & sel[dtype]) / len(base | sel[dtype])})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def sampled(run: str, ms: list[int], fraction: float, variant: str) -> list[dict]:
    import pyarrow.parquet as pq

    from curate.select import run_selection

    ct_path = Path(run) / "class_text.npy"
    kw = {"class_text": np.load(ct_path)} if ct_path.exists() else {}
    rows = []
    base = None
    for m in [None, *ms]:
        name = f"cross-sample-{m or 'exact'}-{variant}"
        t0 = time.perf_counter()
        res = run_selection(run, "clipcov", fraction=fraction, name=name, force=True, device="cpu",
                            options={"variant": variant, "cross_sample": m}, **kw)
        secs = time.perf_counter() - t0
        sel = set(np.flatnonzero(pq.read_table(res.path / "scores.parquet", columns=["selected"]).column(0)
                                 .to_numpy()))
        if base is None:
            base = (sel, secs)
        rows.append({"m": m or "exact", "seconds": secs, "speedup": base[1] / secs,
                     "jaccard": len(base[0] & sel) / len(base[0] | sel), "kept": len(sel)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 20000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--sample", default=None, help="an embedded run of the sample world for --half")
    ap.add_argument("--sampled", default=None, metavar="RUN")
    ap.add_argument("--m", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--variant", default="reference")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--out", default=None,
                    help="append the results as JSON lines to this file and render all of them into FILE.md "
                    "(e.g. benchmarks/results/cross_terms.jsonl)")
    args = ap.parse_args()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
                 "cores": os.cpu_count()}
    if args.kernel:
        res["kernel"] = kernel(args.sizes, args.dim, args.repeats)
    if args.half:
        res["half"] = half(args.sample, args.fraction)
    if args.sampled:
        res["sampled"] = sampled(args.sampled, args.m, args.fraction, args.variant)
    res["load_after"] = os.getloadavg()[0]
    res["commit"] = commit()
    res["args"] = " ".join(sys.argv[1:])
    text = json.dumps(res)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
        write_report(Path(args.out))


def commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def write_report(store: Path) -> None:
    """``<store>.md``: every invocation recorded in the JSON-lines file ``store``, one table per part."""
    runs = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    lines = ["# ClipCov's cross terms: kernel rate, half-precision inputs, sampled cross terms", "",
             f"Every invocation of `benchmarks/cross_terms.py` recorded in `{store.name}`, oldest first (CPU; "
             "load = 1-minute load average before / after).", ""]
    for r in runs:
        head = (f"### {r['date']}, commit {r.get('commit', '?')}, `python benchmarks/cross_terms.py "
                f"{r.get('args', '')}`, {r['cores']} cores, load {r['load']:.1f} / {r['load_after']:.1f}")
        lines += [head, ""]
        if r.get("kernel"):
            lines += ["| class size n | d | kernel s | plain float32 matmul s | kernel GFLOP/s | matmul GFLOP/s | "
                      "rate vs matmul |", "|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {k['n']:,} | {k['d']} | {k['kernel_s']:.3f} | {k['matmul_s']:.3f} | "
                      f"{k['kernel_gflops']:.1f} | {k['matmul_gflops']:.1f} | {k['ratio']:.2f} |" for k in r["kernel"]]
            lines.append("")
        if r.get("half"):
            lines += ["| pool | variant | inputs | budget | samples swapped vs float32 | Jaccard |",
                      "|---|---|---|---:|---:|---:|"]
            lines += [f"| {h['pool']} | {h['variant']} | {h['inputs']} | {h['budget']:,} | {h['swapped']} | "
                      f"{h['jaccard']:.4f} |" for h in r["half"]]
            lines.append("")
        if r.get("sampled"):
            lines += ["| M (members sampled per class) | seconds | speed-up vs exact | Jaccard with exact | kept |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {s['m']} | {s['seconds']:.1f} | {s['speedup']:.2f} | {s['jaccard']:.4f} | {s['kept']:,} |"
                      for s in r["sampled"]]
            lines.append("")
    store.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
