"""``curate selections``: list a run's selections, or delete one."""

from __future__ import annotations

import typer
from rich.table import Table

from curate.cli import ui
from curate.cli.root import app
from curate.errors import UsageError
from curate.select.manage import delete_selection, list_selections, params_text

_EPILOG = (
    "Examples:\n\n"
    "  curate selections runs/demo                      # name, method, parameters, kept, pool, created\n\n"
    "  curate selections --run runs/demo --json\n\n"
    "  curate selections runs/demo --delete random-f0.3\n\n"
    "A selection is deleted only when run.json records it, its folder holds only files curate writes there, "
    "and no other selection (set algebra) or the bootstrap rounds (--init) were computed from it "
    "(docs/select.md, 'Listing and deleting selections')."
)


@app.command("selections", epilog=_EPILOG)
def selections(
    run_arg: str = typer.Argument(None, metavar="RUN", help="Run folder (or --run RUN)."),
    run: str = ui.run_option("Run folder (or as the argument).", required=False),
    delete: str = typer.Option(None, "--delete", metavar="NAME", help="Delete selection NAME safely."),
    json_out: bool = ui.json_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """List the selections of a run (name, method, parameters, kept, pool, created), or delete one."""
    if run_arg is not None and run is not None and run_arg != run:
        raise UsageError("give the run once: as RUN or as --run")
    run = run or run_arg
    if run is None:
        raise UsageError("curate selections needs a run folder: curate selections RUN")
    if delete is not None:
        res = delete_selection(run, delete, command=f"curate selections {run} --delete {delete}")
        if json_out:
            ui.print_json({"deleted": res.name, "removed": [str(p) for p in res.removed],
                        "record_only": res.record_only})
            return
        what = "its run.json record (the folder was gone)" if res.record_only else f"{len(res.removed)} files"
        ui.show(f"deleted selection {res.name}: removed {what}")
        return
    infos = list_selections(run)
    if json_out:
        ui.print_json([i.to_dict() for i in infos])
        return
    if not infos:
        ui.show(f"no selections in {run} (make one with 'curate select --run {run} --method ...')")
        return
    t = Table(title=f"selections of {run}")
    for col in ("name", "method", "parameters", "kept", "pool", "created (UTC)"):
        t.add_column(col, justify="right" if col in ("kept", "pool") else "left",
                     overflow="fold")
    for i in infos:
        name = i.name if i.status == "ok" else f"{i.name} ({i.status})"
        t.add_row(name, i.method or "-", params_text(i.params) or "-",
                  "-" if i.kept is None else f"{i.kept:,}", "-" if i.pool is None else f"{i.pool:,}",
                  (i.created or "-")[:16].replace("T", " "))
    ui.report(t)
