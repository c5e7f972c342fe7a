"""``curate export``, ``curate reshard`` and ``curate merge``: hand a manifest to other tools."""

from __future__ import annotations

import typer

from curate.cli import ui
from curate.cli.root import app
from curate.io.export import FORMATS, export_manifest
from curate.io.merge import merge_manifests
from curate.io.reshard import reshard

Format = ui.choices("Format", FORMATS)

_MANIFEST_HELP = "A manifest .parquet or a selection folder."


@app.command(
    "export",
    epilog="Examples:\n\n"
    "  curate export --manifest runs/demo/selections/clipcov-f0.3 --format datacomp --out subset.npy\n\n"
    "  curate export --manifest runs/demo/selections/clipcov-f0.3/manifest.parquet --format urls",
)
def export(
    manifest: str = typer.Option(..., "--manifest", help=_MANIFEST_HELP),
    fmt: Format = typer.Option(..., "--format", help="datacomp (sorted u8,u8 uid .npy), keys (shard/key), urls."),
    out_path: str = ui.out_option("Output file, or a folder for <selection>.npy, .keys.txt, .urls.txt "
                                  "(default: next to the manifest)."),
    shards: str = typer.Option(None, help="urls: shard spec to take URLs from (default: the run's run.json)."),
    force: bool = ui.force_option("Replace an existing --out file that curate did not write."),
    json_out: bool = ui.json_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Export a manifest as a DataComp subset file, a shard/key list or a shard-URL list; print its path."""
    path, n = export_manifest(manifest, fmt.value, out_path, shards, force=force)
    if json_out:
        ui.print_json({"format": fmt.value, "path": str(path), "entries": n})
        return
    ui.show(f"wrote {n:,} {'uids' if fmt.value == 'datacomp' else fmt.value} to {path}")
    ui.result(str(path))


@app.command(
    "reshard",
    epilog="Example:\n\n"
    "  curate reshard --manifest runs/demo/selections/clipcov-f0.3 --out subset-shards --shard-size 10000",
)
def reshard_cmd(
    manifest: str = typer.Option(..., "--manifest", help=_MANIFEST_HELP),
    out_dir: str = ui.out_option("Folder for the new shards (000000.tar, ...).", required=True),
    shard_size: int = typer.Option(10_000, help="Samples per output shard."),
    shards: str = typer.Option(None, help="Source shard spec (default: the URLs in the run's run.json)."),
    force: bool = ui.force_option("Replace an earlier reshard's output in --out (only the files its "
                                  "reshard.json lists)."),
    json_out: bool = ui.json_option(),
    dry_run: bool = ui.dry_run_option(),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Write new WebDataset shards holding only the manifest's samples (count verified); print the folder."""
    res = reshard(manifest, out_dir, shard_size, shards, force, ui.progress(), dry_run=dry_run)
    if json_out:
        ui.print_json({"out": str(res.out_dir), "samples": res.written, "shards": res.shards,
                       "prefixed_keys": res.prefixed_keys, "complete": res.complete, "dry_run": res.dry_run})
        return
    if res.dry_run:
        ui.show(f"dry run: would write {res.written:,} samples in {len(res.shards)} shards to {res.out_dir}")
        return
    if res.complete:
        ui.show(f"{res.out_dir} already holds this reshard ({res.written:,} samples in {len(res.shards)} shards)")
    else:
        ui.show(f"wrote {res.written:,} samples in {len(res.shards)} shards to {res.out_dir}")
    if res.prefixed_keys:
        ui.show("note: keys repeat across source shards, so output keys are '<source shard>/<key>'")
    ui.result(str(res.out_dir))


@app.command(
    "merge",
    epilog="Example (a pool selected in two sub-pools, each embedded into its own run):\n\n"
    "  curate merge runs/part-00/selections/clipcov runs/part-01/selections/clipcov --out clipcov-all.parquet",
)
def merge_cmd(
    manifests: list[str] = typer.Argument(..., help="Manifests (.parquet, .json, selection folders) of disjoint runs."),
    out_path: str = ui.out_option("The merged manifest (.parquet; a .json header beside it).", required=True),
    force: bool = ui.force_option("Replace an existing --out."),
    json_out: bool = ui.json_option("Print the merged header's counts as JSON."),
    quiet: bool = ui.quiet_option(),
) -> None:
    """Join the manifests of sub-pools selected separately (no shared uid or shard) into one manifest."""
    merged = merge_manifests(manifests, out_path, force=force,
                             command="curate merge " + " ".join([*manifests, "--out", out_path]))
    if json_out:
        ui.print_json({"out": out_path, **merged.header["counts"], "inputs": len(manifests),
                       "content_hash": merged.header["content_hash"]})
        return
    pool = merged.header["counts"]["pool"]
    of = f" of {pool:,}" if pool else ""
    ui.show(f"merged {len(manifests)} manifests: {len(merged):,}{of} samples in "
            f"{len(merged.header['shards'])} shards → {out_path}")
    ui.result(out_path)  # pipes into a trainer like bootstrap's manifest path
