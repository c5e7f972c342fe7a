"""``curate select``: static coreset selection over a run's embeddings."""

from __future__ import annotations

import enum
from typing import Any

import typer
from rich.table import Table

from curate.cli._app import app
from curate.cli._common import RichProgress, out, print_json
from curate.engines import list_engines
from curate.select import SELECTORS, list_selectors, run_selection
from curate.select.base import parse_bytes

Method = enum.Enum("Method", {n: n for n in list_selectors()}, type=str)  # type: ignore[misc]
Variant = enum.Enum("Variant", {"reference": "reference", "greedy": "greedy"}, type=str)  # type: ignore[misc]
EngineName = enum.Enum("EngineName", {n: n for n in list_engines()}, type=str)  # type: ignore[misc]
Keep = enum.Enum("Keep", {"farthest": "farthest", "closest": "closest", "random": "random"}, type=str)  # type: ignore[misc]

_METHODS = "\n".join(f"  {n}: {c.summary}\n" for n, c in SELECTORS.items())
_EPILOG = f"""Methods:\n
{_METHODS}\n
Examples:\n
  curate select --run runs/demo --method clipcov --fraction 0.3\n
  curate select --run runs/demo --method clipcov --fraction 0.3 --partition kmeans:100 --variant greedy\n
  curate select --run runs/demo --method clip-score --threshold 0.28\n
  curate select --run runs/demo --method semdedup --eps 0.05 --keep farthest\n
  curate select --run runs/demo --method random --count 1000 --seed 1\n
  curate select --run runs/demo --method metaclip --metadata metadata.json --cap 20000 --seed 1\n
  curate select --run runs/demo --method metaclip --metadata entries.txt --fraction 0.3\n
  curate select --run runs/demo --method clipcov --fraction 0.3 --engine ray --ray-address auto\n
  curate select --run runs/demo --method intersect --of clip-score-t0.28 clipcov-f0.3"""


def _command(**given: Any) -> str:
    parts = ["curate select"]
    for k, v in given.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, tuple):
            parts.append(f"{flag} {' '.join(map(str, v))}")
        else:
            parts.append(f"{flag} {getattr(v, 'value', v)}")
    return " ".join(parts)


@app.command("select", epilog=_EPILOG)
def select(
    run: str = typer.Option(..., "--run", "-r", help="Run folder with embeddings (from 'curate embed')."),
    method: Method = typer.Option(..., "--method", "-m", help="Selection method (listed below)."),
    fraction: float = typer.Option(None, "--fraction", "-f", help="Keep int(pool × F) samples, 0 < F <= 1."),
    count: int = typer.Option(None, "--count", "-n", help="Keep K samples."),
    name: str = typer.Option(None, "--name", help="Selection name in RUN/selections/ (default from method+budget)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (random, k-means, metaclip draws)."),
    variant: Variant = typer.Option(None, help="clipcov: reference (spec §1.2, default) or greedy (exact gains)."),
    partition: str = typer.Option(None, help="clipcov: imagenet (zero-shot, default) or kmeans:K."),
    classes: str = typer.Option(None, help="clipcov: file of class names (one per line) for zero-shot labels."),
    threshold: float = typer.Option(None, help="clip-score: keep clip_score >= T (DataComp) instead of a budget."),
    eps: float = typer.Option(None, help="semdedup: drop samples with cosine > 1 - EPS to a kept cluster mate."),
    keep: Keep = typer.Option(None, help="semdedup: which near-duplicate survives (default farthest)."),
    clusters: int = typer.Option(None, help="semdedup: k-means clusters (default sqrt(pool))."),
    kmeans_sample: int = typer.Option(None, help="semdedup, clipcov --partition kmeans:K: rows k-means trains on "
                                      "(a seeded sample; default 256 per cluster, at most 500,000)."),
    metadata: str = typer.Option(None, help="metaclip: metadata entries, one per line (or MetaCLIP's .json list)."),
    cap: float = typer.Option(None, help="metaclip: per-entry cap t (MetaCLIP: 20000 for 400M) instead of a budget."),
    of: tuple[str, str] = typer.Option(None, "--of", help="intersect/union/difference: NAME_A NAME_B."),
    device: str = typer.Option("auto", help="clipcov: auto, cpu, cuda, cuda:N."),
    engine: EngineName = typer.Option("local", help="Where the tasks run: local or ray (same result)."),
    workers: int = typer.Option(None, help="--engine local: task processes (default 1: this process)."),
    memory: str = typer.Option("1G", help="Memory a process may hold besides one partition's embeddings "
                               "(e.g. 512M, 4G); above it rankings spill to disk. Same result at any value."),
    ray_address: str = typer.Option(None, help="--engine ray: cluster address (auto, ray://HOST:10001); "
                                    "default: start a local Ray."),
    force: bool = typer.Option(False, "--force", help="Replace a selection of that name made with other options."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Select a subset of a run's samples; write RUN/selections/NAME/{scores,manifest}.parquet."""
    opts = {
        "variant": variant.value if variant else None, "partition": partition, "classes": classes,
        "threshold": threshold, "eps": eps, "keep": keep.value if keep else None, "clusters": clusters,
        "of": tuple(of) if of and all(of) else None, "kmeans_sample": kmeans_sample, "metadata": metadata, "cap": cap,
    }
    eng_opts: dict[str, Any] = {"address": ray_address} if ray_address else {}
    if workers is not None:
        eng_opts["workers"] = workers
    cmd = _command(run=run, method=method, fraction=fraction, count=count, name=name, seed=seed, **opts)
    res = run_selection(
        run, method.value, fraction=fraction, count=count, name=name, seed=seed, options=opts, device=device,
        force=force, progress=RichProgress(enabled=not json_out), command=cmd, engine=engine.value,
        engine_options=eng_opts or None, memory=parse_bytes(memory, "--memory"),
    )
    if json_out:
        print_json(res.summary())
        return
    t = Table(title=f"curate select --method {method.value}", show_header=False)
    t.add_row("selection", str(res.path))
    t.add_row("pool", f"{res.pool_size:,}")
    t.add_row("kept", f"{res.kept:,} ({res.kept / res.pool_size:.1%})")
    for reason, n in res.pruned_by_reason.items():
        t.add_row(f"pruned: {reason}", f"{n:,}")
    for k, v in res.info.items():
        if isinstance(v, (int, float, str)):
            t.add_row(k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v))
    t.add_row("seconds", f"{res.seconds:.1f}")
    out.print(t)
    if res.per_partition:
        p = Table(title=f"kept per partition (largest 10 of {len(res.per_partition)})")
        for col in ("partition", "pool", "kept", "kept %"):
            p.add_column(col, justify="left" if col == "partition" else "right")
        for r in res.per_partition[:10]:
            p.add_row(r["partition"], f"{r['pool']:,}", f"{r['kept']:,}", f"{r['kept'] / r['pool']:.1%}")
        out.print(p)
