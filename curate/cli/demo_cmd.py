"""``curate demo``."""

from __future__ import annotations

import typer
from rich.table import Table

from curate.cli import ui
from curate.cli.root import app
from curate.demo import DemoConfig, run_demo


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


@app.command("demo", epilog="Example: curate demo --out demo-run   (what 'make demo' runs)")
def demo(
    out_dir: str = ui.out_option("Folder to write the demo run into (a previous demo there is replaced).",
                                 default="demo-run"),
    sample: str = typer.Option(None, help="Sample world (train/, test/, classnames.txt); default shards/sample."),
    model: str = typer.Option("sample", help="Model (default: the built-in tiny CLIP)."),
    fraction: float = typer.Option(0.3, help="Budget of every static selection."),
    rounds: int = typer.Option(6, help="Bootstrap rounds (epochs) of the reference trainer; 0 skips training."),
    warmup_rounds: int = typer.Option(1, help="SCAN warm-up rounds before the first preparation round."),
    batch_size: int = typer.Option(128, help="Training batch size."),
    workers: int = typer.Option(2, help="Decode workers for embedding."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the HTML report."),
    json_out: bool = ui.json_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Run embed → select → export → SCAN rounds with the reference trainer → report on the sample, offline.

    Tables go to stderr; stdout is the run folder (or the JSON summary with --json).
    """
    cfg = DemoConfig(out=out_dir, sample=sample, model=model, fraction=fraction, rounds=rounds,
                     warmup_rounds=warmup_rounds, batch_size=batch_size, workers=workers, seed=seed, report=report)
    res = run_demo(cfg, ui.progress(), log=None if json_out else ui.show)
    if json_out:
        ui.print_json(res.summary())
        return
    t = Table(title=f"selections at {fraction:.0%} of the pool: ground truth of the kept samples")
    for col in ("selection", "kept", "mismatch", "dups", "uninf", "entropy", "min class"):
        t.add_column(col, justify="left" if col == "selection" else "right")
    for s in res.selections:
        t.add_row(s["name"], f"{s['kept']:,}", _pct(s["mismatched"]), _pct(s["duplicates"]),
                  _pct(s["uninformative"]), f"{s['entropy']:.3f}", _pct(s["min_share"]))
    ui.show(t)
    if res.rounds:
        r = Table(title="SCAN rounds with the reference trainer")
        for col in ("round", "phase", "trained on", "mean loss", "seconds"):
            r.add_column(col, justify="left" if col == "phase" else "right")
        for row in res.rounds:
            r.add_row(str(row["round"]), row["phase"], f"{row['kept']:,}", f"{row['mean_loss']:.3f}",
                      f"{row['seconds']:.1f}")
        ui.show(r)
    c = res.candidates
    if c:
        ui.show(f"SCAN candidates (rounds {c['rounds']}): {_pct(c['ill_matched_mismatched_share'])} of "
                  f"{c['ill_matched']:,} ill-matched have a mismatched caption (pool: "
                  f"{_pct(c['pool_mismatched_share'])}); {_pct(c['redundant_mismatched_share'])} of "
                  f"{c['redundant']:,} redundant do.")
    z = res.zero_shot
    if z:
        after = f" → {z['after']:.1%} after {len(res.rounds)} rounds" if "after" in z else ""
        ui.show(f"zero-shot accuracy on the held-out split: {z['before']:.1%}{after} (chance {z['chance']:.1%})")
    if res.report:
        ui.show(f"report: {res.report}")
    ui.show(f"done in {res.seconds:.0f}s; run folder: {res.run}")
    ui.result(str(res.run))
