"""``curate bootstrap --round N`` and ``curate bootstrap coreset``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from curate.bootstrap.methods import METHODS, PRUNE_MODES, RANK_SCOPES, list_methods
from curate.cli import ui
from curate.cli.root import app
from curate.engines import list_engines
from curate.errors import UsageError

Method = ui.choices("Method", list_methods())
RankScope = ui.choices("RankScope", RANK_SCOPES)
PruneMode = ui.choices("PruneMode", PRUNE_MODES)
PrintWhat = ui.choices("PrintWhat", ("path", "urls"))
EngineName = ui.choices("EngineName", list_engines())

_SCAN = "SCAN knobs (--method scan, the default; none required)"
_INFOBATCH = "InfoBatch knobs (--method infobatch; --total-rounds required)"
_OUTPUT = "Output"
_ENGINE = "Where the passes over the loss table run"

bootstrap_app = typer.Typer(
    help="Dynamic pruning between training rounds (SCAN, InfoBatch); prints the round's manifest path.",
)
app.add_typer(bootstrap_app, name="bootstrap")

_METHODS = "\n".join(f"  {m}: {METHODS[m].summary}\n" for m in list_methods())
_EPILOG = f"""Methods:\n
{_METHODS}\n
Examples:\n
  curate bootstrap --run runs/demo --round 0                  # round 0 of a new SCAN run\n
  curate bootstrap --run runs/demo --round 4 --print urls     # shard URLs holding kept samples\n
  curate bootstrap --run runs/demo --round 0 --method infobatch --total-rounds 10\n
  curate bootstrap coreset --run runs/demo --fraction 0.5     # static coreset byproduct\n
  curate bootstrap --run runs/demo --reset                    # start the rounds over (losses are kept)\n
Knobs (method, --rho-max, --seed, --init, ...) are fixed at round 0; later rounds reuse them.
Protocol, knobs and the decisions taken where the paper's code is ambiguous: docs/bootstrap.md."""


def _fmt_reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in reasons.items()) or "-"


def _summary_table(s: dict[str, Any], dry_run: bool = False) -> Table:
    t = Table(title=f"bootstrap round {s['round']} ({s['method']}){' — dry run, nothing written' if dry_run else ''}")
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


def _value(choice: Any) -> Any:
    return None if choice is None else choice.value


@bootstrap_app.callback(invoke_without_command=True, epilog=_EPILOG)
def bootstrap(
    ctx: typer.Context,
    run: str = ui.run_option("Run folder (embedded with 'curate embed').", required=False),
    round_: int = typer.Option(None, "--round", help="Round to decide (0, 1, 2, ... in order)."),
    method: Method = typer.Option(None, "--method", "-m", help="Pruning method (listed below). Default scan; "
                                  "fixed at round 0."),
    seed: int = typer.Option(None, help="Seed of all random draws (default 0). Fixed at round 0."),
    init: str = typer.Option(None, help="Start from selection NAME (RUN/selections/NAME) or a manifest path."),
    rho_max: float = typer.Option(None, help="Share of each batch marked ill-matched (0.3).", rich_help_panel=_SCAN),
    rho_min: float = typer.Option(None, help="Share of each batch marked redundant (0.3).", rich_help_panel=_SCAN),
    t_cos: int = typer.Option(None, help="Mutation rounds per cycle (3).", rich_help_panel=_SCAN),
    prune_td: float = typer.Option(None, help="Warm-up ends when the epoch loss improves less (0.3).",
                                   rich_help_panel=_SCAN),
    warmup_rounds: int = typer.Option(None, help="Fix the warm-up length instead of the plateau rule.",
                                      rich_help_panel=_SCAN),
    rank_scope: RankScope = typer.Option(None, help="Rank losses per recorded batch (default) or over the round.",
                                         rich_help_panel=_SCAN),
    prune_mode: PruneMode = typer.Option(None, help="Candidates mutation rounds drop (default both).",
                                         rich_help_panel=_SCAN),
    total_rounds: int = typer.Option(None, help="Required: rounds the trainer will run.", rich_help_panel=_INFOBATCH),
    prune_ratio: float = typer.Option(None, help="Share of below-mean samples dropped (0.5).",
                                      rich_help_panel=_INFOBATCH),
    delta: float = typer.Option(None, help="Prune rounds < floor(delta × total rounds), then full data (0.875).",
                                rich_help_panel=_INFOBATCH),
    init_score: float = typer.Option(None, help="Score of a never-trained sample (3.0).", rich_help_panel=_INFOBATCH),
    print_: PrintWhat = typer.Option("path", "--print", help="What to print on stdout: the manifest path or the "
                                     "shard URLs holding kept samples.", rich_help_panel=_OUTPUT),
    json_out: bool = typer.Option(False, "--json", help="Print the round summary as JSON instead.",
                                  rich_help_panel=_OUTPUT),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Round 0 on a run whose embed has "
                                       "pending shards (the pool is then fixed without them)."),
    reset: bool = typer.Option(False, "--reset", help="Start the rounds over: remove what bootstrap wrote "
                               "(RUN/bootstrap, RUN/manifests/round-*; losses are kept); with --round 0, then "
                               "decide round 0.", rich_help_panel=_OUTPUT),
    engine: EngineName = typer.Option("local", help="local or ray (the same files).", rich_help_panel=_ENGINE),
    workers: int = typer.Option(None, help="--engine local: task processes (default 1: this process).",
                                rich_help_panel=_ENGINE),
    ray_address: str = typer.Option(None, help="--engine ray: cluster address (auto, ray://HOST:10001); "
                                    "default: start a local Ray.", rich_help_panel=_ENGINE),
    dry_run: bool = ui.dry_run_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Decide round N from round N-1's losses; write RUN/manifests/round-NNNN.parquet and print its path."""
    if ctx.invoked_subcommand is not None:
        return
    if reset:
        if run is None or round_ not in (None, 0):
            raise UsageError("--reset needs --run RUN and takes no --round other than 0")
        if dry_run:
            raise UsageError("--reset removes files: it takes no --dry-run (see 'curate bootstrap --help')")
        _reset(run, json_out and round_ is None)
        if round_ is None:
            return
    if run is None or round_ is None:
        raise UsageError("curate bootstrap needs --run RUN and --round N (see 'curate bootstrap --help')")
    from curate.bootstrap import bootstrap_round
    from curate.io.manifest import shard_urls

    knobs = {
        "rho_max": rho_max, "rho_min": rho_min, "t_cos": t_cos, "prune_td": prune_td,
        "warmup_rounds": warmup_rounds, "rank_scope": _value(rank_scope), "prune_mode": _value(prune_mode),
        "prune_ratio": prune_ratio, "delta": delta, "total_rounds": total_rounds, "init_score": init_score,
    }
    eng_opts: dict[str, Any] = {"address": ray_address} if ray_address else {}
    if workers is not None:
        eng_opts["workers"] = workers
    res = bootstrap_round(run, round_, method=_value(method), knobs=knobs, seed=seed, init=init, dry_run=dry_run,
                          allow_partial=allow_partial, engine=engine.value, engine_options=eng_opts or None,
                          progress=ui.progress())
    if json_out:
        ui.print_json({**res.summary, "manifest": str(res.manifest_path), "dry_run": dry_run})
        return
    ui.show(_summary_table(res.summary, dry_run))
    if dry_run:
        ui.show(f"dry run: would write {res.manifest_path}")
        return
    ui.result(*(shard_urls(res.manifest, run=run) if print_.value == "urls" else [str(res.manifest_path)]))


def _reset(run: str, json_out: bool) -> None:
    from curate.bootstrap import reset_rounds

    res = reset_rounds(run, command=f"curate bootstrap --run {run} --reset")
    if json_out:
        ui.print_json({"removed": [str(p) for p in res.removed], "kept": [str(p) for p in res.kept],
                       "losses_kept": [str(p) for p in res.losses]})
        return
    by_folder: dict[Path, list[str]] = {}
    for p in res.removed:
        by_folder.setdefault(p.parent, []).append(p.name)
    for folder, names in by_folder.items():
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        ui.show(f"removed {folder}/: {len(names)} file{'s' if len(names) != 1 else ''} ({span})")
    if not res.removed:
        ui.show(f"{run} has no bootstrap rounds: nothing to remove")
    for p in res.kept:
        ui.show(f"kept {p} (not written by bootstrap)")
    if res.losses:
        n = len(res.losses)
        ui.show(f"kept {Path(run) / 'losses'}/ ({n} round{'s' if n != 1 else ''} of per-sample losses, the "
                "trainer's data: a round the trainer records again replaces them)")


@bootstrap_app.command(
    "coreset", epilog="Example: curate bootstrap coreset --run runs/demo --fraction 0.5 --name scan-half"
)
def coreset(
    run: str = ui.run_option("Run folder with SCAN rounds."),
    fraction: float = typer.Option(..., "--fraction", "-f", help="Share of the pool to keep, in (0, 1]."),
    name: str = typer.Option("scan-coreset", help="Selection name (RUN/selections/NAME)."),
    force: bool = ui.force_option("Replace a selection of that name made otherwise (another method or fraction)."),
    json_out: bool = ui.json_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Static coreset byproduct: keep the samples least often SCAN candidates; print the manifest path."""
    from curate.bootstrap import derive_coreset

    res = derive_coreset(run, fraction, name, force=force)
    counts = res.manifest.header["counts"]
    if json_out:
        ui.print_json({"name": res.name, "manifest": str(res.manifest_path), "prepare_rounds": res.prepare_rounds,
                       "kept": counts["kept"], "pool": counts["pool"]})
        return
    ui.show(f"coreset {res.name}: kept {counts['kept']:,} of {counts['pool']:,} "
            f"(preparation rounds {', '.join(map(str, res.prepare_rounds))})")
    ui.result(str(res.manifest_path))
