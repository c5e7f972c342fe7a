"""``curate losses``: per-sample losses of a checkpoint over a round's manifest (trainers with no hook)."""

from __future__ import annotations

import typer

from curate.cli._app import app
from curate.cli._common import RichProgress, err, print_json


@app.command(
    "losses",
    epilog="Example: curate losses --run runs/demo --round 3 --checkpoint logs/exp/checkpoints/epoch_4.pt",
)
def losses(
    run: str = typer.Option(..., "--run", "-r", help="Run folder."),
    round_: int = typer.Option(..., "--round", "-n", help="Round whose manifest the checkpoint trained on."),
    checkpoint: str = typer.Option(..., help="open_clip checkpoint (.pt, .safetensors) saved after the round."),
    model: str = typer.Option(None, help="Architecture (default: the run's embedding model)."),
    batch_size: int = typer.Option(256, help="Fixed batch size; batches follow manifest order."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", help="auto, fp32, fp16, bf16."),
    shards: str = typer.Option(None, help="Shard spec, when the run's recorded URLs moved."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace loss parts already in the round's folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write RUN/losses/round-NNNN/part-00000.parquet for 'curate bootstrap --round N+1'; print its path."""
    from curate.trainer.offline import compute_losses

    res = compute_losses(
        run, round_, checkpoint, model=model, batch_size=batch_size, device=device, precision=precision,
        shards=shards, overwrite=overwrite, progress=RichProgress(enabled=not json_out),
    )
    if json_out:
        print_json({"path": str(res.path), "rows": res.rows, "batches": res.batches, "missing": res.missing,
                    "seconds": round(res.seconds, 2), "stats": res.stats})
        return
    err.print(f"losses of round {round_}: {res.rows:,} samples in {res.batches:,} batches "
              f"({res.missing:,} of the manifest missing) in {res.seconds:.1f}s")
    typer.echo(str(res.path))
