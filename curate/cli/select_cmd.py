"""``curate select``: static coreset selection over a run's embeddings."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from typer.core import TyperCommand

from curate.cli import ui
from curate.cli.root import app
from curate.engines import list_engines
from curate.errors import UsageError
from curate.select import SELECTORS, list_selectors, plan_selection, run_selection
from curate.select.base import parse_bytes

Method = ui.choices("Method", list_selectors())
Variant = ui.choices("Variant", ("reference", "greedy"))
EngineName = ui.choices("EngineName", list_engines())
Keep = ui.choices("Keep", ("farthest", "closest", "random"))

_CLIPCOV = "clipcov options"
_CLIP_SCORE = "clip-score options"
_SEMDEDUP = "semdedup options"
_NEGCLIP = "negcliploss options"
_TARGET = "normsim, image-filter options"
_METACLIP = "metaclip options"
_RANDOM = "random options"
_BUDGET = "Budgets"
_ALGEBRA = "intersect, union, difference, combine (--of required)"
_ENGINE = "Engine"

_PARTITION = (
    "clipcov keeps a share of each pseudo-class, so the classes decide what it covers. imagenet (the default) "
    "labels each sample zero-shot with the 1000 ImageNet classes and the run's model: right for web photos, "
    "meaningless for data far from ImageNet. --classes FILE does the same with your own class names (one per "
    "line): use it whenever the data has a known label set (shards made by 'curate shards make-sample' come "
    "with classnames.txt). kmeans:K clusters the image embeddings into K groups: for data without class names. "
    "Default names include the partition (clipcov-km100-f0.3). See docs/select.md."
)
_METHODS = "\n".join(f"  {n}: {c.summary}\n" for n, c in SELECTORS.items())
_EPILOG = f"""Methods:\n
{_METHODS}\n
Partition (clipcov): {_PARTITION}\n
Examples:\n
  curate select --run runs/demo --method clipcov --fraction 0.3\n
  curate select --run runs/demo --method clipcov --fraction 0.3 --classes shards/sample/classnames.txt\n
  curate select --run runs/demo --method clipcov --fraction 0.3 --partition kmeans:100 --variant greedy\n
  curate select --run runs/demo --method clip-score --threshold 0.28\n
  curate select --run runs/demo --method semdedup --eps 0.05 --keep farthest\n
  curate select --run runs/demo --method random --count 1000 --seed 1\n
  curate select --run runs/demo --method random --fraction 0.3 --within negcliploss-f0.55\n
  curate select --run runs/demo --method negcliploss --fraction 0.3 --repeats 10 --batch-size 32768\n
  curate select --run runs/demo --method normsim --fraction 0.5 --target runs/imagenet-train --norm inf\n
  curate select --run runs/demo --method image-filter --target runs/imagenet-train --clusters 1000\n
  curate select --run runs/demo --method intersect --of image-filter-imagenet-train clip-score-f0.3\n
  curate select --run runs/demo --method metaclip --metadata metadata.json --cap 20000 --seed 1\n
  curate select --run runs/demo --method metaclip --metadata entries.txt --fraction 0.3\n
  curate select --run runs/demo --method clipcov --fraction 0.3 --engine ray --ray-address auto\n
  curate select --run runs/demo --method intersect --of clip-score-t0.28 clipcov-f0.3\n
  curate select --run runs/demo --method difference --of clipcov-f0.3 clip-score-f0.3 random-f0.3\n
Every method and option, and the decisions taken where the papers' code leaves a choice open: docs/select.md."""


class _SelectCommand(TyperCommand):
    """``--of A B C``: names after the first land in a hidden argument; keep it out of the usage line."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p for p in super().collect_usage_pieces(ctx) if p.strip("[].")]


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


def _class_list_hint(run: str) -> None:
    """One line on stderr when the run's shards come with a class list that the default partition ignores."""
    from curate.select.partition import shard_class_list

    found = shard_class_list(run)
    if found is not None:
        ui.show(f"hint: the shards of {run} come with a class list ({found}); clipcov labels samples with "
                f"ImageNet's 1000 classes by default: pass --classes {found} to use it "
                "(or --partition imagenet to keep ImageNet)")


@app.command("select", epilog=_EPILOG, cls=_SelectCommand)
def select(
    run: str = ui.run_option("Run folder with embeddings (from 'curate embed')."),
    method: Method = typer.Option(..., "--method", "-m", metavar="METHOD", help="Selection method (listed below)."),
    fraction: float = typer.Option(None, "--fraction", "-f", help="Keep int(pool × F) samples, 0 < F <= 1."),
    count: int = typer.Option(None, "--count", "-n", help="Keep K samples."),
    name: str = typer.Option(None, "--name", help="Selection name in RUN/selections/ (default: the method, the "
                             "options that change the result, the budget: clipcov-greedy-km20-f0.3)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (random, k-means, metaclip draws)."),
    variant: Variant = typer.Option(None, help="reference (the reference code's update schedule, default) or "
                                    "greedy (exact gains).", rich_help_panel=_CLIPCOV),
    partition: str = typer.Option(None, help="The pseudo-classes: imagenet (zero-shot ImageNet-1k labels, default; "
                                  "for web photos) or kmeans:K (K clusters; data without class names). See "
                                  "'Partition' below. Also the partitions of --per-partition, which also takes "
                                  "selection:NAME (the partition column of an earlier selection, e.g. metaclip's "
                                  "metadata entries).",
                                  rich_help_panel=_CLIPCOV),
    classes: str = typer.Option(None, help="File of class names (one per line) for zero-shot labels instead of "
                                "ImageNet's (data with a known label set).", rich_help_panel=_CLIPCOV),
    cross_sample: int = typer.Option(None, help="Estimate cross terms from M random members of each class "
                                     "(unbiased; default off: exact, O(n_k²) per class). See docs/scale.md.",
                                     rich_help_panel=_CLIPCOV),
    dtype: str = typer.Option(None, help="Inputs of the similarity products: auto (float16 on a GPU, float32 "
                              "on the CPU), float32, float64, float16, bfloat16.", rich_help_panel=_CLIPCOV),
    device: str = typer.Option("auto", help="clipcov, negcliploss: auto, cpu, cuda, cuda:N.",
                               rich_help_panel=_CLIPCOV),
    threshold: float = typer.Option(None, help="clip-score, negcliploss, normsim, combine: keep score >= T "
                                    "instead of a budget (clip-score: DataComp's rule).", rich_help_panel=_CLIP_SCORE),
    eps: float = typer.Option(None, help="Drop samples with cosine > 1 - EPS to a kept cluster mate.",
                              rich_help_panel=_SEMDEDUP),
    keep: Keep = typer.Option(None, help="Which near-duplicate survives (default farthest).",
                              rich_help_panel=_SEMDEDUP),
    clusters: int = typer.Option(None, help="k-means clusters (semdedup: default sqrt(pool); image-filter: "
                                 "pool/128, at most 100,000).", rich_help_panel=_SEMDEDUP),
    kmeans_sample: int = typer.Option(None, help="Rows k-means trains on (semdedup, image-filter, kmeans:K "
                                      "partitions): a seeded sample; default 256 per cluster, at most 500,000.",
                                      rich_help_panel=_SEMDEDUP),
    repeats: int = typer.Option(None, help="Random batches each sample is scored in (default 10).",
                                rich_help_panel=_NEGCLIP),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size of the contrastive term (default 32768).",
                                   rich_help_panel=_NEGCLIP),
    temperature: float = typer.Option(None, help="Softmax temperature (default: 1/exp(logit_scale) of the run's "
                                      "model).", rich_help_panel=_NEGCLIP),
    target: str = typer.Option(None, help="normsim, image-filter: run folder or embeddings .parquet of the target "
                               "images (embedded with the run's model).", rich_help_panel=_TARGET),
    norm: str = typer.Option(None, help="normsim: inf (largest cosine to a target image, default) or 2.",
                             rich_help_panel=_TARGET),
    metadata: str = typer.Option(None, help="Metadata entries, one per line (or MetaCLIP's .json list).",
                                 rich_help_panel=_METACLIP),
    cap: float = typer.Option(None, help="Per-entry cap t (MetaCLIP: 20000 for 400M) instead of a budget.",
                              rich_help_panel=_METACLIP),
    within: str = typer.Option(None, help="random: draw only among the samples kept by this earlier selection "
                               "(filter, then sample; see the README's recipe).", rich_help_panel=_RANDOM),
    of: list[str] = typer.Option(None, "--of", metavar="A B [C ...]", help="Selections, space- or comma-separated "
                                 "(set algebra: two or more; difference: A minus all others; combine: their "
                                 "scores).", rich_help_panel=_ALGEBRA),
    weights: str = typer.Option(None, help="combine: one weight per --of selection, e.g. 1,0.5 (default 1 each).",
                                rich_help_panel=_ALGEBRA),
    column: list[str] = typer.Option(None, "--column", metavar="NAME:COLUMN", help="combine: the score column of a "
                                     "selection (default 'score'; e.g. clipcov-f0.3:gain). Repeatable.",
                                     rich_help_panel=_ALGEBRA),
    normalize: str = typer.Option(None, help="combine: z (mean 0, sd 1, default) or rank (fraction of the pool at "
                                  "or below).", rich_help_panel=_ALGEBRA),
    per_partition: str = typer.Option(None, help="Budgets per partition: proportional, sqrt or cap:T, so that "
                                      "every partition keeps its share (methods without partitions take "
                                      "--partition/--classes). See docs/select.md.", rich_help_panel=_BUDGET),
    engine: EngineName = typer.Option("local", help="Where the tasks run: local or ray (the same result).",
                                      rich_help_panel=_ENGINE),
    workers: int = typer.Option(None, help="--engine local: task processes (default 1: this process).",
                                rich_help_panel=_ENGINE),
    memory: str = typer.Option("1G", help="Memory a process may hold besides one partition's embeddings (e.g. "
                               "512M, 4G); above it rankings spill to disk. The same result at any value.",
                               rich_help_panel=_ENGINE),
    ray_address: str = typer.Option(None, help="--engine ray: cluster address (auto, ray://HOST:10001); "
                                    "default: start a local Ray.", rich_help_panel=_ENGINE),
    force: bool = ui.force_option("Replace a selection of that name made with other options or on another pool."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Select from a run whose embed has pending "
                                       "shards (recorded in the manifest as a partial pool)."),
    json_out: bool = ui.json_option(),
    dry_run: bool = ui.dry_run_option(),
    quiet: bool = ui.quiet_option(),
    more_of: list[str] = typer.Argument(None, hidden=True, metavar=""),  # the B C of '--of A B C'
) -> None:
    """Select a subset of a run's samples; write RUN/selections/NAME/{scores,manifest}.parquet, print the folder."""
    if more_of and not of:
        raise UsageError(f"unexpected argument {more_of[0]!r} (set algebra takes its names after --of)")
    opts = {
        "variant": variant.value if variant else None, "partition": partition, "classes": classes,
        "threshold": threshold, "eps": eps, "keep": keep.value if keep else None, "clusters": clusters,
        "of": (*of, *(more_of or ())) if of else None, "kmeans_sample": kmeans_sample,
        "cross_sample": cross_sample, "weights": weights, "columns": tuple(column) if column else None,
        "normalize": normalize, "repeats": repeats, "batch_size": batch_size, "temperature": temperature,
        "target": target, "norm": norm, "dtype": dtype, "metadata": metadata, "cap": cap, "within": within,
    }
    if dry_run:
        plan = plan_selection(run, method.value, fraction=fraction, count=count, name=name, seed=seed, options=opts,
                              force=force, allow_partial=allow_partial, per_partition=per_partition,
                              memory=parse_bytes(memory, "--memory"))
        if json_out:
            ui.print_json(plan.summary())
            return
        keep_n = "as its options decide" if plan.budget is None else f"{plan.budget:,}"
        existing = {"none": "", "same": " (it exists with the same parameters: rewritten)",
                    "replaced": " (it exists with other parameters: replaced, --force)"}[plan.existing]
        ui.show(f"dry run: would select with {plan.method} from a pool of {plan.pool_size:,} samples, keep {keep_n}, "
                f"and write {plan.path}{existing}")
        return
    eng_opts: dict[str, Any] = {"address": ray_address} if ray_address else {}
    if workers is not None:
        eng_opts["workers"] = workers
    cmd = _command(run=run, method=method, fraction=fraction, count=count, name=name, seed=seed,
                   per_partition=per_partition, **opts)
    if method.value == "clipcov" and partition is None and classes is None:
        _class_list_hint(run)
    res = run_selection(
        run, method.value, fraction=fraction, count=count, name=name, seed=seed, options=opts, device=device,
        force=force, progress=ui.progress(), command=cmd, engine=engine.value,
        engine_options=eng_opts or None, allow_partial=allow_partial, memory=parse_bytes(memory, "--memory"),
        per_partition=per_partition,
    )
    if json_out:
        ui.print_json(res.summary())
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
    ui.show(t)
    if res.per_partition:
        p = Table(title=f"kept per partition (largest 10 of {len(res.per_partition)})")
        for col in ("partition", "pool", "kept", "kept %"):
            p.add_column(col, justify="left" if col == "partition" else "right")
        for r in res.per_partition[:10]:
            p.add_row(r["partition"], f"{r['pool']:,}", f"{r['kept']:,}", f"{r['kept'] / r['pool']:.1%}")
        ui.show(p)
    ui.result(str(res.path))
