"""Shard reading: samples/s and CPU time per sample of curate's tar reader against the alternatives.

Every variant streams the same shards in this process (one thread) and hands over each sample's
members as bytes, with nothing decoded. Variants run interleaved, side by side:

* ``curate iter_shard``: ``curate.io.shards.iter_shard`` of this checkout (``curate.io.tarstream`` + grouping,
  uid and content hash, every drop counted).
* ``curate iter_shard @ COMMIT`` (``--baseline COMMIT``): the same function as it was at an earlier commit,
  loaded from git (before ``tarstream``, curate read tars with ``tarfile``'s stream mode).
* ``tarfile stream``: ``tarfile.open(mode="r|*")`` and ``extractfile().read()`` per member, with no grouping:
  the floor of any reader built on ``tarfile``.
* ``webdataset``: ``webdataset.tarfile_to_samples()`` over the shard URLs (what trainers' loaders use).

Shards: the committed sample (64 px, 3 members per sample), the same gzip-compressed, and a world of
256 px JPEGs.

    python benchmarks/read_rate.py --baseline 177cb3d --out benchmarks/results/read_rate.md
    python benchmarks/read_rate.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import commit, machine  # noqa: E402
from summary import metric, write_summary  # noqa: E402

from curate.io.shards import expand_shards, iter_shard  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tarfile_stream(urls: list[str]) -> Iterable[Any]:
    for url in urls:
        with open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tf:
            for ti in tf:
                if ti.isfile():
                    yield tf.extractfile(ti).read()  # type: ignore[union-attr]


def webdataset_samples(urls: list[str]) -> Iterable[Any]:
    import webdataset as wds

    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())


def curate_reader(urls: list[str], fn: Callable[..., Iterable[Any]] = iter_shard) -> Iterable[Any]:
    for url in urls:
        for s in fn(url):
            yield s.uid, s.content_hash  # what curate embed stores (hashed on first use since 2026-11-23)


def iter_shard_at(rev: str) -> Callable[..., Iterable[Any]]:
    """``iter_shard`` from ``curate/io/shards.py`` at git revision ``rev`` (loaded as a separate module)."""
    src = subprocess.run(["git", "show", f"{rev}:curate/io/shards.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"shards_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"shards_{rev}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.iter_shard  # type: ignore[no-any-return]


def count_items(it: Iterable[Any]) -> int:
    return sum(1 for _ in it)


def worlds(tmp: Path, quick: bool) -> dict[str, list[str]]:
    from curate.world import make_sample

    sample = expand_shards(str(REPO / "shards" / "sample" / "train"))
    out = {"sample (64 px)": sample}
    gz = tmp / "gz"
    gz.mkdir()
    for u in sample:
        (gz / (Path(u).stem + ".tar.gz")).write_bytes(gzip.compress(Path(u).read_bytes(), mtime=0))
    out["sample, gzip"] = sorted(str(p) for p in gz.glob("*.tar.gz"))
    if not quick:
        make_sample(tmp / "w256", seed=1, n_train=1200, n_test=20, shard_size=200, image_size=256)
        out["256 px world"] = expand_shards(str(tmp / "w256" / "train"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="also time iter_shard at this git revision")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the sample shards only, 3 repeats (make bench)")
    ap.add_argument("--out", help="write the Markdown report here")
    ap.add_argument("--summary-json", help="write the headline figures here (benchmarks/run_all.py)")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    variants: dict[str, Callable[[list[str]], Iterable[Any]]] = {"curate iter_shard": curate_reader}
    if args.baseline:
        old = iter_shard_at(args.baseline)
        variants[f"curate iter_shard @ {args.baseline}"] = lambda urls: curate_reader(urls, old)
    variants["tarfile stream"] = tarfile_stream
    variants["webdataset"] = webdataset_samples
    load0, t0 = os.getloadavg(), time.time()
    tmp = Path(tempfile.mkdtemp())
    try:
        rows = []
        for world, urls in worlds(tmp, args.quick).items():
            cpu: dict[str, list[float]] = {v: [] for v in variants}
            rate: dict[str, list[float]] = {v: [] for v in variants}
            n_samples = count_items(curate_reader(urls))
            for _ in range(repeats):
                for name, fn in variants.items():
                    c0, w0 = _cpu(), time.perf_counter()
                    count_items(fn(urls))
                    c, w = _cpu() - c0, time.perf_counter() - w0
                    cpu[name].append(c / n_samples * 1e6)
                    rate[name].append(n_samples / w)
            med = {k: statistics.median(v) for k, v in cpu.items()}
            rows.append((world, n_samples, med, {k: statistics.median(v) for k, v in rate.items()}))
            print(world, {k: f"{v:.1f} µs" for k, v in med.items()}, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = list(variants)
    lines = [
        "# shard reading: curate's tar reader against the alternatives",
        "",
        f"- date: {dt.date.today()}, commit {commit()}",
        f"- machine: {machine()}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        f"- one process, one thread, {repeats} interleaved repeats, medians; nothing decoded",
        f"- load average before / after: {' '.join(f'{x:.2f}' for x in load0)} / "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; wall time {time.time() - t0:.0f} s",
        "",
        "CPU µs per sample (lower is better; in brackets: the variant's time / curate iter_shard's):",
        "",
        "| shards | samples | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for world, n, med, _ in rows:
        base = med[names[0]]
        lines.append(f"| {world} | {n:,} | " + " | ".join(
            f"{med[k]:.1f}" + ("" if k == names[0] else f" ({med[k] / base:.2f}×)") for k in names) + " |")
    lines += ["", "samples/s (wall clock):", "", "| shards | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for world, _, _, r in rows:
        lines.append(f"| {world} | " + " | ".join(f"{r[k]:,.0f}" for k in names) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    world, _, med, _ = rows[0]
    write_summary(args.summary_json, "read_rate", [
        metric(f"iter_shard CPU-µs/sample, {world}", med["curate iter_shard"], "µs"),
        metric(f"tarfile stream / iter_shard CPU time, {world}", med["tarfile stream"] / med["curate iter_shard"],
               "ratio", better="higher"),
    ])


if __name__ == "__main__":
    main()
