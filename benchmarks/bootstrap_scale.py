"""Scale of ``curate bootstrap`` and of the trainer kit's ManifestFilter.

1. A pool of N samples (default 10M, 1,000 shards) and a full loss table for a preparation round →
   time and peak memory of ``bootstrap_round`` for round 0 (reads the embedding files, builds the pool
   cache and its uid index), the first mutation round (reads N losses, ranks them within batches, writes
   candidates, decisions and the next manifest), and the next mutation round (reads the candidate file).
2. ``ManifestFilter`` over the resulting manifest: index build time, then the memory of a fresh
   worker process that filters the samples of a few shards (RSS and private memory).

Each round runs in a fresh process (``python -c``): wall time, CPU time, peak RSS of that process (``VmHWM``)
and of its largest task process (``--workers N``: the passes over the loss table run in N processes).
``--compare SRC`` runs the same rounds on a copy of the same inputs with the curate code of another checkout
(``PYTHONPATH=SRC``), one after the other in the same session, checks that both wrote the same manifests,
and reports the time and memory ratios. ``--rows`` takes several sizes; every size's figures are merged
into ``<out>.json`` across invocations, and the report (``--out``) lists them all, with the bytes of each
table the run wrote and log-log plots of time and peak RSS vs N (``<out>_time.png``, ``<out>_memory.png``).
A ``## Notes`` section written by hand at the end of an existing report is kept.

    python benchmarks/bootstrap_scale.py --rows 1000000 3000000 10000000 --out benchmarks/results/bootstrap_scale.md
    git worktree add --detach /tmp/curate-old OLD_COMMIT
    python benchmarks/bootstrap_scale.py --rows 10000000 --compare /tmp/curate-old --out ...
"""

from __future__ import annotations

import argparse
import binascii
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

BATCH = 4096  # global batch size of the recorded losses


def _hex_uids(n: int, seed: int) -> pa.Array:
    raw = np.random.default_rng(seed).bytes(16 * n)
    hexed = np.frombuffer(binascii.hexlify(raw), dtype="S32")
    return pa.array(hexed, pa.binary(32)).cast(pa.string())


def make_run(root: Path, rows: int, per_shard: int) -> None:
    """A run whose embeddings hold only the pool columns (uid, shard, key, position) — enough for bootstrap."""
    from curate.io.tables import write_table
    from curate.rundir import RunDir

    run = RunDir(root)
    uids = _hex_uids(rows, 0)
    shards = []
    for s, start in enumerate(range(0, rows, per_shard)):
        n = min(per_shard, rows - start)
        name = f"{s:05d}"
        pos = np.arange(n, dtype=np.int32)
        keys = pa.array(np.char.add(f"{s:05d}", np.char.zfill(pos.astype(str), 5)))
        write_table(run.embedding_file(name), pa.table({
            "uid": uids.slice(start, n), "shard": pa.array([name] * n), "key": keys, "position": pa.array(pos),
        }))
        shards.append({"name": name, "url": f"/data/{name}.tar"})
    run.update("embed", {"model": "benchmark", "shards": shards}, command="benchmark pool")


def write_round_losses(root: Path, round_: int, seed: int) -> None:
    """Losses for every sample of a round's manifest, in a shuffled order with global batches of BATCH."""
    from curate.io.manifest import read_manifest
    from curate.io.tables import write_table
    from curate.rundir import RunDir

    run = RunDir(root)
    uids = read_manifest(run.manifest_file(round_)).table.column("uid")
    n = len(uids)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    table = pa.table({
        "uid": uids.take(pa.array(order)),
        "batch": pa.array(np.arange(n, dtype=np.int64) // BATCH),
        "loss_a": pa.array(rng.gamma(2.0, 1.0, n).astype(np.float32)),
        "loss_b": pa.array(rng.gamma(2.0, 1.0, n).astype(np.float32)),
    })
    write_table(run.losses_dir(round_) / "part-00000.parquet", table)


def _peak_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss would include the parent's peak across fork/exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_ROUND = """
import json, resource, sys, time
from pathlib import Path
from curate.bootstrap import bootstrap_round
if __name__ == "__main__":
    kw = json.loads(sys.argv[3])
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    res = bootstrap_round(sys.argv[1], int(sys.argv[2]), **kw)
    secs, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    hwm = [int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:")]
    print(json.dumps({"seconds": secs, "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
                      "children_cpu_s": ch.ru_utime + ch.ru_stime, "peak_rss_mb": hwm[0] / 1024,
                      "worker_peak_rss_mb": ch.ru_maxrss / 1024, "summary": res.summary}))
"""


def _measure_round(src: Path, root: Path, round_: int, knobs: dict, workers: int | None = None) -> dict:
    """``bootstrap_round`` in a fresh process with the curate code of ``src``: time, CPU, peak memory, summary."""
    kw: dict = {"knobs": knobs}
    if workers and workers > 1:
        kw |= {"engine": "local", "engine_options": {"workers": workers}}
    script = root.parent / "round.py"  # a file: spawned task processes re-import the main module
    script.write_text(_ROUND)
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(script), str(root), str(round_), json.dumps(kw)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"round {round_} with {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _private_mb() -> tuple[float, float]:
    """(RSS, private = anonymous + private file pages) of this process in MB, from /proc/self/smaps_rollup."""
    vals = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        vals[k] = int(v.split()[0])
    return vals["Rss"] / 1024, (vals["Private_Clean"] + vals["Private_Dirty"]) / 1024


def _measure_filter(manifest: str, n_shards: int, per_shard: int, q: mp.Queue) -> None:
    from curate.trainer import ManifestFilter

    base_rss, base_priv = _private_mb()
    filt = ManifestFilter(manifest)  # index already built by the parent
    t0 = time.perf_counter()
    samples = ({"__url__": f"/data/{s:05d}.tar", "__key__": f"{s:05d}{i:05d}"}
               for s in range(0, n_shards * 97, 97) for i in range(per_shard))
    kept = sum(1 for _ in filt(samples))
    secs = time.perf_counter() - t0
    rss, priv = _private_mb()
    q.put({"seconds": secs, "samples": filt.seen, "kept": kept, "rss_mb": rss - base_rss,
           "private_mb": priv - base_priv, "peak_rss_mb": _peak_mb(),
           "base_rss_mb": base_rss})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()},"
            f" pyarrow {pa.__version__}, numpy {np.__version__}")


def _bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


SRC = Path(__file__).resolve().parents[1]  # this checkout


def measure(work: Path, rows: int, per_shard: int, workers: int | None = None, compare: Path | None = None) -> dict:
    """Every step of the benchmark for a pool of ``rows`` samples in ``work``; returns its figures."""
    root = work / "run"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    make_run(root, rows, per_shard)
    setup = time.perf_counter() - t0
    base = work / "baseline" / "run"
    if compare is not None:
        base.mkdir(parents=True)
        shutil.copytree(root / "embeddings", base / "embeddings")
        shutil.copy2(root / "run.json", base / "run.json")
    steps: dict[str, dict] = {}
    baseline: dict[str, dict] = {}
    plan = [("r0", 0, {"warmup_rounds": 0}), ("r1", 1, {}), ("r2", 2, {})]
    for key, r, knobs in plan:
        if r == 1:  # losses of the preparation round 0, the same for both
            write_round_losses(root, 0, seed=1)
            if compare is not None:
                shutil.copytree(root / "losses", base / "losses")
        steps[key] = _measure_round(SRC, root, r, knobs, workers)
        if compare is not None:
            baseline[key] = _measure_round(compare, base, r, knobs)
            same = all((root / "manifests" / f"round-{r:04d}{ext}").read_bytes()
                       == (base / "manifests" / f"round-{r:04d}{ext}").read_bytes() for ext in (".parquet", ".json"))
            baseline[key]["same_manifest"] = same
    if compare is not None:
        shutil.rmtree(base.parent)
    from curate.trainer import build_index

    manifest = root / "manifests" / "round-0002.parquet"
    t1 = time.perf_counter()
    index = build_index(manifest)
    build_s = time.perf_counter() - t1
    filt = _in_child(_measure_filter, str(manifest), 4, per_shard)
    boot = root / "bootstrap"
    sizes = {
        "embeddings (pool columns only)": _bytes([root / "embeddings"]),
        "loss table (one preparation round)": _bytes([root / "losses"]),
        "pool cache (pool.arrow + pool-index.arrow)": _bytes([boot / "pool.arrow", boot / "pool-index.arrow"]),
        "decisions (3 rounds)": _bytes([boot / "decisions"]),
        "candidates (one preparation round)": _bytes([boot / "candidates"]),
        "manifests (3 rounds)": _bytes([root / "manifests"]),
        "ManifestFilter index (round 2)": index.stat().st_size,
    }
    return {
        "rows": rows, "per_shard": per_shard, "workers": workers or 1, "setup_s": setup, **steps,
        "baseline": {"src": str(compare), **baseline} if compare is not None else None,
        "build_s": build_s, "filter": filt, "bytes": sizes,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=SRC).stdout.strip(),
        "compare_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         cwd=compare).stdout.strip() if compare is not None else None,
        "load_before": load_before, "load_after": os.getloadavg(),
    }


STEPS = {
    "r0": "`bootstrap --round 0` (read + check the embedding files, pool cache + uid index, full manifest)",
    "r1": "`bootstrap --round 1` (loss table → candidates → manifest)",
    "r2": "`bootstrap --round 2` (candidate file → manifest)",
}


def _key(res: dict) -> tuple[int, int]:
    return res["rows"], res.get("workers", 1)


def _result(step: dict) -> str:
    s = step["summary"]
    if s["phase"] != "mutate":
        return f"kept {s['kept']:,} ({s['phase']})"
    cand = f"{s['candidates']['total']:,} candidates, " if s.get("candidates") else ""
    return f"{cand}kept {s['kept']:,} (ρ_cur {s['rho_cur']:.2f})"


def size_section(res: dict) -> list[str]:
    filt, n = res["filter"], res["rows"]
    kept2 = res["r2"]["summary"]["kept"]
    workers = res.get("workers", 1)
    base = res.get("baseline")
    loads = " / ".join(" ".join(f"{x:.2f}" for x in res[k]) for k in ("load_before", "load_after"))
    cmd = f"python benchmarks/bootstrap_scale.py --rows {n} --per-shard {res['per_shard']}"
    cmd += f" --workers {workers}" if workers > 1 else ""
    cmd += " --compare CHECKOUT" if base else ""
    lines = [
        f"## {n:,} rows" + (f", {workers} task processes" if workers > 1 else ""),
        "",
        f"- date: {res['date']}, commit {res['commit']}"
        + (f"; compared with commit {res['compare_commit']} (same inputs, same session)" if base else ""),
        f"- command: `{cmd}`",
        f"- load average (`uptime`, 1/5/15 min) before / after: {loads}",
        f"- pool: {n:,} samples in {-(-n // res['per_shard']):,} shards; losses of the preparation round:"
        f" {n:,} rows in global batches of {BATCH}; setup {res['setup_s']:.0f} s",
        "",
        "| step | time | CPU | peak RSS | task processes' peak | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, name in STEPS.items():
        st = res[key]
        cpu = st["cpu_s"] + st["children_cpu_s"]
        lines.append(f"| {name} | {st['seconds']:.1f} s | {cpu:.1f} s | {st['peak_rss_mb']:,.0f} MB |"
                     f" {st['worker_peak_rss_mb']:,.0f} MB | {_result(st)} |" if st["worker_peak_rss_mb"] else
                     f"| {name} | {st['seconds']:.1f} s | {cpu:.1f} s | {st['peak_rss_mb']:,.0f} MB | - |"
                     f" {_result(st)} |")
    if base:
        lines += ["", f"The same rounds with the code of commit {res['compare_commit']}, on a copy of the same inputs, "
                  "right after each step above:", "",
                  "| step | time | CPU | peak RSS | time ratio (this / that) | peak RSS ratio | same manifest |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for key in STEPS:
            b, st = base[key], res[key]
            lines.append(f"| round {key[1]} | {b['seconds']:.1f} s | {b['cpu_s']:.1f} s | {b['peak_rss_mb']:,.0f} MB |"
                         f" {st['seconds'] / b['seconds']:.2f} | {st['peak_rss_mb'] / b['peak_rss_mb']:.2f} |"
                         f" {'yes' if b['same_manifest'] else 'NO'} |")
    lines += [
        "",
        "| ManifestFilter | time | peak RSS | result |",
        "|---|---:|---:|---|",
        f"| index build ({kept2:,}-row manifest, once per manifest) | {res['build_s']:.1f} s | - |"
        f" {res['bytes']['ManifestFilter index (round 2)'] / 1e6:,.0f} MB memory-mapped file |",
        f"| a fresh worker, {filt['samples']:,} samples from 4 shards | {filt['seconds']:.2f} s |"
        f" {filt['peak_rss_mb']:,.0f} MB | +{filt['rss_mb']:,.0f} MB RSS, +{filt['private_mb']:,.0f} MB private"
        f" (interpreter + imports: {filt['base_rss_mb']:,.0f} MB); kept {filt['kept']:,} |",
        "",
        "| table written | MB | bytes per pool sample |",
        "|---|---:|---:|",
        *(f"| {k} | {v / 1e6:,.0f} | {v / n:.1f} |" for k, v in res["bytes"].items()),
        "",
    ]
    return lines


def write_report(out: Path, results: list[dict]) -> None:
    notes = ""
    if out.exists() and "\n## Notes" in out.read_text():
        notes = out.read_text()[out.read_text().index("\n## Notes") + 1 :]
    lines = [
        "# bootstrap scale",
        "",
        f"- machine: {machine()}",
        f"- report written {datetime.now(timezone.utc).isoformat(timespec='seconds')}; load average (`uptime`)"
        f" then: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- the machine is shared with other jobs; each size records the load average before and after its run.",
        "  Times are as measured, not adjusted; CPU is the rounds' processes' user + system time.",
        "",
        "Peak RSS includes the Python interpreter and imports (~100-200 MB); it is the driver's (the `bootstrap`",
        "process), and with task processes the largest of theirs is given too. The filter's memory-mapped index is",
        "shared page cache, not private memory: a worker's private memory grows only by the key dicts of the few",
        "shards it is reading (LRU of 4), independent of the manifest size.",
        "",
        "| N (pool = loss rows) | tasks | round 0 | round 1 | round 2 | peak RSS round 0 / 1 / 2 | date |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *(f"| {r['rows']:,} | {r.get('workers', 1)} | {r['r0']['seconds']:.1f} s | {r['r1']['seconds']:.1f} s |"
          f" {r['r2']['seconds']:.1f} s | {_peaks(r)} | {r['date'][:10]} |" for r in results),
        "",
        f"Plots: `{out.stem}_time.png`, `{out.stem}_memory.png` (log-log).",
        "",
    ]
    for res in results:
        lines += size_section(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + ("\n" + notes if notes else ""))


def _peaks(r: dict) -> str:
    return " / ".join(f"{max(r[k]['peak_rss_mb'], r[k]['worker_peak_rss_mb']):,.0f}" for k in STEPS) + " MB"


def plot(results: list[dict], out: Path) -> None:
    """``<out>_time.png`` and ``<out>_memory.png``: one line per round (in this process), log-log; the compared
    code's rounds dashed where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from summary import log_log_axes

    names = {"r0": "round 0 (pool → manifest)", "r1": "round 1 (N losses → manifest)",
             "r2": "round 2 (candidates → manifest)"}
    one = [r for r in results if r.get("workers", 1) == 1]
    for key, unit, scale, suffix in (("seconds", "time (s)", 1, "time"), ("peak_rss_mb", "peak RSS (GB)", 1e-3,
                                                                          "memory")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, (step, name) in enumerate(names.items()):
            color = f"C{i}"
            ax.plot([r["rows"] for r in one], [r[step][key] * scale for r in one], marker="o", label=name, color=color)
            base = [r for r in one if r.get("baseline")]
            if base:
                ax.plot([r["rows"] for r in base], [r["baseline"][step][key] * scale for r in base], marker="x",
                        linestyle="--", color=color, label=f"{name.split(' (')[0]}, before (in memory)")
        log_log_axes(ax, "pool size N = loss-table rows", unit, f"curate bootstrap: {unit.split(' (')[0]} vs N")
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{suffix}.png"), dpi=100)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None, help="task processes for the passes (default: in process)")
    ap.add_argument("--compare", default=None, help="another checkout of curate to run on the same inputs")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary folder, removed after)")
    ap.add_argument("--out", default=None, help="write the results as Markdown here (and merge them into .json)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    args = ap.parse_args()
    compare = Path(args.compare).resolve() if args.compare else None
    new = []
    for rows in args.rows:
        work = Path(args.dir) / f"rows-{rows}" if args.dir else Path(tempfile.mkdtemp(prefix="curate-bench-"))
        try:
            new.append(measure(work, rows, args.per_shard, args.workers, compare))
        finally:
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)
        print("\n".join(size_section(new[-1])), flush=True)
    if args.out:
        out = Path(args.out)
        store = out.with_suffix(".json")
        results = json.loads(store.read_text()) if store.exists() else []
        keys = {_key(r) for r in new}
        results = sorted([r for r in results if _key(r) not in keys] + new, key=_key)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=1) + "\n")
        write_report(out, results)
        if not args.no_plots:
            plot(results, out)
    from summary import metric, write_summary

    last = new[-1]
    write_summary(args.summary_json, "bootstrap_scale", [
        metric(f"round 1 from {last['rows']:,} losses: time", last["r1"]["seconds"], "s"),
        metric(f"round 1 from {last['rows']:,} losses: peak RSS", last["r1"]["peak_rss_mb"], "MB"),
        metric("ManifestFilter worker: private memory", last["filter"]["private_mb"], "MB"),
    ])


if __name__ == "__main__":
    main()
