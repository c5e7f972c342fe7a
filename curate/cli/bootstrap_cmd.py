"""``curate bootstrap --round N`` and ``curate bootstrap coreset``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from curate.bootstrap.methods import METHODS, list_methods
from curate.cli._app import app
from curate.cli._common import RichProgress, err, print_json
from curate.engines import list_engines
from curate.errors import UsageError

EngineName = enum.Enum("EngineName", {n: n for n in list_engines()}, type=str)  # type: ignore[misc]

bootstrap_app = typer.Typer(
    help="Dynamic pruning between training rounds (SCAN, InfoBatch); prints the round's manifest path.",
)
app.add_typer(bootstrap_app, name="bootstrap")

_EPILOG = """Examples:

  curate bootstrap --run runs/demo --round 0                  # round 0 of a new SCAN run

  curate bootstrap --run runs/demo --round 4 --print urls     # shard URLs holding kept samples

  curate bootstrap --run runs/demo --round 0 --method infobatch --total-rounds 10

  curate bootstrap coreset --run runs/demo --fraction 0.5     # static coreset byproduct

  curate bootstrap --run runs/demo --reset                    # start the rounds over (losses are kept)

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
    delta: float = typer.Option(None, help="[infobatch] Prune rounds < floor(delta*total), then full data (0.875)."),
    total_rounds: int = typer.Option(None, help="[infobatch] Rounds the trainer will run (required)."),
    init_score: float = typer.Option(None, help="[infobatch] Score of a never-trained sample (3.0)."),
    print_: str = typer.Option("path", "--print", help="What to print on stdout: 'path' or 'urls'."),
    reset: bool = typer.Option(False, "--reset", help="Start the rounds over: remove what bootstrap wrote "
                               "(RUN/bootstrap, RUN/manifests/round-*; losses are kept); with --round 0, then "
                               "decide round 0."),
    json_out: bool = typer.Option(False, "--json", help="Print the round summary as JSON instead."),
    engine: EngineName = typer.Option("local", help="Where the passes over the loss table run: local or ray "
                                      "(same files)."),
    workers: int = typer.Option(None, help="--engine local: task processes (default 1: this process)."),
    ray_address: str = typer.Option(None, help="--engine ray: cluster address (auto, ray://HOST:10001); "
                                    "default: start a local Ray."),
) -> None:
    """Decide round N from round N-1's losses; write RUN/manifests/round-NNNN.parquet and print its path."""
    if ctx.invoked_subcommand is not None:
        return
    if reset:
        if run is None or round_ not in (None, 0):
            raise UsageError("--reset needs --run RUN and takes no --round other than 0")
        _reset(run, json_out and round_ is None)
        if round_ is None:
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
    eng_opts: dict[str, Any] = {"address": ray_address} if ray_address else {}
    if workers is not None:
        eng_opts["workers"] = workers
    res = bootstrap_round(run, round_, method=method, knobs=knobs, seed=seed, init=init, engine=engine.value,
                          engine_options=eng_opts or None, progress=RichProgress(enabled=not json_out))
    if json_out:
        print_json({**res.summary, "manifest": str(res.manifest_path)})
        return
    err.print(_summary_table(res.summary))
    lines = shard_urls(res.manifest, run=run) if print_ == "urls" else [str(res.manifest_path)]
    typer.echo("\n".join(lines))


def _reset(run: str, json_out: bool) -> None:
    from curate.bootstrap import reset_rounds

    res = reset_rounds(run, command=f"curate bootstrap --run {run} --reset")
    if json_out:
        print_json({"removed": [str(p) for p in res.removed], "kept": [str(p) for p in res.kept],
                    "losses_kept": [str(p) for p in res.losses]})
        return
    by_folder: dict[Path, list[str]] = {}
    for p in res.removed:
        by_folder.setdefault(p.parent, []).append(p.name)
    for folder, names in by_folder.items():
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        err.print(f"removed {folder}/: {len(names)} file{'s' if len(names) != 1 else ''} ({span})",
                  highlight=False, soft_wrap=True)
    if not res.removed:
        err.print(f"{run} has no bootstrap rounds: nothing to remove", highlight=False, soft_wrap=True)
    for p in res.kept:
        err.print(f"kept {p} (not written by bootstrap)", highlight=False, soft_wrap=True)
    if res.losses:
        n = len(res.losses)
        err.print(f"kept {Path(run) / 'losses'}/ ({n} round{'s' if n != 1 else ''} of per-sample losses, the "
                  "trainer's data: a round the trainer records again replaces them)", highlight=False, soft_wrap=True)


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
