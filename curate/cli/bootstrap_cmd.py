"""``curate bootstrap --round N`` and ``curate bootstrap coreset``."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from curate.bootstrap.methods import METHODS, list_methods
from curate.cli._app import app
from curate.cli._common import err, print_json
from curate.errors import UsageError

bootstrap_app = typer.Typer(
    help="Dynamic pruning between training rounds (SCAN, InfoBatch); prints the round's manifest path.",
)
app.add_typer(bootstrap_app, name="bootstrap")

_EPILOG = """Examples:

  curate bootstrap --run runs/demo --round 0                  # round 0 of a new SCAN run

  curate bootstrap --run runs/demo --round 4 --print urls     # shard URLs holding kept samples

  curate bootstrap --run runs/demo --round 0 --method infobatch --total-rounds 10

  curate bootstrap coreset --run runs/demo --fraction 0.5     # static coreset byproduct

Knobs (method, --rho-max, --seed, --init, ...) are fixed at round 0; later rounds reuse them."""


def _fmt_reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in reasons.items()) or "-"


def _summary_table(s: dict[str, Any]) -> Table:
    t = Table(title=f"bootstrap round {s['round']} ({s['method']})")
    for col in ("phase", "ρ_cur", "pool", "kept", "pruned", "pruned by reason", "candidates"):
        t.add_column(col, justify="left" if col in ("phase", "pruned by reason", "candidates") else "right")
    cand = s.get("candidates") or {}
    rho = s.get("rho_cur")
    t.add_row(
        s["phase"],
        "-" if rho is None else f"{rho:.2f}",
        f"{s['pool']:,}",
        f"{s['kept']:,}",
        f"{s['pruned']:,}",
        _fmt_reasons(s["pruned_by_reason"]),
        ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in cand.items()) or "-",
    )
    return t


@bootstrap_app.callback(invoke_without_command=True, epilog=_EPILOG)
def bootstrap(
    ctx: typer.Context,
    run: str = typer.Option(None, "--run", "-r", help="Run folder (embedded with 'curate embed')."),
    round_: int = typer.Option(None, "--round", "-n", help="Round to decide (0, 1, 2, ... in order)."),
    method: str = typer.Option(
        None, help=f"One of: {', '.join(f'{m} ({METHODS[m].summary})' for m in list_methods())}. "
        "Default scan; fixed at round 0."
    ),
    seed: int = typer.Option(None, help="Seed of all random draws (default 0). Fixed at round 0."),
    init: str = typer.Option(None, help="Start from selection NAME (RUN/selections/NAME) or a manifest path."),
    rho_max: float = typer.Option(None, help="[scan] Share of each batch marked ill-matched (0.3)."),
    rho_min: float = typer.Option(None, help="[scan] Share of each batch marked redundant (0.3)."),
    t_cos: int = typer.Option(None, help="[scan] Mutation rounds per cycle (3)."),
    prune_td: float = typer.Option(None, help="[scan] Warm-up ends when the epoch loss improves less (0.3)."),
    warmup_rounds: int = typer.Option(None, help="[scan] Fix the warm-up length instead of the plateau rule."),
    rank_scope: str = typer.Option(None, help="[scan] Rank losses per 'batch' (default) or 'global'ly."),
    prune_mode: str = typer.Option(None, help="[scan] Drop both (default), redundant or ill_matched candidates."),
    prune_ratio: float = typer.Option(None, help="[infobatch] Share of below-mean samples dropped (0.5)."),
    delta: float = typer.Option(None, help="[infobatch] Prune in rounds < delta*total (0.875)."),
    total_rounds: int = typer.Option(None, help="[infobatch] Rounds the trainer will run (required)."),
    init_score: float = typer.Option(None, help="[infobatch] Score of a never-trained sample (3.0)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Round 0 on a run whose embed has "
                                       "pending shards (the pool is then fixed without them)."),
    print_: str = typer.Option("path", "--print", help="What to print on stdout: 'path' or 'urls'."),
    json_out: bool = typer.Option(False, "--json", help="Print the round summary as JSON instead."),
) -> None:
    """Decide round N from round N-1's losses; write RUN/manifests/round-NNNN.parquet and print its path."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None or round_ is None:
        raise UsageError("curate bootstrap needs --run RUN and --round N (see 'curate bootstrap --help')")
    if print_ not in ("path", "urls"):
        raise UsageError(f"--print must be 'path' or 'urls', got {print_!r}")
    from curate.bootstrap import bootstrap_round
    from curate.trainer.manifest_filter import shard_urls

    knobs = {
        "rho_max": rho_max, "rho_min": rho_min, "t_cos": t_cos, "prune_td": prune_td,
        "warmup_rounds": warmup_rounds, "rank_scope": rank_scope, "prune_mode": prune_mode,
        "prune_ratio": prune_ratio, "delta": delta, "total_rounds": total_rounds, "init_score": init_score,
    }
    res = bootstrap_round(run, round_, method=method, knobs=knobs, seed=seed, init=init, allow_partial=allow_partial)
    if json_out:
        print_json({**res.summary, "manifest": str(res.manifest_path)})
        return
    err.print(_summary_table(res.summary))
    lines = shard_urls(res.manifest, run=run) if print_ == "urls" else [str(res.manifest_path)]
    typer.echo("\n".join(lines))


@bootstrap_app.command(
    "coreset", epilog="Example: curate bootstrap coreset --run runs/demo --fraction 0.5 --name scan-half"
)
def coreset(
    run: str = typer.Option(..., "--run", "-r", help="Run folder with SCAN rounds."),
    fraction: float = typer.Option(..., help="Share of the pool to keep, in (0, 1]."),
    name: str = typer.Option("scan-coreset", help="Selection name (RUN/selections/NAME)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Static coreset byproduct: keep the samples least often SCAN candidates; print the manifest path."""
    from curate.bootstrap import derive_coreset

    res = derive_coreset(run, fraction, name)
    counts = res.manifest.header["counts"]
    if json_out:
        print_json({"name": res.name, "manifest": str(res.manifest_path), "prepare_rounds": res.prepare_rounds,
                    "kept": counts["kept"], "pool": counts["pool"]})
        return
    err.print(
        f"coreset {res.name}: kept {counts['kept']:,} of {counts['pool']:,} "
        f"(preparation rounds {', '.join(map(str, res.prepare_rounds))})"
    )
    typer.echo(str(res.manifest_path))
