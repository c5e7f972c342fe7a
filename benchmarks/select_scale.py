"""Select time and peak memory vs pool size, per method (synthetic normalised embeddings).

Each (size, method) runs in a fresh subprocess so that its peak RSS is its own. The pool is N samples,
d=512, in 1000 classes of Zipf(1) sizes (largest ≈ 13% of N); image and caption embeddings are
noisy copies of their class centre (cosine to the centre ≈ 0.6). clipcov gets the class centres as
class-text embeddings (so its zero-shot argmax over 1000 classes is timed, prompt encoding is not).
metaclip reads captions from shards: for it the pool also gets tar shards (made once per size, one per
embedding table) holding a generated caption and ``--image-bytes`` of stand-in image bytes per sample,
and a metadata file of 500,000 entries (``benchmarks/metaclip_match.py``'s generator: MetaCLIP's mix
of words, bigrams and titles over a Zipf vocabulary). Its time includes reading the shards back, so it
grows with ``--image-bytes``; real images (tens of KB) read more bytes per sample than the default.

A run that passes ``--timeout`` seconds or ``--max-rss-gb`` of peak RSS is stopped and recorded as not
run, with what it had reached and a power-law extrapolation from the two largest sizes measured for that
method. The report is Markdown plus two log-log plots (time and peak RSS vs N, one line per method).

    python benchmarks/select_scale.py --sizes 10000 100000 1000000 --out benchmarks/results/select_scale.md
    python benchmarks/select_scale.py --report-only   # rewrite the report and plots from select_scale.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METHODS = {
    "clipcov": {"method": "clipcov", "options": {"variant": "reference"}},
    "clipcov-greedy": {"method": "clipcov", "options": {"variant": "greedy"}},
    "clipcov-kmeans": {"method": "clipcov", "options": {"partition": "kmeans:1000"}},
    "random": {"method": "random", "options": {}},
    "clip-score": {"method": "clip-score", "options": {}},
    "semdedup": {"method": "semdedup", "options": {}},
    # τ of OpenAI's CLIP models (the synthetic pool has no model to read it from); B = 32768, K = 10
    "negcliploss": {"method": "negcliploss", "options": {"temperature": 0.01}},
    "normsim-inf": {"method": "normsim", "options": {"norm": "inf", "target": "{target}"}},
    "normsim-2": {"method": "normsim", "options": {"norm": "2", "target": "{target}"}},
    "image-filter": {"method": "image-filter", "options": {"target": "{target}"}, "budget": False},
    "metaclip": {"method": "metaclip", "options": {"metadata": "{run}/metadata.txt"}},
}
CAPTION_ENTRIES = 500_000
TARGET_ROWS = 10_000  # target images of normsim and image-filter: 100 from each of the first 100 classes
TARGET_CLASSES = 100


def make_pool(run: Path, n: int, d: int, n_classes: int, seed: int, chunk: int = 100_000,
              sizes: str = "zipf") -> None:
    """Write RUN/embeddings/<shard>.parquet (float16, as curate embed does) and the class centres.

    ``sizes``: ``zipf`` (class k has a share 1/k) or ``uniform`` (every class the same share)."""
    from curate.io.tables import embedding_schema, fixed_list, write_table
    from curate.rundir import RunDir

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_classes + 1) if sizes == "zipf" else np.ones(n_classes)
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


def make_caption_shards(run: Path, seed: int, image_bytes: int) -> None:
    """For metaclip: one tar per embedding table (same keys, in row order) with a generated caption and
    ``image_bytes`` of stand-in image bytes per sample; run.json points at them; the metadata file."""
    from metaclip_match import TextWorld

    from curate.io.tables import embedding_files
    from curate.io.tarwrite import write_tar
    from curate.rundir import RunDir

    world = TextWorld(seed)
    entries = world.entries(CAPTION_ENTRIES)
    titles = [e for e in entries if e[:1].isupper()]
    image = np.random.default_rng(seed).integers(0, 256, image_bytes, dtype=np.uint8).tobytes()
    shards = []
    for f in embedding_files(run):
        keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
        caps = world.captions(len(keys), titles)
        path = run / "shards" / f"{f.stem}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tar(path, [(k, {"jpg": image, "txt": c.encode()}) for k, c in zip(keys, caps, strict=True)])
        shards.append({"name": f.stem, "url": str(path)})
    (run / "metadata.txt").write_text("".join(f"{e}\n" for e in entries))
    RunDir(run).update("embed", {"model": "synthetic", "shards": shards}, command="benchmarks/select_scale.py")
    (run / "shards" / "done").write_text("ok\n")


def make_target(run: Path, d: int, seed: int) -> Path:
    """``RUN/target.parquet``: TARGET_ROWS image embeddings around the first TARGET_CLASSES class centres,
    drawn like the pool's (outside ``embeddings/``, so not part of the pool)."""
    from curate.io.tables import embedding_schema, fixed_list, write_table

    path = run / "target.parquet"
    if path.exists():
        return path
    centres = np.load(run / "class_text.npy")
    rng = np.random.default_rng([seed, 7])
    lab = np.repeat(np.arange(TARGET_CLASSES), TARGET_ROWS // TARGET_CLASSES)
    img = centres[lab] + 1.3 / np.sqrt(d) * rng.standard_normal((len(lab), d), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    ids = pa.array([f"t{i:031x}" for i in range(len(lab))])
    table = pa.table(
        {
            "uid": ids,
            "shard": pa.array(["target"] * len(lab)),
            "key": ids,
            "position": pa.array(np.arange(len(lab), dtype=np.int32)),
            "content_hash": ids,
            "image_emb": fixed_list(img),
            "text_emb": pa.nulls(len(lab), pa.list_(pa.float16(), d)),
            "clip_score": pa.nulls(len(lab), pa.float32()),
        },
        schema=embedding_schema(d, {"model": "synthetic", "dim": d}),
    )
    write_table(path, table)
    return path


def run_one(run: Path, label: str, fraction: float, seed: int, workers: int | None = None,
            memory: str | None = None) -> dict:
    """Time one selection in this process; report wall time, its peak RSS and its task processes' peak RSS."""
    t_imp = time.perf_counter()
    import faiss  # noqa: F401
    import torch  # noqa: F401

    from curate.rundir import versions
    from curate.select import run_selection

    versions()  # imports open_clip & co. once (run.json provenance), so they are not timed below
    t_imp = time.perf_counter() - t_imp
    spec = METHODS[label]
    options = {k: v.replace("{run}", str(run)) if isinstance(v, str) else v for k, v in spec["options"].items()}
    options = {k: (str(run / "target.parquet") if v == "{target}" else v) for k, v in options.items()}
    class_text = np.load(run / "class_text.npy") if spec["method"] == "clipcov" else None
    extra: dict = {}
    if workers:
        extra["engine_options"] = {"workers": workers}
        extra["engine"] = "local"
    if memory:
        from curate.select.base import parse_bytes

        extra["memory"] = parse_bytes(memory)
    t0 = time.perf_counter()
    res = run_selection(
        run,
        spec["method"],
        fraction=fraction if spec.get("budget", True) else None,
        name=label,
        seed=seed,
        options=options,
        force=True,
        class_text=class_text,
        device="cpu",
        **extra,
    )
    secs = time.perf_counter() - t0
    rss_gb = peak_rss_gb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # the largest task process
    return {
        "label": label,
        "pool": res.pool_size,
        "kept": res.kept,
        "seconds": secs,
        "peak_rss_gb": rss_gb,
        "worker_peak_rss_gb": children if workers else None,
        "workers": workers or 1,
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
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.rstrip()
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "free_g": free,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def run_child(cmd: list[str], timeout: float, max_rss_gb: float) -> tuple[subprocess.CompletedProcess | None, str,
                                                                                float]:
    """Run ``cmd``, polling its peak RSS; stop it past ``timeout`` s or ``max_rss_gb``.

    Returns ``(completed process or None if stopped, why it was stopped, peak RSS seen in GB)``.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, why = 0.0, ""
    while True:
        try:
            out, err = proc.communicate(timeout=1.0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out, err), "", peak
        except subprocess.TimeoutExpired:
            pass
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024**2)
        except OSError:
            continue
        secs = time.perf_counter() - t0
        if secs > timeout:
            why = f"stopped after {secs:.0f} s (--timeout {timeout:.0f})"
        elif peak > max_rss_gb:
            why = f"stopped at {secs:.0f} s: peak RSS passed {max_rss_gb:g} GB (--max-rss-gb)"
        if why:
            proc.kill()
            proc.communicate()
            return None, why, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--class-sizes", choices=["zipf", "uniform"], default="zipf",
                    help="class shares of the generated pool (zipf: 1/k; uniform: equal)")
    ap.add_argument("--workers", type=int, default=None, help="run the tasks in this many processes")
    ap.add_argument("--memory", default=None, help="the --memory budget of select (e.g. 1G)")
    ap.add_argument("--timeout", type=float, default=900.0, help="stop a run after this many seconds")
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="stop a run whose peak RSS passes this")
    ap.add_argument("--workdir", default="/tmp/curate-select-scale")
    ap.add_argument("--out", default="benchmarks/results/select_scale.md")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the JSON store; run nothing")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    ap.add_argument("--one", nargs=2, metavar=("RUN", "LABEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], args.fraction, args.seed, args.workers,
                                 args.memory)))
        return
    out = Path(args.out)
    store = out.with_suffix(".json")  # every finished (N, method) row, merged across invocations
    rows: list[dict] = json.loads(store.read_text()) if store.exists() else []

    def report() -> None:
        for r in rows:  # table sizes of rows recorded before sizes were (still in the work folder)
            sel = Path(args.workdir) / f"n{r['pool']}" / "selections" / r["label"]
            if "seconds" in r and "bytes" not in r and sel.is_dir():
                r["bytes"] = {"embeddings": dir_bytes(sel.parents[1] / "embeddings"),
                              **{f.stem: f.stat().st_size for f in sel.glob("*.parquet")}}
        store.write_text(json.dumps(rows, indent=1) + "\n")
        write_report(out, rows, machine())
        if not args.no_plots:
            plot(rows, out)

    if args.report_only:
        report()
        return

    def key(r: dict) -> tuple:
        return r["pool"], r["label"], r.get("sizes", "zipf"), r.get("workers", 1)

    def record(row: dict) -> None:
        row.setdefault("sizes", args.class_sizes)
        row.setdefault("workers", args.workers or 1)
        rows[:] = [r for r in rows if key(r) != key(row)] + [row]
        rows.sort(key=lambda r: (r.get("sizes", "zipf"), r["pool"], list(METHODS).index(r["label"]),
                                 r.get("workers", 1)))
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(rows, indent=1) + "\n")
        write_report(out, rows, machine())

    for n in args.sizes:
        run = Path(args.workdir) / (f"n{n}" if args.class_sizes == "zipf" else f"n{n}-{args.class_sizes}")
        if not (run / "class_text.npy").exists():
            t0 = time.perf_counter()
            make_pool(run, n, args.dim, args.classes, args.seed, sizes=args.class_sizes)
            print(f"pool N={n:,}: generated in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if any("{target}" in METHODS[m]["options"].values() for m in args.methods):
            make_target(run, args.dim, args.seed)
        for label in args.methods:
            cmd = [sys.executable, __file__, "--one", str(run), label, "--fraction", str(args.fraction),
                   "--seed", str(args.seed)]
            cmd += ["--workers", str(args.workers)] if args.workers else []
            cmd += ["--memory", args.memory] if args.memory else []
            load_before = os.getloadavg()[0]
            date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            proc, why, seen_gb = run_child(cmd, args.timeout, args.max_rss_gb)
            if proc is None:
                record({"label": label, "pool": n, "not_run": why, "rss_seen_gb": seen_gb, "date": date,
                        "load_before": load_before, "load_after": os.getloadavg()[0]})
                print(f"N={n:,} {label}: NOT RUN, {why}; peak RSS seen {seen_gb:.2f} GB", file=sys.stderr, flush=True)
                continue
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                record({"label": label, "pool": n, "error": err})
                print(f"N={n:,} {label}: FAILED {err}", file=sys.stderr, flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(date=date, load_before=load_before, load_after=os.getloadavg()[0])
            row["bytes"] = {"embeddings": dir_bytes(run / "embeddings"),
                            **{f.stem: f.stat().st_size for f in (run / "selections" / label).glob("*.parquet")}}
            record(row)
            print(f"N={n:,} {label}: {row['seconds']:.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB",
                  file=sys.stderr, flush=True)
    report()
    from summary import metric, write_summary

    done = [r for r in rows if r["pool"] in args.sizes and "seconds" in r]
    write_summary(args.summary_json, "select_scale", [
        m for r in done for m in (
            metric(f"{r['label']} N={r['pool']:,}: time", r["seconds"], "s"),
            metric(f"{r['label']} N={r['pool']:,}: peak RSS", r["peak_rss_gb"], "GB"),
        )
    ])


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stopped_after(row: dict) -> float | None:
    """Seconds a stopped run had used (``not_run`` reads "stopped after S s" or "stopped at S s")."""
    m = re.search(r"stopped (?:after|at) (\d+) s", row.get("not_run", ""))
    return float(m.group(1)) if m else None


def extrapolate(rows: list[dict], label: str, n: int, key: str) -> tuple[float, float] | None:
    """``label``'s ``key`` at ``n`` from its two largest measured sizes: time by the power law through them,
    ``(value, exponent)``; peak RSS by the straight line through them (a fixed base of imported libraries
    plus bytes per sample), ``(value, GB per million samples)``."""
    pts = sorted((r["pool"], r[key]) for r in rows if r["label"] == label and key in r and r["pool"] < n)
    if len(pts) < 2:
        return None
    (n1, y1), (n2, y2) = pts[-2:]
    if key == "peak_rss_gb":
        slope = (y2 - y1) / (n2 - n1)
        return y2 + slope * (n - n2), slope * 1e6
    b = math.log(y2 / y1) / math.log(n2 / n1)
    return y2 * (n / n2) ** b, b


def write_report(out: Path, rows: list[dict], m: dict) -> None:
    lines = [
        "# `curate select` scaling: time and peak memory vs pool size",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  ",
        "Command: `python benchmarks/select_scale.py --sizes 10000 100000 1000000` (defaults: d=512, 1000 classes,",
        "fraction 0.1, `--timeout 900 --max-rss-gb 16`; rows of several invocations are merged through",
        "`select_scale.json`)  ",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), GPU: {m['gpu']}, torch threads {m['torch_threads']}  ",
        "",
        "```",
        f"$ free -g\n{m['free_g']}",
        "```",
        "",
        f"Load average (`uptime`, 1/5/15 min) when the report was written: {m['load']}. The machine was shared",
        "with another engineer's training job using about one of the two cores; each row gives the 1-minute",
        "load average just before and just after its run. Times are as measured, not adjusted for the load;",
        "on this machine they vary by up to 2-3x between repeats.",
        "",
        "Pool: N synthetic samples, d=512, 1000 classes with Zipf(1) sizes (largest ≈ 13% of N),",
        "float16 Parquet as written by `curate embed`; budget = 10% of N. Time = `run_selection` wall time",
        "(read the embeddings, score, decide, write scores + manifest) in a process that has already imported",
        "torch, faiss and open_clip (the cold imports cost the `import s` column once per process, and they are",
        "most of the ≈0.6 GB peak RSS of the cheapest run, random at N=10,000); peak RSS (VmHWM) of the process.",
        "clipcov = reference variant with 1000-class zero-shot partition from given class embeddings;",
        "clipcov-greedy = exact gains; clipcov-kmeans = faiss k-means K=1000 partition; semdedup = k-means with",
        "sqrt(N) clusters, budget met by the eps rule. negcliploss = B 32,768, K 10, τ 0.01; normsim-inf/-2 and",
        f"image-filter use a target of {TARGET_ROWS:,} images around {TARGET_CLASSES} of the classes (image-filter:",
        "round(N/128) k-means clusters, no budget).",
        "",
        "| N | classes | method | processes | seconds | peak RSS (GB) | task process peak RSS (GB) | kept | import s |"
        " load before / after | notes |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    not_run = []
    for r in rows:
        head = f"| {r['pool']:,} | {r.get('sizes', 'zipf')} | {r['label']} | {r.get('workers', 1)} |"
        if "error" in r:
            lines.append(f"{head} — | — | — | — | — | — | failed: {r['error']} |")
            continue
        load = " / ".join(f"{r[k]:.1f}" if k in r else "–" for k in ("load_before", "load_after"))
        if "not_run" in r:
            t, m_ = extrapolate(rows, r["label"], r["pool"], "seconds"), extrapolate(rows, r["label"], r["pool"],
                                                                                     "peak_rss_gb")
            est = []
            if t:
                n2, t2 = max((q["pool"], q["seconds"]) for q in rows if q["label"] == r["label"] and "seconds" in q)
                est.append(f"~{t[0]:,.0f} s (N^{t[1]:.2f}), ~{t2 * (r['pool'] / n2) ** 2:,.0f} s (N²)")
            if m_:
                est.append(f"~{m_[0]:.1f} GB (linear, {m_[1]:.1f} GB per million samples)")
            not_run.append(r)
            lines.append(
                f"{head} not run | ≥ {r['rss_seen_gb']:.2f} seen | — | — | — | {load} | "
                f"{r['not_run']}; extrapolated from the two largest measured N: {', '.join(est) or '—'} |"
            )
            continue
        notes = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r["info"].items()
            if k in ("class_updates", "clusters", "effective_eps", "effective_threshold", "target_clusters",
                     "batches_per_repeat")
        )
        worker = f"{r['worker_peak_rss_gb']:.2f}" if r.get("worker_peak_rss_gb") else "—"
        lines.append(
            f"{head} {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {worker} | "
            f"{r['kept']:,} | {r['import_seconds']:.1f} | {load} | {notes} |"
        )
    if not_run:
        lines += [
            "",
            "*Not run*: stopped at the time or memory limit; `≥ X seen` is the peak RSS it had reached. Peak",
            "RSS is extrapolated along the straight line through the two largest measured sizes. Two",
            "extrapolations of the time are shown, both estimates, not measurements: the power law through the",
            "method's two largest measured sizes (exponent shown; drawn dashed in the plots), and N² growth from",
            "the largest measured size (the growth of ClipCov's cross terms and of semdedup's per-cluster scan",
            "when the number of classes is fixed). Where the power law gives less than the time the stopped run",
            "had already used, that run shows the power law underestimates: the exponent measured between the",
            "small sizes is below the asymptotic one, and the time lies between the limit and the N² figure.",
        ]
    sized = [r for r in rows if "bytes" in r]
    if sized:
        lines += [
            "",
            "## Table sizes (bytes per pool sample)",
            "",
            "Parquet files written by this benchmark, divided by N: the embedding tables (ids + two d=512",
            "float16 vectors + clip_score, as `curate embed` writes them) and each selection's `scores.parquet`",
            "and `manifest.parquet` (10% kept). The synthetic uids and keys are sequential and compress far",
            "better than real random 128-bit uids (`bootstrap_scale.md` measures tables of random uids), so the",
            "id part of these sizes is a lower bound; the two float16 vectors (2,048 bytes raw) dominate.",
            "",
            "| N | embeddings | method | scores | manifest |",
            "|---:|---:|---|---:|---:|",
        ]
        for r in sized:
            b, n = r["bytes"], r["pool"]
            lines.append(f"| {n:,} | {b['embeddings'] / n:,.0f} | {r['label']} | {b.get('scores', 0) / n:.1f} | "
                         f"{b.get('manifest', 0) / n:.1f} |")
    lines += ["", f"Plots: `{out.stem}_time.png`, `{out.stem}_memory.png` (log-log, one line per method)."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    """``<out>_time.png`` and ``<out>_memory.png``: log-log, one line per method; extrapolations dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from summary import log_log_axes

    for key, unit, suffix in (("seconds", "time (s)", "time"), ("peak_rss_gb", "peak RSS (GB)", "memory")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, label in enumerate(METHODS):
            pts = sorted((r["pool"], r[key]) for r in rows if r["label"] == label and key in r)
            if not pts:
                continue
            colour = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=label)
            for r in rows:
                if r["label"] != label or "not_run" not in r:
                    continue
                est = extrapolate(rows, label, r["pool"], key)
                if est:
                    ax.plot([pts[-1][0], r["pool"]], [pts[-1][1], est[0]], ls="--", marker="o", mfc="none",
                            color=colour)
                reached = r["rss_seen_gb"] if key == "peak_rss_gb" else stopped_after(r)
                if reached:
                    ax.plot([r["pool"]], [reached], marker="^", ms=9, color=colour, ls="none")
        log_log_axes(ax, "pool size N (samples)", unit,
                     f"curate select: {unit.split(' (')[0]} vs N\n(▲ stopped at the limit, the full run needs more;"
                     " dashed: extrapolated)", title_size=9)
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{suffix}.png"), dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
