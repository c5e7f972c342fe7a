"""``curate report``: a self-contained HTML report of a run."""

from __future__ import annotations

import typer

from curate.cli import ui
from curate.cli.root import app
from curate.report import ReportOptions, build_report

_EPILOG = (
    "Sections: overview; score distributions (CLIP score, each selection's score, ClipCov gain); kept share per "
    "partition; bootstrap rounds (kept, pruned by reason, mean loss, rho); galleries of kept and pruned samples "
    "with captions, drop reasons and, for synthetic shards, the ground truth. A section whose stage has not run "
    "yet says so.\n\n"
    "Examples:\n\n"
    "  curate report --run runs/demo       # → runs/demo/reports/report.html\n\n"
    "  curate report --run runs/demo --out /tmp/demo.html --thumbs 12\n\n"
    "  curate report --run runs/demo --selection clipcov --selection random --json"
)


@app.command("report", epilog=_EPILOG)
def report(
    run: str = ui.run_option("Run folder (any stage: embed, select, bootstrap)."),
    out_path: str = ui.out_option("HTML file to write, or a folder for report.html (default RUN/reports/report.html)."),
    selection: list[str] = typer.Option(None, "--selection", "-s", help="Selection to show (repeat; default all)."),
    thumbs: int = typer.Option(24, help="Samples per gallery, half kept and half pruned (1..48)."),
    thumb_size: int = typer.Option(128, help="Longest side of a thumbnail in pixels (32..256)."),
    max_shards: int = typer.Option(4, help="Shards read for the galleries (the samples shown come from them)."),
    max_galleries: int = typer.Option(6, help="Selection galleries shown (plus the latest pruning round)."),
    seed: int = typer.Option(0, help="Seed of the samples the galleries show."),
    force: bool = ui.force_option("Replace an existing --out file that curate did not write."),
    json_out: bool = ui.json_option("Print a JSON summary (path, sections, counts)."),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Write one self-contained HTML file (images inlined) with plots and sample galleries; print its path."""
    options = ReportOptions(thumbs=thumbs, thumb_size=thumb_size, max_shards=max_shards,
                            max_galleries=max_galleries, seed=seed)
    res = build_report(run, out_path, options=options, selections=list(selection) if selection else None,
                       force=force)
    if json_out:
        ui.print_json(res.summary())
        return
    ui.result(str(res.path))
