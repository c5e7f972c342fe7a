"""``curate losses``: per-sample losses of a checkpoint over a round's manifest (trainers with no hook)."""

from __future__ import annotations

import typer

from curate.choices import PRECISIONS
from curate.cli import ui
from curate.cli.root import app

Precision = ui.choices("Precision", PRECISIONS)


@app.command(
    "losses",
    epilog="Example: curate losses --run runs/demo --round 3 --checkpoint logs/exp/checkpoints/epoch_4.pt",
)
def losses(
    run: str = ui.run_option("Run folder."),
    round_: int = typer.Option(..., "--round", help="Round whose manifest the checkpoint trained on."),
    checkpoint: str = typer.Option(..., help="open_clip checkpoint (.pt, .safetensors) saved after the round."),
    model: str = typer.Option(None, help="Architecture (default: the run's embedding model)."),
    batch_size: int = typer.Option(256, help="Fixed batch size; batches follow manifest order."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    precision: Precision = typer.Option("auto", help="auto: fp16 on CUDA, fp32 on CPU."),
    shards: str = typer.Option(None, help="Shard spec, when the run's recorded URLs moved."),
    force: bool = ui.force_option("Replace loss parts already in the round's folder."),
    overwrite: bool = typer.Option(False, "--overwrite", hidden=True, help="Deprecated spelling of --force."),
    json_out: bool = ui.json_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Write RUN/losses/round-NNNN/part-00000.parquet for 'curate bootstrap --round N+1'; print its path."""
    from curate.trainer.offline import compute_losses

    if overwrite:
        ui.warn("--overwrite is deprecated; use --force")
    res = compute_losses(
        run, round_, checkpoint, model=model, batch_size=batch_size, device=device, precision=precision.value,
        shards=shards, overwrite=force or overwrite, progress=ui.progress(),
    )
    if json_out:
        ui.print_json({"path": str(res.path), "rows": res.rows, "batches": res.batches, "missing": res.missing,
                       "seconds": round(res.seconds, 2), "stats": res.stats})
        return
    ui.show(f"losses of round {round_}: {res.rows:,} samples in {res.batches:,} batches "
            f"({res.missing:,} of the manifest missing) in {res.seconds:.1f}s")
    ui.result(str(res.path))
