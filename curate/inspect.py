"""``curate inspect``: what a run holds — shards, samples, drops by reason, model, CLIP-score spread."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.embed.state import STEP, aggregate_stats, shard_states
from curate.io.tables import embedding_files, read_parquet, table_metadata
from curate.rundir import RunDir


def inspect_run(run_root: str | os.PathLike[str], bins: int = 10) -> dict[str, Any]:
    """A JSON-able summary of a run (counts are summed from the per-shard stats of embedded shards)."""
    run = RunDir(run_root)
    rec = run.require()
    emb = rec.get(STEP) or {}
    files = embedding_files(run.root)
    n = 0
    with_text = 0
    scores: list[np.ndarray] = []
    for f in files:
        t = read_parquet(f, ["clip_score"])
        n += t.num_rows
        col = t.column("clip_score")
        with_text += t.num_rows - col.null_count
        scores.append(pc.drop_null(col).to_numpy().astype(np.float32))
    s = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    hist: dict[str, Any] = {}
    if len(s):
        counts, edges = np.histogram(s, bins=bins)
        hist = {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}
    shards = emb.get("shards", [])
    done = {f.stem for f in files}
    totals = aggregate_stats(run, sorted(done | {x["name"] for x in shards}))["totals"]
    states = shard_states(run, [x["url"] for x in shards if "url" in x])
    dropped = {k.removeprefix("dropped_"): v for k, v in totals.items() if k.startswith("dropped_")}
    problems = {k.removeprefix("shard_"): v for k, v in totals.items() if k.startswith("shard_")}
    meta = table_metadata(files[0]) if files else {}
    return {
        "run": str(run.root),
        "model": {k: emb.get(k) for k in ("model", "arch", "pretrained", "pretrained_sha256", "precision", "dim",
                                          "image_size", "device_type", "open_clip")},
        "dim": meta.get("dim", emb.get("dim")),
        "shards": {
            "total": len(shards),
            "embedded": len(done),
            "pending": [x["name"] for x in shards if x["name"] not in done],
            "changed": [st.name for st in states if st.changed and not st.missing],
            "missing": [st.name for st in states if st.missing],
        },
        "samples": {"seen": totals.get("seen", 0), "embedded": n, "with_text": with_text,
                    "dropped": sum(dropped.values())},
        "dropped_by_reason": dict(sorted(dropped.items())),
        "shard_problems": problems,
        "clip_score": {
            "mean": float(s.mean()) if len(s) else None,
            "std": float(s.std()) if len(s) else None,
            "min": float(s.min()) if len(s) else None,
            "p50": float(np.median(s)) if len(s) else None,
            "max": float(s.max()) if len(s) else None,
            "histogram": hist,
        },
        "selections": run.selection_names(),
        "rounds": list(run.manifests()),
    }
