"""``curate shards make-sample | validate``."""

from __future__ import annotations

import typer
from rich.table import Table

from curate.cli import ui
from curate.cli.root import app
from curate.errors import CurateError, UsageError
from curate.io.shards import DEFAULT_MAX_PIXELS, DROP_REASONS, SHARD_PROBLEMS

shards_app = typer.Typer(help="Make and check WebDataset shards (no model needed).", no_args_is_help=True)
app.add_typer(shards_app, name="shards")


@shards_app.command("make-sample", epilog="Example: curate shards make-sample --out /tmp/world --seed 1")
def make_sample(
    out_dir: str = ui.out_option("Folder to write train/ and test/ shards into.", required=True),
    seed: int = typer.Option(0, help="Seed; the same seed gives bit-identical shards."),
    n_train: int = typer.Option(3000, help="Training-pool samples (with defects)."),
    json_out: bool = ui.json_option("Print the world summary as JSON."),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Generate the deterministic synthetic image-caption world with ground-truth defects; print the folder."""
    from curate.world import make_sample as _make

    if n_train < 1:
        raise CurateError("--n-train must be >= 1")
    summary = _make(out_dir, seed=seed, n_train=n_train)
    if json_out:
        ui.print_json(summary)
    else:
        ui.show(f"wrote the synthetic world to {out_dir} (seed {seed})")
        ui.result(out_dir)


@shards_app.command("validate", epilog="Example: curate shards validate 'data/{00000..00099}.tar' --json")
def validate(
    shards: list[str] = typer.Argument(..., help="Shard spec(s)."),
    workers: int = typer.Option(2, help="Parallel processes."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip image decoding (faster, finds less)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any shard has a problem."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Images with more pixels count as decompression bombs."),
    json_out: bool = ui.json_option("Print per-shard reports as JSON."),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Report per shard: samples and problems by kind (on stdout)."""
    from curate.io.validate import validate_shards

    if workers < 1 or max_pixels < 1:
        raise UsageError("--workers and --max-pixels must be >= 1")
    reports = list(validate_shards(shards, decode=not no_decode, workers=workers, max_pixels=max_pixels))
    bad = [r for r in reports if not r.ok]
    if json_out:
        ui.print_json({"shards": [r.__dict__ | {"ok": r.ok} for r in reports],
                       "reasons": DROP_REASONS | SHARD_PROBLEMS})
    else:
        t = Table(title="shards validate")
        t.add_column("shard")
        t.add_column("samples", justify="right")
        t.add_column("captions", justify="right")
        t.add_column("problems")
        for r in reports:
            probs = ", ".join(f"{k}={v}" for k, v in r.problems.items()) or "ok"
            t.add_row(r.shard, f"{r.samples:,}", f"{r.captions:,}", probs)
        ui.report(t, f"{len(reports)} shards, {sum(r.samples for r in reports):,} valid samples, "
                  f"{len(bad)} with problems")
    if strict and bad:
        raise CurateError(f"{len(bad)} of {len(reports)} shards have problems (first: {bad[0].describe()})")
