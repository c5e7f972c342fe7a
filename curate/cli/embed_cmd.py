"""``curate embed``."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from curate.choices import CAPTION_MODES, PRECISIONS
from curate.cli import ui
from curate.cli.root import app
from curate.engines import list_engines
from curate.errors import InputError
from curate.io.shards import DEFAULT_MAX_PIXELS

EngineName = ui.choices("EngineName", list_engines())
Precision = ui.choices("Precision", PRECISIONS)
Captions = ui.choices("Captions", CAPTION_MODES)

_EPILOG = (
    "Examples:\n\n"
    "  curate embed shards/sample --run runs/demo --model sample\n\n"
    "  curate embed 'data/{00000..00099}.tar' --run runs/dc --model ViT-B-32 --pretrained ckpt/vit_b_32.safetensors\n\n"
    "  curate embed 'data/{00000..00099}.tar' --run runs/dc --model ViT-B-32 --pretrained ckpt.pt --refresh\n\n"
    "  curate embed 'data/{00000..00999}.tar' --run runs/dc --model ViT-B-32 --pretrained ckpt.pt --devices all\n\n"
    "  curate embed 's3://bucket/{00000..09999}.tar' --run /shared/runs/dc --model ViT-B-32 --pretrained ckpt.pt "
    "--engine ray --ray-address auto"
)


def _names(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@app.command("embed", epilog=_EPILOG)
def embed(
    shards: list[str] = typer.Argument(..., help="Shard spec(s): paths, folders, globs, {a..b} braces, pipe:, URLs."),
    run: str = ui.run_option("Run folder to write into (created if missing)."),
    model: str = typer.Option("sample", help="open_clip model name, local-dir:PATH, or 'sample' (built-in)."),
    pretrained: str = typer.Option(None, help="open_clip pretrained tag or a local checkpoint path."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch_size: int = typer.Option(256, help="Images per model batch."),
    workers: int = typer.Option(None, help="Decode worker processes (0 = decode in the main process; default: "
                                "2 for a CPU model, the cores but one (≤ 32) for a GPU model)."),
    threads: int = typer.Option(None, help="CPU threads of the model on a CPU device (default: every core)."),
    precision: Precision = typer.Option("auto", help="auto: fp16 on CUDA, fp32 on CPU."),
    captions: Captions = typer.Option("auto", help="auto: image-only shards allowed; required; ignore."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad sample instead of skipping it."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Images with more pixels are dropped as bombs."),
    refresh: bool = typer.Option(False, "--refresh", help="Re-embed shards whose file changed since embedding."),
    devices: str = typer.Option(None, help="One process per device: all, 0,1,... (GPUs) or cpu,cpu; "
                                "instead of --device."),
    engine: EngineName = typer.Option("local", help="Where shards are embedded: local (this machine) or ray."),
    ray_address: str = typer.Option(None, help="--engine ray: cluster address (auto, ray://HOST:10001); "
                                    "default: start a local Ray."),
    json_out: bool = ui.json_option(),
    dry_run: bool = ui.dry_run_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Embed shards with an open_clip model into RUN/embeddings/<shard>.parquet (resumable per shard).

    Reruns skip embedded shards; shards changed since (size, mtime) are reported, re-embedded by --refresh.
    Prints the run folder on stdout.
    """
    from curate.embed import EmbedConfig, plan_embed, run_embed  # torch and open_clip load only when embedding

    cfg = EmbedConfig(
        shards=shards, run=run, model=model, pretrained=pretrained, device=device, batch_size=batch_size,
        workers=workers, threads=threads, precision=precision.value, captions=captions.value, strict=strict,
        max_pixels=max_pixels, refresh=refresh, devices=devices, engine=engine.value, ray_address=ray_address,
    )
    if dry_run:
        _show_plan(plan_embed(cfg), json_out)
        return
    res = run_embed(cfg, ui.progress())
    summary = {
        "run": res.run, "shards_total": res.shards_total, "shards_embedded": res.shards_done,
        "shards_skipped": res.shards_skipped, "samples_written": res.samples_written,
        "seconds": round(res.seconds, 2), "samples_per_s": round(res.samples_per_s, 1), "stats": res.stats,
        "shards_changed": res.changed, "shards_refreshed": res.refreshed, "shards_missing": res.missing,
        "shards_failed": res.failed,
    }
    if not json_out:
        t = Table(title=f"embed → {res.run}", show_header=False)
        for k in ("shards_total", "shards_embedded", "shards_skipped", "samples_written", "samples_per_s"):
            t.add_row(k.replace("_", " "), f"{summary[k]:,}")
        for k, v in res.stats.items():
            if k.startswith(("dropped_", "shard_")):
                t.add_row(k.replace("_", " "), f"{v:,}")
        if res.refreshed:
            t.add_row("shards refreshed", _names(res.refreshed))
        ui.show(t)
    if res.changed:
        ui.warn(f"{len(res.changed)} shard(s) changed since they were embedded: {_names(res.changed)}; "
                "their embeddings are stale (rerun with --refresh to re-embed them)")
    if res.failed:
        ui.warn(f"{len(res.failed)} shard(s) could not be read: {_names(res.failed)}; "
                "they are not marked done, so the next run tries them again")
    if res.missing:
        ui.warn(f"{len(res.missing)} embedded shard(s) no longer exist: {_names(res.missing)}")
    if res.shards_done and not res.samples_written:
        if json_out:  # the statistics say why (shard problems, drops), also for a script
            ui.print_json(summary)
        raise InputError(f"nothing embedded: the {res.shards_done} shard(s) to do gave no sample "
                         "(see the warnings above and 'curate shards validate')")
    if json_out:
        ui.print_json(summary)
    else:
        ui.result(res.run)


def _show_plan(plan: Any, json_out: bool) -> None:
    if json_out:
        ui.print_json(plan.summary())
        return
    where = "into the existing run" if plan.run_exists else "into a new run folder"
    lines = [f"dry run: would embed {len(plan.todo)} of {plan.shards_total} shards {where} {plan.run} with model "
             f"{plan.model}" + (f" (pretrained {plan.pretrained})" if plan.pretrained else "")]
    if plan.todo:
        lines.append(f"  to embed: {_names(plan.todo)}")
    if plan.skipped:
        lines.append(f"  already embedded (skipped): {_names(plan.skipped)}")
    if plan.refreshed:
        lines.append(f"  changed, re-embedded (--refresh): {_names(plan.refreshed)}")
    if plan.changed:
        lines.append(f"  changed since embedding, kept stale without --refresh: {_names(plan.changed)}")
    if plan.missing:
        lines.append(f"  embedded but no longer found: {_names(plan.missing)}")
    rm = plan.run_model
    if rm and (rm.get("model"), rm.get("pretrained_arg")) != (plan.model, plan.pretrained):
        lines.append(f"  the run was embedded with model {rm.get('model')} (pretrained {rm.get('pretrained_arg')}): "
                     "embedding with another model would be refused")
    ui.show(*lines)
