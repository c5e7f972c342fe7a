"""Run the quick version of every benchmark and print one table (``make bench``): a regression guard.

Each benchmark runs in its own process and reports its key figures through ``--summary-json``. The
table is written to ``benchmarks/results/quick.json`` (and ``.md``); with ``--compare FILE`` (default:
the previous ``quick.json``) every figure is shown next to the earlier one, as a ratio. Ratios between
runs on a shared machine are indicative only: compare like with like (same machine, similar load).

    python benchmarks/run_all.py --quick [--only embed_throughput select_scale] [--compare old.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: name -> (script, quick arguments, full arguments); ``{tmp}`` is a scratch folder.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "embed_throughput": ("embed_throughput.py", ["--quick", "--out", "{tmp}/embed_throughput.md"], []),
    "select_quality": ("select_quality.py", ["--fraction", "0.3", "--run", "{tmp}/sq", "--out", "{tmp}/sq.md"], []),
    # the pipeline at 100k with 2 task processes and a --memory of 64 MiB: below the float32 copies of the
    # largest Zipf class (~13k rows, 53 MB) at half of it, so pass 2 streams that class from its float16 rows
    "select_scale": (
        "select_scale.py",
        ["--sizes", "100000", "--workers", "2", "--memory", "64M", "--methods", "random", "clip-score", "semdedup",
         "clipcov", "negcliploss", "normsim-inf", "--negcliploss-repeats", "1", "--negcliploss-batch", "8192",
         "--workdir", "{tmp}/ss", "--out", "{tmp}/select_scale.md", "--no-plots"],
        ["--sizes", "1000000", "3000000", "10000000", "--timeout", "7200"],
    ),
    "bootstrap_scale": ("bootstrap_scale.py", ["--rows", "1000000", "--per-shard", "10000"], []),
    "decode_rate": ("decode_rate.py", ["--n", "60", "--repeats", "1"], []),
    "read_rate": ("read_rate.py", ["--quick"], []),
    "metaclip_match": ("metaclip_match.py", ["--captions", "50000", "--check", "20", "--shard-samples", "10000"], []),
    "engines": ("engines.py", ["--quick"], ["--embed", "shards/sample/train"]),
    "quality": ("quality.py", ["--quick", "--jobs", "2", "--workdir", "{tmp}/quality"], []),
}


def run_one(name: str, quick: bool, tmp: Path) -> tuple[dict, float, str | None]:
    script, quick_args, full_args = BENCHMARKS[name]
    args = [a.replace("{tmp}", str(tmp)) for a in (quick_args if quick else full_args)]
    summary = tmp / f"{name}.summary.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--summary-json", str(summary)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t0
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, secs, f"exit {proc.returncode}: {tail}"
    return json.loads(summary.read_text()), secs, None


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick versions (the default of make bench)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    ap.add_argument("--compare", default=str(RESULTS / "quick.json"), help="earlier results to compare with")
    ap.add_argument("--out", default=str(RESULTS / "quick.json"))
    args = ap.parse_args()

    before = {}
    if args.compare and Path(args.compare).exists():
        old = json.loads(Path(args.compare).read_text())
        before = {(r["benchmark"], r["metric"]): r["value"] for r in old.get("rows", [])}
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        for name in args.only:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            res, secs, error = run_one(name, args.quick, Path(tmp))
            if error:
                failures.append(f"{name}: {error}")
                print(f"  FAILED ({error})", file=sys.stderr, flush=True)
                continue
            print(f"  done in {secs:.0f}s", file=sys.stderr, flush=True)
            rows += [{"benchmark": name, **m} for m in res["metrics"]]

    lines = ["| benchmark | metric | value | unit | previous | ratio (>1 = better) |", "|---|---|---:|---|---:|---:|"]
    for r in rows:
        prev = before.get((r["benchmark"], r["metric"]))
        ratio = ""
        if prev:
            ratio = f"{(r['value'] / prev if r['better'] == 'higher' else prev / r['value']):.2f}" if r["value"] else ""
        lines.append(f"| {r['benchmark']} | {r['metric']} | {fmt(r['value'])} | {r['unit']} | "
                     f"{fmt(prev) if prev is not None else '-'} | {ratio} |")
    header = (f"quick benchmarks, {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(header)
    print("\n".join(lines))
    for f in failures:
        print(f"FAILED {f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "rows": rows, "failures": failures}, indent=1) + "\n")
    out.with_suffix(".md").write_text(f"{header}\n\n" + "\n".join(lines) + "\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
