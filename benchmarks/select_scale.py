"""Select time and peak memory vs pool size, per method (synthetic normalised embeddings).

Each (size, method) runs in a fresh subprocess so that its peak RSS is its own. The pool is N samples,
d=512, in 1000 classes of Zipf(1) sizes (largest ≈ 13% of N); image and caption embeddings are
noisy copies of their class centre (cosine to the centre ≈ 0.6). clipcov gets the class centres as
class-text embeddings (so its zero-shot argmax over 1000 classes is timed, prompt encoding is not).

    python benchmarks/select_scale.py --sizes 10000 100000 1000000 --out benchmarks/results/select_scale.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

METHODS = {
    "clipcov": {"method": "clipcov", "options": {"variant": "reference"}},
    "clipcov-greedy": {"method": "clipcov", "options": {"variant": "greedy"}},
    "clipcov-kmeans": {"method": "clipcov", "options": {"partition": "kmeans:1000"}},
    "random": {"method": "random", "options": {}},
    "clip-score": {"method": "clip-score", "options": {}},
    "semdedup": {"method": "semdedup", "options": {}},
}


def make_pool(run: Path, n: int, d: int, n_classes: int, seed: int, chunk: int = 100_000) -> None:
    """Write RUN/embeddings/<shard>.parquet (float16, as curate embed does) and the class centres."""
    from curate.io.tables import embedding_schema, fixed_list, write_table
    from curate.run import RunDir

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_classes + 1)
    p /= p.sum()
    sigma = 1.3 / np.sqrt(d)
    shards = []
    for s, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        lab = rng.choice(n_classes, size=m, p=p)
        img = centres[lab] + sigma * rng.standard_normal((m, d), dtype=np.float32)
        txt = centres[lab] + sigma * rng.standard_normal((m, d), dtype=np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        ids = np.arange(lo, lo + m)
        uid = pa.array([f"{i:032x}" for i in ids])
        name = f"{s:05d}"
        table = pa.table(
            {
                "uid": uid,
                "shard": pa.array([name] * m),
                "key": pa.array([f"{i:09d}" for i in ids]),
                "position": pa.array(np.arange(m, dtype=np.int32)),
                "content_hash": uid,
                "image_emb": fixed_list(img),
                "text_emb": fixed_list(txt),
                "clip_score": pa.array(np.einsum("ij,ij->i", img, txt).astype(np.float32)),
            },
            schema=embedding_schema(d, {"model": "synthetic", "dim": d}),
        )
        write_table(run / "embeddings" / f"{name}.parquet", table)
        shards.append({"name": name, "url": f"synthetic/{name}.tar"})
    np.save(run / "class_text.npy", centres)
    RunDir(run).update("embed", {"model": "synthetic", "shards": shards}, command="benchmarks/select_scale.py")


def run_one(run: Path, label: str, fraction: float, seed: int) -> dict:
    """Time one selection in this process; report wall time and peak RSS."""
    t_imp = time.perf_counter()
    import faiss  # noqa: F401
    import torch  # noqa: F401

    from curate.run import versions
    from curate.select import run_selection

    versions()  # imports open_clip & co. once (run.json provenance), so they are not timed below
    t_imp = time.perf_counter() - t_imp
    spec = METHODS[label]
    class_text = np.load(run / "class_text.npy") if spec["method"] == "clipcov" else None
    t0 = time.perf_counter()
    res = run_selection(
        run,
        spec["method"],
        fraction=fraction,
        name=label,
        seed=seed,
        options=spec["options"],
        force=True,
        class_text=class_text,
        device="cpu",
    )
    secs = time.perf_counter() - t0
    rss_gb = peak_rss_gb()
    return {
        "label": label,
        "pool": res.pool_size,
        "kept": res.kept,
        "seconds": secs,
        "peak_rss_gb": rss_gb,
        "import_seconds": t_imp,
        "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str))},
    }


def peak_rss_gb() -> float:
    """Peak RSS of this process since exec (VmHWM; ``ru_maxrss`` would include the forking parent's pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "free_g": free,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/curate-select-scale")
    ap.add_argument("--out", default="benchmarks/results/select_scale.md")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    ap.add_argument("--one", nargs=2, metavar=("RUN", "LABEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], args.fraction, args.seed)))
        return
    store = Path(args.out).with_suffix(".json")  # every finished (N, method) row, merged across invocations
    rows: list[dict] = json.loads(store.read_text()) if store.exists() else []

    def record(row: dict) -> None:
        rows[:] = [r for r in rows if (r["pool"], r["label"]) != (row["pool"], row["label"])] + [row]
        rows.sort(key=lambda r: (r["pool"], list(METHODS).index(r["label"])))
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(rows, indent=1) + "\n")
        write_report(Path(args.out), rows, machine())

    for n in args.sizes:
        run = Path(args.workdir) / f"n{n}"
        if not (run / "class_text.npy").exists():
            t0 = time.perf_counter()
            make_pool(run, n, args.dim, args.classes, args.seed)
            print(f"pool N={n:,}: generated in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        for label in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(run),
                label,
                "--fraction",
                str(args.fraction),
                "--seed",
                str(args.seed),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                record({"label": label, "pool": n, "error": err})
                print(f"N={n:,} {label}: FAILED {err}", file=sys.stderr, flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            row["load_after"] = os.getloadavg()[0]
            record(row)
            print(
                f"N={n:,} {label}: {row['seconds']:.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB",
                file=sys.stderr,
                flush=True,
            )
    from summary import metric, write_summary

    done = [r for r in rows if r["pool"] in args.sizes and "error" not in r]
    write_summary(args.summary_json, "select_scale", [
        m for r in done for m in (
            metric(f"{r['label']} N={r['pool']:,}: time", r["seconds"], "s"),
            metric(f"{r['label']} N={r['pool']:,}: peak RSS", r["peak_rss_gb"], "GB"),
        )
    ])


def write_report(out: Path, rows: list[dict], m: dict) -> None:
    lines = [
        "# `curate select` scaling: time and peak memory vs pool size",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  ",
        "Command: `python benchmarks/select_scale.py --sizes 10000 100000 1000000` (defaults: d=512, 1000 classes,",
        "fraction 0.1; rows of several invocations are merged through `select_scale.json`)  ",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), GPU: {m['gpu']}, torch threads {m['torch_threads']}  ",
        "",
        "```",
        f"$ free -g\n{m['free_g']}",
        "```",
        "",
        f"Load average when the report was written: {m['load']} (the machine is shared with other jobs;",
        "timings on a busy 2-core machine vary by up to 2-3x between repeats).",
        "",
        "Pool: N synthetic samples, d=512, 1000 classes with Zipf(1) sizes (largest ≈ 13% of N),",
        "float16 Parquet as written by `curate embed`; budget = 10% of N. Time = `run_selection` wall time",
        "(read the embeddings, score, decide, write scores + manifest) in a process that has already imported",
        "torch, faiss and open_clip (the cold imports cost the `import s` column once per process; about 1.1 GB",
        "of the peak RSS is those libraries); peak RSS of the process.",
        "clipcov = reference variant with 1000-class zero-shot partition from given class embeddings;",
        "clipcov-greedy = exact gains; clipcov-kmeans = faiss k-means K=1000 partition; semdedup = k-means with",
        "sqrt(N) clusters, budget met by the eps rule. `load avg` = 1-minute load average right after the run.",
        "",
        "| N | method | seconds | peak RSS (GB) | kept | import s | load avg | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['pool']:,} | {r['label']} | — | — | — | — | — | failed: {r['error']} |")
            continue
        notes = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r["info"].items()
            if k in ("class_updates", "clusters", "effective_eps", "effective_threshold")
        )
        lines.append(
            f"| {r['pool']:,} | {r['label']} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | "
            f"{r['kept']:,} | {r['import_seconds']:.1f} | {r.get('load_after', float('nan')):.1f} | {notes} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
