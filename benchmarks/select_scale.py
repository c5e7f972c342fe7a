"""Select time and peak memory vs pool size, per method (synthetic normalised embeddings).

Each (size, method) runs in a fresh subprocess so that its peak RSS is its own; with ``--workers N`` its
tasks run in N spawned processes, whose peak RSS is polled (every 0.5 s) and reported apart from the
driver's. The pool is N samples, d=512, in 1000 classes of Zipf(1) sizes (largest ≈ 13% of N; or equal
sizes with ``--class-sizes uniform``); image and caption embeddings are noisy copies of their class centre
(cosine to the centre ≈ 0.6). clipcov gets the class centres as class-text embeddings (so its zero-shot
argmax over 1000 classes is timed, prompt encoding is not). metaclip reads captions from shards: for it
the pool also gets tar shards (made once per size, one per embedding table) holding a generated caption
and ``--image-bytes`` of stand-in image bytes per sample, and a metadata file of 500,000 entries
(``benchmarks/metaclip_match.py``'s generator: MetaCLIP's mix of words, bigrams and titles over a Zipf
vocabulary). Its time includes reading the shards back, so it grows with ``--image-bytes``; real images
(tens of KB) read more bytes per sample than the default.

``--baseline DIR`` also runs each method that DIR's own ``benchmarks/select_scale.py`` knows with DIR's
code (e.g. a git worktree of the commit before the pipeline), on the same embedding files, interleaved
with this code's runs: the side-by-side ratio.

A run that passes ``--timeout`` seconds or ``--max-rss-gb`` of peak RSS is stopped and recorded as not
run, with what it had reached and an extrapolation from the two largest sizes measured for that series.
The report is Markdown plus two log-log plots (time and peak RSS vs N, one line per series).

    python benchmarks/select_scale.py --sizes 1000000 3000000 10000000 --out benchmarks/results/select_scale.md
    python benchmarks/select_scale.py --sizes 1000000 --methods clipcov --class-sizes uniform --workers 2
    python benchmarks/select_scale.py --sizes 1000000 --baseline /work/wt-sel-base   # against older code
    python benchmarks/select_scale.py --report-only   # rewrite the report and plots from select_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
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
    from curate.io.tables import embedding_schema, fixed_list, write_embedding_table
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
        write_embedding_table(run / "embeddings" / f"{name}.parquet", table)
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
    from curate.io.tables import embedding_schema, fixed_list, write_embedding_table

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
    write_embedding_table(path, table)
    return path


def run_one(run: Path, label: str, fraction: float, seed: int, workers: int | None = None,
            memory: str | None = None, overrides: dict | None = None, preimport: bool = False) -> dict:
    """Time one selection in this process; report its wall time and peak RSS (the task processes' peak RSS
    is polled by the parent, ``run_child``: ``ru_maxrss`` of a spawned child counts the pages of this
    process at the moment it was spawned).

    ``preimport``: import torch and faiss before timing (their ~0.4 GB then counts in the driver's peak
    whether or not the method uses them); by default the run imports what it needs, as ``curate select``.
    """
    t_imp = time.perf_counter()
    if preimport:
        import faiss  # noqa: F401
        import torch  # noqa: F401

    from curate.select import run_selection

    t_imp = time.perf_counter() - t_imp
    spec = METHODS[label]
    options = {k: v.replace("{run}", str(run)) if isinstance(v, str) else v for k, v in spec["options"].items()}
    options = {k: (str(run / "target.parquet") if v == "{target}" else v) for k, v in options.items()}
    options.update(overrides or {})
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
    return {
        "label": label,
        "pool": res.pool_size,
        "kept": res.kept,
        "seconds": secs,
        "peak_rss_gb": peak_rss_gb(),
        "workers": workers or 1,
        "memory": memory,
        "options": overrides or {},
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


def vm_hwm_gb(pid: int) -> float:
    """Peak RSS (VmHWM) of a live process in GB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from the parent ids in ``/proc/*/stat``)."""
    parent: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parent.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = parent.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run_child(cmd: list[str], timeout: float, max_rss_gb: float, env: dict | None = None,
              poll: float = 0.5) -> tuple[subprocess.CompletedProcess | None, str, float, float]:
    """Run ``cmd``, polling its peak RSS and that of its descendants (the task processes of
    ``--workers``); stop it past ``timeout`` s or ``max_rss_gb``.

    Returns ``(completed process or None if stopped, why it was stopped, peak RSS seen in GB, largest
    peak RSS of a descendant seen in GB)``. A descendant's VmHWM is read every ``poll`` seconds while it
    lives, so a peak reached in its last ``poll`` seconds can be missed; spawned processes start from an
    empty address space, so their VmHWM is their own.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, worker, why = 0.0, 0.0, ""
    while True:
        try:
            out, err = proc.communicate(timeout=poll)
            return subprocess.CompletedProcess(cmd, proc.returncode, out, err), "", peak, worker
        except subprocess.TimeoutExpired:
            pass
        peak = max(peak, vm_hwm_gb(proc.pid))
        worker = max([worker] + [vm_hwm_gb(p) for p in descendants(proc.pid)])
        secs = time.perf_counter() - t0
        if secs > timeout:
            why = f"stopped after {secs:.0f} s (--timeout {timeout:.0f})"
        elif peak > max_rss_gb:
            why = f"stopped at {secs:.0f} s: peak RSS passed {max_rss_gb:g} GB (--max-rss-gb)"
        if why:
            for p in descendants(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(p, 9)
            proc.kill()
            proc.communicate()
            return None, why, peak, worker


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
    ap.add_argument("--negcliploss-repeats", type=int, default=None, help="negcliploss: K (default: the method's)")
    ap.add_argument("--negcliploss-batch", type=int, default=None, help="negcliploss: B (default: the method's)")
    ap.add_argument("--image-bytes", type=int, default=1000, help="metaclip: stand-in image bytes per sample")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="a checkout of older code (e.g. a git worktree of the commit before the pipeline): each "
                    "method it has is also run with DIR/benchmarks/select_scale.py and DIR on PYTHONPATH, on the "
                    "same embedding files, in one process, interleaved with this code's runs")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (N, method) (with --baseline: pairs)")
    ap.add_argument("--timeout", type=float, default=900.0, help="stop a run after this many seconds")
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="stop a run whose peak RSS passes this")
    ap.add_argument("--preimport", action="store_true",
                    help="import torch and faiss in the driver before timing (as rows before 2026-12-05 did); "
                    "default: the run imports what it needs, as curate select does")
    ap.add_argument("--workdir", default="/tmp/curate-select-scale")
    ap.add_argument("--out", default="benchmarks/results/select_scale.md")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the JSON store; run nothing")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    ap.add_argument("--one", nargs=2, metavar=("RUN", "LABEL"), help=argparse.SUPPRESS)
    ap.add_argument("--options", default=None, help=argparse.SUPPRESS)  # JSON: method option overrides
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], args.fraction, args.seed, args.workers,
                                 args.memory, json.loads(args.options) if args.options else None,
                                 args.preimport)))
        return
    out = Path(args.out)
    store = out.with_suffix(".json")  # every finished row, merged across invocations
    rows: list[dict] = json.loads(store.read_text()) if store.exists() else []

    def report() -> None:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(rows, indent=1) + "\n")
        write_report(out, rows, machine())
        if not args.no_plots:
            plot(rows, out)

    if args.report_only:
        report()
        return

    def record(row: dict) -> None:
        rows[:] = [r for r in rows if row_key(r) != row_key(row)] + [row]
        rows.sort(key=sort_key)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(rows, indent=1) + "\n")
        write_report(out, rows, machine())

    head = git_head()
    for n in args.sizes:
        run = Path(args.workdir) / (f"n{n}" if args.class_sizes == "zipf" else f"n{n}-{args.class_sizes}")
        if not (run / "class_text.npy").exists():
            t0 = time.perf_counter()
            make_pool(run, n, args.dim, args.classes, args.seed, sizes=args.class_sizes)
            print(f"pool N={n:,}: generated in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if any("{target}" in METHODS[m]["options"].values() for m in args.methods):
            make_target(run, args.dim, args.seed)
        if "metaclip" in args.methods and not (run / "shards" / "done").exists():
            t0 = time.perf_counter()
            make_caption_shards(run, args.seed, args.image_bytes)
            print(f"pool N={n:,}: caption shards written in {time.perf_counter() - t0:.0f}s", file=sys.stderr,
                  flush=True)
        base_run = baseline_run(run) if args.baseline else None
        for label in args.methods:
            overrides = {}
            if label == "negcliploss":
                overrides = {k: v for k, v in (("repeats", args.negcliploss_repeats),
                                               ("batch_size", args.negcliploss_batch)) if v is not None}
            for rep in range(args.repeats):
                codes = [("HEAD", run)]
                if base_run is not None and label in BASELINE_METHODS:
                    codes.append(("baseline", base_run))
                    codes = codes if rep % 2 == 0 else codes[::-1]  # alternate who runs first
                for code, where in codes:
                    base = code == "baseline"
                    script = Path(args.baseline) / "benchmarks" / "select_scale.py" if base else Path(__file__)
                    cmd = [sys.executable, str(script), "--one", str(where), label, "--fraction",
                           str(args.fraction), "--seed", str(args.seed)]
                    if not base:
                        cmd += ["--workers", str(args.workers)] if args.workers else []
                        cmd += ["--memory", args.memory] if args.memory else []
                        cmd += ["--options", json.dumps(overrides)] if overrides else []
                        cmd += ["--preimport"] if args.preimport else []
                    env = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())} if base else None
                    desc = {"label": label, "pool": n, "sizes": args.class_sizes, "rep": rep,
                            "code": f"baseline {git_head(args.baseline)}" if base else f"HEAD {head}",
                            "workers": 1 if base else args.workers or 1, "memory": None if base else args.memory,
                            "options": {} if base else overrides, "preimport": base or args.preimport}
                    load_before = os.getloadavg()[0]
                    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                    proc, why, seen_gb, worker_gb = run_child(cmd, args.timeout, args.max_rss_gb, env)
                    tag = f"N={n:,} {series_name(desc)}"
                    if proc is None:
                        record({**desc, "not_run": why, "rss_seen_gb": seen_gb, "worker_seen_gb": worker_gb,
                                "date": date, "load_before": load_before, "load_after": os.getloadavg()[0]})
                        print(f"{tag}: NOT RUN, {why}; peak RSS seen {seen_gb:.2f} GB", file=sys.stderr, flush=True)
                        continue
                    if proc.returncode != 0:
                        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                        record({**desc, "error": err, "date": date})
                        print(f"{tag}: FAILED {err}", file=sys.stderr, flush=True)
                        continue
                    row = {**json.loads(proc.stdout.strip().splitlines()[-1]), **desc}
                    row.update(date=date, load_before=load_before, load_after=os.getloadavg()[0],
                               worker_peak_rss_gb=worker_gb if row["workers"] > 1 else None)
                    sel = where / "selections" / label
                    row["bytes"] = {"embeddings": dir_bytes(run / "embeddings"),
                                    **{f.stem: f.stat().st_size for f in sel.glob("*.parquet")}}
                    row["largest_partition"] = largest_partition(sel, row)
                    record(row)
                    print(f"{tag}: {row['seconds']:.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB"
                          + (f", task process {worker_gb:.2f} GB" if row["worker_peak_rss_gb"] else ""),
                          file=sys.stderr, flush=True)
    report()
    from summary import metric, write_summary

    done = [r for r in rows if r["pool"] in args.sizes and "seconds" in r]
    write_summary(args.summary_json, "select_scale", [
        m for r in done for m in (
            metric(f"{series_name(r)} N={r['pool']:,}: time", r["seconds"], "s"),
            metric(f"{series_name(r)} N={r['pool']:,}: peak RSS", r["peak_rss_gb"], "GB"),
            *([metric(f"{series_name(r)} N={r['pool']:,}: task process peak RSS", r["worker_peak_rss_gb"], "GB")]
              if r.get("worker_peak_rss_gb") else []),
        )
    ])


#: The methods of the code before the pipeline (commit cff5ff4's select_scale.py).
BASELINE_METHODS = ("clipcov", "clipcov-greedy", "clipcov-kmeans", "random", "clip-score", "semdedup")


def git_head(where: str | None = None) -> str:
    """The short commit of ``where`` (default: this checkout), ``+dirty`` with uncommitted changes."""
    cwd = where or str(Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=cwd,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "curate"], capture_output=True, text=True,
                               cwd=cwd).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return sha + ("+dirty" if dirty else "")


def baseline_run(run: Path) -> Path:
    """``<run>-base``: the same embedding files (a link), class texts and target, and a run.json without
    the selections of this code, for the older code to write its selections into."""
    base = run.with_name(run.name + "-base")
    base.mkdir(exist_ok=True)
    for name in ("embeddings", "class_text.npy", "target.parquet"):
        if (run / name).exists() and not (base / name).exists():
            (base / name).symlink_to((run / name).resolve())
    meta = json.loads((run / "run.json").read_text())
    meta = {k: v for k, v in meta.items() if k in ("embed", "created", "version", "schema")}
    if not (base / "run.json").exists():
        (base / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    return base


def largest_partition(sel: Path, row: dict) -> int | None:
    """Rows of the largest partition a pass-2 task held: the most frequent ``partition`` of the scores
    table (clipcov's classes, semdedup's clusters), negcliploss's largest batch; None without pass 2."""
    if row["label"] == "negcliploss":
        return row["info"].get("largest_batch")
    if row["label"] not in ("clipcov", "clipcov-greedy", "clipcov-kmeans", "semdedup"):
        return None
    try:
        part = pq.read_table(sel / "scores.parquet", columns=["partition"]).column(0).drop_null().to_numpy()
    except (OSError, KeyError, pa.ArrowInvalid):
        return None
    return int(np.bincount(part[part >= 0]).max()) if len(part) else None


def variant(r: dict) -> str:
    return ",".join(f"{'K' if k == 'repeats' else 'B' if k == 'batch_size' else k}={v}"
                    for k, v in sorted((r.get("options") or {}).items()))


def series_name(r: dict) -> str:
    """One line of the plots: method (and option overrides), class sizes, processes, memory, code."""
    parts = [r["label"] + (f" ({variant(r)})" if variant(r) else "")]
    if r.get("sizes", "zipf") != "zipf":
        parts.append(f"{r['sizes']} classes")
    if r.get("workers", 1) > 1:
        parts.append(f"{r['workers']} workers")
    if r.get("memory"):
        parts.append(f"--memory {r['memory']}")
    if str(r.get("code", "HEAD")).startswith("baseline"):
        parts.append(f"@ {r['code'].split()[1]}")
    return ", ".join(parts)


def series_key(r: dict) -> tuple:
    return (r["label"], variant(r), r.get("sizes", "zipf"), r.get("workers", 1), r.get("memory") or "",
            str(r.get("code", "HEAD")).split()[0])


def row_key(r: dict) -> tuple:
    return (*series_key(r), r["pool"], r.get("rep", 0))


def sort_key(r: dict) -> tuple:
    s = series_key(r)
    return (s[2], r["pool"], list(METHODS).index(r["label"]), s[1], s[3], s[4], s[5], r.get("rep", 0))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stopped_after(row: dict) -> float | None:
    """Seconds a stopped run had used (``not_run`` reads "stopped after S s" or "stopped at S s")."""
    m = re.search(r"stopped (?:after|at) (\d+) s", row.get("not_run", ""))
    return float(m.group(1)) if m else None


def extrapolate(rows: list[dict], row: dict, key: str) -> tuple[float, float] | None:
    """``row``'s series' ``key`` at ``row``'s N from its two largest measured sizes: time by the power law
    through them, ``(value, exponent)``; peak RSS by the straight line through them (a fixed base of
    imported libraries plus bytes per sample), ``(value, GB per million samples)``."""
    n = row["pool"]
    pts = sorted((r["pool"], r[key]) for r in rows
                 if series_key(r) == series_key(row) and r.get(key) and r["pool"] < n)
    if len(pts) < 2:
        return None
    (n1, y1), (n2, y2) = pts[-2:]
    if key != "seconds":
        slope = (y2 - y1) / (n2 - n1)
        return y2 + slope * (n - n2), slope * 1e6
    b = math.log(y2 / y1) / math.log(n2 / n1)
    return y2 * (n / n2) ** b, b


def f16_gb(rows_in_partition: int | None, d: int = 512) -> float | None:
    """The float16 image and caption embeddings of a partition, in GB (2 vectors of d halves per row)."""
    return None if rows_in_partition is None else rows_in_partition * 2 * d * 2 / 1024**3


def write_report(out: Path, rows: list[dict], m: dict) -> None:
    lines = [
        "# `curate select` scaling: time and peak memory vs pool size",
        "",
        f"Report written: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  ",
        "Commands: `python benchmarks/select_scale.py --sizes ... [--class-sizes uniform] [--workers 2] "
        "[--baseline DIR]` (BENCHMARKS.md §4 lists the invocations; rows of several invocations are merged "
        "through `select_scale.json`)  ",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), GPU: {m['gpu']}, torch threads {m['torch_threads']}  ",
        "",
        "```",
        f"$ free -g\n{m['free_g']}",
        "```",
        "",
        f"Load average (1/5/15 min) when the report was written: {m['load']}. The machine is shared with other",
        "work; each row gives the 1-minute load average just before and just after its run. Times are as",
        "measured, not adjusted for the load; compare rows of similar load, and old against new code only",
        "within the side-by-side pairs below.",
        "",
        "Pool: N synthetic samples, d=512, 1000 classes (`zipf`: class k has a share ∝ 1/k, the largest ≈ 13%",
        "of N; `uniform`: equal shares), float16 Parquet as `curate embed` writes it; budget 10% of N. Time =",
        "`run_selection` wall time (read the embeddings, score, decide, write the tables), including the imports",
        "of torch and faiss where the method needs them, as `curate select`; rows noted *torch & faiss",
        "preimported* (all before 2026-12-05, and the baseline's) had imported them first (`import s`), so",
        "their driver peak includes ~0.4 GB of libraries whether used or not. *Driver* = peak RSS (VmHWM) of",
        "the process that calls `run_selection`; with 1 process it also runs every task. *Task process* = the",
        "largest VmHWM of its `--workers` processes (spawned, so their own pages only), read every 0.5 s.",
        "*Largest partition* = rows of the largest partition a pass-2 task held, and its float16 embeddings",
        "(2 × 512 halves per row): the issue's worker target is 1 GB plus that. clipcov = reference variant,",
        "zero-shot over 1000",
        "given class embeddings; clipcov-kmeans = kmeans:1000 partition; semdedup = √N clusters, budget by the",
        "eps rule; negcliploss = τ 0.01 and B, K as shown (defaults B 32,768, K 10); normsim-inf and",
        f"image-filter use a target of {TARGET_ROWS:,} images around {TARGET_CLASSES} of the classes",
        "(image-filter: round(N/128) clusters, no budget); metaclip reads its captions back from tar shards",
        "(one per 100,000 rows, 1,000 stand-in image bytes per sample) and matches 500,000 entries.",
        "",
        "| N | classes | method | code | processes | seconds | µs / sample | driver peak RSS (GB) "
        "| task process peak RSS (GB) | largest partition (rows, f16 GB) | kept | import s | load before / after "
        "| notes |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    not_run = []
    for r in rows:
        name = r["label"] + (f" ({variant(r)})" if variant(r) else "") + (
            f", --memory {r['memory']}" if r.get("memory") else "")
        code = str(r.get("code", "?"))
        head = f"| {r['pool']:,} | {r.get('sizes', 'zipf')} | {name} | {code} | {r.get('workers', 1)} |"
        if "error" in r:
            lines.append(f"{head} — | — | — | — | — | — | — | — | failed: {r['error']} |")
            continue
        load = " / ".join(f"{r[k]:.1f}" if k in r else "–" for k in ("load_before", "load_after"))
        if "not_run" in r:
            t, m_ = extrapolate(rows, r, "seconds"), extrapolate(rows, r, "peak_rss_gb")
            est = []
            if t:
                est.append(f"~{t[0]:,.0f} s (N^{t[1]:.2f})")
            if m_:
                est.append(f"~{m_[0]:.1f} GB (linear, {m_[1]:.2f} GB per million samples)")
            not_run.append(r)
            wk = f"≥ {r['worker_seen_gb']:.2f} seen" if r.get("worker_seen_gb") else "—"
            lines.append(
                f"{head} not run | — | ≥ {r['rss_seen_gb']:.2f} seen | {wk} | — | — | — | {load} | "
                f"{r['not_run']}; extrapolated from the two largest measured N: {', '.join(est) or '—'} |"
            )
            continue
        notes = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r["info"].items()
            if k in ("class_updates", "clusters", "effective_eps", "effective_threshold", "target_clusters",
                     "batches_per_repeat", "effective_cap", "entries_matched")
        )
        if r.get("preimport", True):
            notes = ", ".join(x for x in (notes, "torch & faiss preimported") if x)
        worker = f"{r['worker_peak_rss_gb']:.2f}" if r.get("worker_peak_rss_gb") else "—"
        lp = r.get("largest_partition")
        part = f"{lp:,}, {f16_gb(lp):.2f}" if lp else "—"
        lines.append(
            f"{head} {r['seconds']:.1f} | {r['seconds'] / r['pool'] * 1e6:.2f} | {r['peak_rss_gb']:.2f} | {worker} | "
            f"{part} | {r['kept']:,} | {r['import_seconds']:.1f} | {load} | {notes} |"
        )
    if not_run:
        lines += [
            "",
            "*Not run*: stopped at the time or memory limit; `≥ X seen` is the peak RSS it had reached. Peak",
            "RSS is extrapolated along the straight line through the two largest measured sizes of the same",
            "series, time along the power law through them (exponent shown); both are estimates.",
        ]
    lines += pairs_table(rows)
    sized = [r for r in rows if "bytes" in r and str(r.get("code", "")).startswith("HEAD")]
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
            "| N | classes | method | embeddings | scores | manifest |",
            "|---:|---|---|---:|---:|---:|",
        ]
        seen = set()
        for r in sized:
            k = (r["pool"], r.get("sizes"), r["label"])
            if k in seen:
                continue
            seen.add(k)
            b, n = r["bytes"], r["pool"]
            lines.append(f"| {n:,} | {r.get('sizes', 'zipf')} | {r['label']} | {b['embeddings'] / n:,.0f} | "
                         f"{b.get('scores', 0) / n:.1f} | {b.get('manifest', 0) / n:.1f} |")
    lines += ["", f"Plots: `{out.stem}_time.png`, `{out.stem}_memory.png` (log-log; memory: driver solid, task "
              "process dotted)."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def pairs_table(rows: list[dict]) -> list[str]:
    """This code against the baseline, run by run (same pool, same repeat index, one process each)."""
    base = {(r["pool"], r.get("sizes"), r["label"], r.get("rep", 0)): r for r in rows
            if str(r.get("code", "")).startswith("baseline") and "seconds" in r}
    pairs = [(r, base[k]) for r in rows if str(r.get("code", "")).startswith("HEAD") and "seconds" in r
             and r.get("workers", 1) == 1 and not r.get("memory")
             and (k := (r["pool"], r.get("sizes"), r["label"], r.get("rep", 0))) in base]
    if not pairs:
        return []
    out = ["", "## Against the code before the pipeline, side by side", "",
           "Each pair ran on the same embedding files, one process each, one after the other (the order "
           "alternates between repeats). Ratio = this code's time / the baseline's (< 1: faster now).", "",
           "| N | classes | method | repeat | seconds now | seconds before | ratio | peak RSS now / before (GB) "
           "| load before each |", "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for new, old in pairs:
        out.append(f"| {new['pool']:,} | {new.get('sizes', 'zipf')} | {new['label']} | {new.get('rep', 0)} | "
                   f"{new['seconds']:.1f} | {old['seconds']:.1f} | {new['seconds'] / old['seconds']:.2f} | "
                   f"{new['peak_rss_gb']:.2f} / {old['peak_rss_gb']:.2f} | "
                   f"{new.get('load_before', 0):.1f} / {old.get('load_before', 0):.1f} |")
    return out


def plot(rows: list[dict], out: Path) -> None:
    """``<out>_time.png`` and ``<out>_memory.png``: log-log, one line per series (method, class sizes,
    processes, code); memory: the driver solid, the task processes dotted; extrapolations dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from summary import log_log_axes

    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault(series_key(r), []).append(r)
    labels = list(METHODS)
    for key, unit, suffix in (("seconds", "time (s)", "time"), ("peak_rss_gb", "peak RSS (GB)", "memory")):
        fig, ax = plt.subplots(figsize=(8.0, 5.6))
        for sk, rs in series.items():
            colour = f"C{labels.index(sk[0]) % 10}"
            style = {"marker": "o" if sk[3] == 1 else "s", "color": colour,
                     "ls": "-" if sk[2] == "zipf" else "-."}
            if sk[5] == "baseline":
                style.update(marker="x", ls=":")
            name = series_name(rs[0])
            pts = sorted((r["pool"], r[key]) for r in rs if r.get(key) and r.get("rep", 0) == 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **style)
            if key == "peak_rss_gb":
                wpts = sorted((r["pool"], r["worker_peak_rss_gb"]) for r in rs
                              if r.get("worker_peak_rss_gb") and r.get("rep", 0) == 0)
                if wpts:
                    ax.plot([p[0] for p in wpts], [p[1] for p in wpts], marker=style["marker"], mfc="none",
                            color=colour, ls=":", label=f"{name}: task process")
            for r in rs:
                if "not_run" not in r or not pts:
                    continue
                est = extrapolate(rows, r, key)
                if est:
                    ax.plot([pts[-1][0], r["pool"]], [pts[-1][1], est[0]], ls="--", marker="o", mfc="none",
                            color=colour)
                reached = r["rss_seen_gb"] if key == "peak_rss_gb" else stopped_after(r)
                if reached:
                    ax.plot([r["pool"]], [reached], marker="^", ms=9, color=colour, ls="none")
        log_log_axes(ax, "pool size N (samples)", unit,
                     f"curate select: {unit.split(' (')[0]} vs N (d=512, budget 10%)\n"
                     "(solid: Zipf classes, dash-dot: uniform; ■ 2 task processes; × dotted: code before the "
                     "pipeline" + ("; dotted ○: task process" if key == "peak_rss_gb" else "") + ")",
                     title_size=8)
        ax.legend(fontsize=6, ncol=2, loc="upper left")
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{suffix}.png"), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
