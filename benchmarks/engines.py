"""Wall time of the engines side by side on the same inputs (and a check that their tables are equal).

select: each method runs with ``--engine local`` and ``--engine ray`` on one run's embeddings, in
alternation, ``--repeats`` times; the Ray start-up is timed once, apart. embed (``--embed``): the shards
are embedded into fresh runs with the local engine, ``--devices cpu,cpu`` and the ray engine.

    python benchmarks/engines.py --run RUN [--embed SHARDS] --out benchmarks/results/engines.md
    python benchmarks/engines.py --quick      # make bench: embed the sample with each engine, select on it once
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import metric, write_summary

from curate.embed import EmbedConfig, run_embed
from curate.engines import make_engine
from curate.select import run_selection

SAMPLE = str(Path(__file__).resolve().parents[1] / "shards" / "sample" / "train")

METHODS = {
    "clipcov reference (kmeans:30)": ("clipcov", {"partition": "kmeans:30"}, 0.3),
    "clipcov greedy (kmeans:30)": ("clipcov", {"partition": "kmeans:30", "variant": "greedy"}, 0.3),
    "semdedup": ("semdedup", {}, 0.5),
}


def _same(a: Path, b: Path, name: str) -> bool:
    return pq.read_table(a / name).equals(pq.read_table(b / name))


def bench_select(run: Path, engine: object, repeats: int) -> list[tuple[str, float, float, bool]]:
    rows = []
    for label, (method, opts, frac) in METHODS.items():
        times: dict[str, list[float]] = {"local": [], "ray": []}
        same = True
        for r in range(repeats):
            paths = {}
            for name, eng in (("local", "local"), ("ray", engine)):
                t0 = time.perf_counter()
                res = run_selection(run, method, fraction=frac, options=opts, name=f"bench-{name}-{r}",
                                    engine=eng, force=True)
                times[name].append(time.perf_counter() - t0)
                paths[name] = res.path
            same &= _same(paths["local"], paths["ray"], "scores.parquet")
        rows.append((label, statistics.median(times["local"]), statistics.median(times["ray"]), same))
    return rows


def bench_embed(shards: str, model: str, work: Path) -> list[tuple[str, float, bool]]:
    out = []
    ref = None
    for label, eng in (("local", {"engine": "local"}), ("local --devices cpu,cpu", {"devices": "cpu,cpu"}),
                       ("ray", {"engine": "ray"})):
        run = work / label.replace(" ", "_").replace(",", "_")
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        run_embed(EmbedConfig(shards=shards, run=str(run), model=model, **eng))
        sec = time.perf_counter() - t0
        tables = {p.name: pq.read_table(p) for p in sorted((run / "embeddings").glob("*.parquet"))}
        if ref is None:
            ref = tables
        same = tables.keys() == ref.keys() and all(tables[k].equals(ref[k]) for k in ref)
        out.append((label, sec, same))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an embedded run (select benchmark; default with --embed: its local run)")
    ap.add_argument("--embed", help="shards to embed with each engine (embed benchmark)")
    ap.add_argument("--model", default="sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="--embed the sample shards, --repeats 1 (make bench)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    args = ap.parse_args(argv)
    if args.quick:
        args.embed, args.repeats = args.embed or SAMPLE, 1
    if not args.run and not args.embed:
        ap.error("give --run, --embed or --quick")
    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="warning", log_to_driver=False)
    start = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", 0))
    with tempfile.TemporaryDirectory() as tmp:
        emb = bench_embed(args.embed, args.model, Path(tmp)) if args.embed else []
        run = Path(args.run) if args.run else Path(tmp) / "local"
        with make_engine("ray") as engine:
            sel = bench_select(run, engine, args.repeats)
    ray.shutdown()
    load = os.getloadavg()
    lines = [
        "# Engines: local vs ray (same inputs, same run)",
        "",
        f"`python benchmarks/engines.py {' '.join(argv if argv is not None else sys.argv[1:])}` — "
        f"{dt.date.today()}, {platform.machine()} {os.cpu_count()} cores (Ray: {cpus} CPUs, local instance), "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end.",
        "",
        f"Ray start-up (`ray.init`, once, not in the times below): {start:.1f} s.",
        "",
        f"## select (median of {args.repeats}; pool of `{args.run or 'the local embed run'}`)",
        "",
        "| method | local s | ray s | ray / local | tables equal |",
        "|---|---:|---:|---:|---|",
        *[f"| {m} | {a:.2f} | {b:.2f} | {b / a:.2f} | {'yes' if s else 'NO'} |" for m, a, b, s in sel],
    ]
    if emb:
        base = emb[0][1]
        lines += ["", f"## embed (`{args.embed}`, `--model {args.model}`, one run each)", "",
                  "| engine | s | / local | tables equal to local |", "|---|---:|---:|---|",
                  *[f"| {label} | {s:.1f} | {s / base:.2f} | {'yes' if same else 'NO'} |" for label, s, same in emb]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    metrics = [metric(f"select {m}: ray / local time", b / a, "ratio") for m, a, b, _ in sel]
    metrics += [metric(f"embed {label}: time / local", t / emb[0][1], "ratio") for label, t, _ in emb[1:]]
    equal = all(s for *_, s in sel) and all(same for *_, same in emb)
    metrics.append(metric("every engine's tables equal to local (1 = yes)", float(equal), "", better="higher"))
    write_summary(args.summary_json, "engines", metrics)


if __name__ == "__main__":
    main()
