"""``curate inspect``."""

from __future__ import annotations

import typer
from rich.table import Table

from curate.cli import ui
from curate.cli.root import app
from curate.errors import UsageError
from curate.inspect import inspect_run


def _histogram(hist: dict, width: int = 40) -> list[str]:
    counts, edges = hist.get("counts", []), hist.get("edges", [])
    top = max(counts) if counts else 0
    return [
        f"{edges[i]:+.3f} .. {edges[i + 1]:+.3f} | {'█' * (round(c / top * width) if top else 0)} {c}"
        for i, c in enumerate(counts)
    ]


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@app.command("inspect", epilog="Examples: curate inspect runs/demo --json   ·   curate inspect --run runs/demo")
def inspect(
    run_arg: str = typer.Argument(None, metavar="RUN", help="Run folder (or --run RUN)."),
    run: str = ui.run_option("Run folder (or as the argument).", required=False),
    json_out: bool = ui.json_option("Print the summary as JSON."),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Summarise a run: shards, samples, drops by reason, model, CLIP-score distribution (on stdout)."""
    if run_arg is not None and run is not None and run_arg != run:
        raise UsageError(f"two run folders given ({run_arg} and --run {run}); give one")
    run = run or run_arg
    if run is None:
        raise UsageError("curate inspect needs a run folder: 'curate inspect RUN' or 'curate inspect --run RUN'")
    info = inspect_run(run)
    if json_out:
        ui.print_json(info)
        return
    t = Table(title=f"run {info['run']}", show_header=False)
    m = info["model"]
    t.add_row("model", f"{m['model']} ({m['arch']}), pretrained={m['pretrained']}, dim={info['dim']}, "
              f"precision={m['precision']}")
    sh = info["shards"]
    t.add_row("shards", f"{sh['embedded']} embedded of {sh['total']}" + (f", pending: {len(sh['pending'])}"
                                                                          if sh["pending"] else ""))
    if sh["changed"]:
        t.add_row("  changed since embedding", f"{len(sh['changed'])}: {_names(sh['changed'])} "
                  "(stale; 'curate embed ... --refresh' re-embeds them)")
    if sh["missing"]:
        t.add_row("  input missing", f"{len(sh['missing'])}: {_names(sh['missing'])}")
    s = info["samples"]
    t.add_row("samples", f"{s['embedded']:,} embedded ({s['with_text']:,} with text) of {s['seen']:,} seen; "
              f"{s['dropped']:,} dropped")
    for k, v in info["dropped_by_reason"].items():
        t.add_row(f"  dropped: {k}", f"{v:,}")
    for k, v in info["shard_problems"].items():
        t.add_row(f"  shard problem: {k}", f"{v:,}")
    cs = info["clip_score"]
    if cs["mean"] is not None:
        t.add_row("clip score", f"mean {cs['mean']:.3f} ± {cs['std']:.3f}, median {cs['p50']:.3f}, "
                  f"range [{cs['min']:.3f}, {cs['max']:.3f}]")
    if info["selections"]:
        t.add_row("selections", ", ".join(info["selections"]))
    if info["rounds"]:
        t.add_row("bootstrap rounds", ", ".join(map(str, info["rounds"])))
    ui.report(t)
    if cs["mean"] is not None:
        ui.report("CLIP score histogram", *_histogram(cs["histogram"]))
