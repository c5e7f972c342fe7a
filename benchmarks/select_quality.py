"""Does it curate? Ground-truth defects and class coverage of each method's subset at the same budget.

On the committed synthetic world (``shards/sample/train``: 3000 samples, 30 Zipf-sized classes, 20%
mismatched captions, 8% exact/near duplicates, 5% uninformative captions) embedded with the built-in
tiny model, every method keeps the same number of samples; the ground truth (``read_truth``) says how
many kept samples are defects and how evenly the kept samples cover the classes.

    python benchmarks/select_quality.py --fraction 0.5 --out benchmarks/results/select_quality.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def methods(classes_file: Path, n_classes: int) -> list[tuple[str, str, dict[str, Any], list[int]]]:
    """(label, method, options, seeds)."""
    return [
        ("random (mean of 5 seeds)", "random", {}, [0, 1, 2, 3, 4]),
        ("clip-score", "clip-score", {}, [0]),
        ("semdedup", "semdedup", {}, [0]),
        ("clipcov (world class names)", "clipcov", {"classes": str(classes_file)}, [0]),
        ("clipcov greedy (world class names)", "clipcov", {"classes": str(classes_file), "variant": "greedy"}, [0]),
        ("clipcov (ImageNet-1k zero-shot, default)", "clipcov", {}, [0]),
        (f"clipcov (kmeans:{n_classes})", "clipcov", {"partition": f"kmeans:{n_classes}"}, [0]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=str(ROOT / "shards/sample/train"))
    ap.add_argument("--classes", default=str(ROOT / "shards/sample/classnames.txt"))
    ap.add_argument("--run", default="/tmp/curate-select-quality")
    ap.add_argument("--model", default="sample")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/select_quality.md"))
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    args = ap.parse_args()

    from curate.cli.app import main as cli
    from curate.io.shards import expand_shards
    from curate.select import run_selection
    from curate.world import read_truth
    from curate.world import subset_truth_metrics as metrics

    run = Path(args.run)
    if not (run / "embeddings").exists() or not any((run / "embeddings").glob("*.parquet")):
        code = cli(["embed", args.shards, "--run", str(run), "--model", args.model, "--workers", "0", "--json"])
        if code != 0:
            sys.exit(f"embedding failed (exit {code}); is the '{args.model}' model available?")
    truth = read_truth(expand_shards(args.shards))
    n_classes = int(pc.max(truth.column("class_id")).as_py()) + 1
    pool = metrics(truth.column("uid").combine_chunks(), truth)
    rows: list[tuple[str, dict[str, float]]] = [("pool (no selection)", pool)]
    for label, method, opts, seeds in methods(Path(args.classes), n_classes):
        per_seed = []
        for seed in seeds:
            res = run_selection(
                run,
                method,
                fraction=args.fraction,
                seed=seed,
                options=opts,
                force=True,
                name=re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-") + f"-s{seed}",
            )
            t = pq.read_table(res.path / "scores.parquet", columns=["uid", "selected"])
            uids = t.filter(t.column("selected")).column("uid").combine_chunks()
            per_seed.append(metrics(uids, truth))
        rows.append((label, {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}))
        print(label, {k: round(v, 3) for k, v in rows[-1][1].items()}, file=sys.stderr, flush=True)
    # ClipCov is not a deduplicator (its redundancy term is scaled by 1/n_k); SemDeDup is. Both together:
    both = run_selection(run, "intersect", name="clipcov-and-semdedup", force=True,
                         options={"of": ("clipcov-world-class-names-s0", "semdedup-s0")})
    t = pq.read_table(both.path / "manifest.parquet", columns=["uid"])
    rows.append(("clipcov ∩ semdedup (smaller budget)", metrics(t.column("uid").combine_chunks(), truth)))
    write_report(Path(args.out), rows, args)
    from summary import metric, write_summary

    write_summary(args.summary_json, "select_quality", [
        m for label, r in rows if label.split(" (")[0] in ("random", "clip-score", "semdedup", "clipcov") for m in (
            metric(f"{label}: mismatched kept", r["mismatched"], "share"),
            metric(f"{label}: class entropy", r["entropy"], "", better="higher"),
        )
    ])


def write_report(out: Path, rows: list[tuple[str, dict[str, float]]], args: argparse.Namespace) -> None:
    lines = [
        "# Does `curate select` curate? Ground-truth defects and class coverage at the same budget",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  ",
        f"Command: `python benchmarks/select_quality.py --fraction {args.fraction}` "
        f"(embeds `{Path(args.shards).name}` with `--model {args.model}` into `{args.run}` first)  ",
        "",
        "Shares are of the kept samples. *duplicates*: kept samples that are exact/near copies of another",
        "sample; *redundant*: copies kept together with their original. Coverage uses the class actually",
        "drawn: *entropy* = normalised entropy of kept samples over the 30 classes (1 = perfectly even),",
        "min/max share = smallest/largest class share among kept samples.",
        "",
        "| method | kept | mismatched | duplicates | redundant | uninformative | entropy | min share | max share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m in rows:
        lines.append(
            f"| {label} | {m['kept']:.0f} | {m['mismatched']:.1%} | {m['duplicates']:.1%} | {m['redundant']:.1%} | "
            f"{m['uninformative']:.1%} | {m['entropy']:.3f} | {m['min_share']:.2%} | {m['max_share']:.1%} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
