"""Embed throughput (images/s) against the decode-only limit of the same shards on the same cores.

Variants run side by side, interleaved, on the same shards and the same number of worker processes:

* ``decode-only``: read the tars and decode every image (with the same reduced-scale JPEG decoding that
  embed uses) in ``--workers`` DataLoader processes, and nothing else. No embedder can beat this rate
  on these cores: it is the physical limit.
* ``curate embed``: ``curate.embed.run_embed`` into a fresh run folder (decode + preprocess + tokenize
  in the workers, the model in the main process, Parquet written by a writer thread).
* ``curate embed, near-free model``: the same with a one-layer random model of the same input size, to
  show what embed reaches when the model is not the bottleneck (as on a GPU).
* ``curate embed, --threads cores-workers`` (full mode): the model on the cores the decode workers leave
  (at least one), as curate did before it gave a CPU model every core.
* ``open_clip preprocess`` (full mode): embed with open_clip's own per-image transform and full-size
  decoding; the cosine between its image embeddings and curate embed's shows what the fast path changes.

Also measured, single-threaded, per image: read, decode, preprocess, tokenize, image and text forward
passes (where the time goes). Quick mode (``make bench``) runs the 3000-image sample once per variant;
full mode runs three interleaved repeats and adds a world of 256 px images (draft decoding on).

    python benchmarks/embed_throughput.py --quick
    python benchmarks/embed_throughput.py --out benchmarks/results/embed_throughput.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the curate CLI sets it, before torch loads

import argparse
import datetime as dt
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import metric, write_summary  # noqa: E402

from curate.embed import EmbedConfig, run_embed  # noqa: E402
from curate.embed.preprocess import fast_transform, normalize_pixels  # noqa: E402
from curate.io.shards import ErrorPolicy, caption_for_tokenizer, decode_image, expand_shards, iter_shard  # noqa: E402
from curate.models import load_model  # noqa: E402


class DecodeOnly(IterableDataset):
    """Read + decode every image of the shards; yields the count per shard (nothing is kept)."""

    def __init__(self, urls: list[str], draft: int | None) -> None:
        self.urls, self.draft = urls, draft

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        policy = ErrorPolicy()
        for url in self.urls[wid::nw]:
            n = 0
            for s in iter_shard(url, policy):
                decode_image(s.image_bytes or b"", self.draft, policy.max_pixels)
                n += 1
            yield n


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def decode_only(urls: list[str], workers: int, draft: int | None) -> tuple[int, float]:
    """(images, seconds) for reading and decoding the shards in ``workers`` processes."""
    t0 = time.perf_counter()
    loader = DataLoader(DecodeOnly(urls, draft), batch_size=None, num_workers=workers,
                        worker_init_fn=_worker_init if workers else None)
    n = sum(loader)
    return n, time.perf_counter() - t0


def curate_embed(urls: list[str], workers: int, model: str, batch_size: int, run: Path,
                 **kw: Any) -> tuple[int, float]:
    """(images, seconds) of ``run_embed`` into a fresh run (model loading excluded, writes included)."""
    shutil.rmtree(run, ignore_errors=True)
    res = run_embed(EmbedConfig(shards=urls, run=str(run), model=model, workers=workers, batch_size=batch_size,
                                device="cpu", **kw))
    return res.samples_written, res.seconds


#: The variants, run interleaved: name -> keyword options of ``curate_embed`` (None: decode only).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "decode-only": None,
    "curate embed": {},  # fast transform in the workers + reduced-scale JPEG decoding (the default)
    # the same pipeline with a model that costs next to nothing (random weights, same input size and context
    # length): what embed reaches when the model is not the bottleneck, as with a GPU
    "curate embed, near-free model": {"model": "null"},
    "open_clip preprocess": {"fast_preprocess": False, "draft": False},  # open_clip's transform, full decode
}
#: The near-free model: the sample model's input size and context length, one tiny layer per tower.
NULL_ARCH = "curate-bench-null"
NULL_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def null_checkpoint(tmp: Path) -> str:
    """Random weights of ``NULL_ARCH`` saved to ``tmp`` (registered with open_clip in this process)."""
    import open_clip
    from safetensors.torch import save_file

    from curate.models import register_model_config

    register_model_config(NULL_ARCH, NULL_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model(NULL_ARCH, pretrained=None)
    path = tmp / "null.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def cosines(a: Path, b: Path) -> tuple[float, float]:
    """Mean and minimum cosine between the image embeddings of two runs over the same shards."""
    import numpy as np
    import pyarrow.parquet as pq

    cos = []
    for p in sorted((a / "embeddings").glob("*.parquet")):
        x = pq.read_table(p, columns=["uid", "image_emb"]).to_pydict()
        y = pq.read_table(b / "embeddings" / p.name, columns=["uid", "image_emb"]).to_pydict()
        assert x["uid"] == y["uid"]
        cos.append((np.asarray(x["image_emb"], np.float32) * np.asarray(y["image_emb"], np.float32)).sum(1))
    c = np.concatenate(cos)
    return float(c.mean()), float(c.min())


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the joined DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def per_image_costs(urls: list[str], model_name: str, n: int = 500) -> dict[str, float]:
    """Single-threaded microseconds per image of each step on the first ``n`` samples (fastest of 3 tries)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = load_model(model_name, device="cpu", precision="fp32")
        size = m.info["image_size"]
        draft = min(size) if isinstance(size, list) else size

        def timed(f: Callable[[], Any], tries: int = 3) -> tuple[Any, float]:
            best = float("inf")
            for _ in range(tries):  # the fastest of a few: other load on the machine only ever adds time
                t0 = time.perf_counter()
                r = f()
                best = min(best, time.perf_counter() - t0)
            return r, best / n * 1e6

        def read() -> list:
            out = []
            for u in urls:
                for s in iter_shard(u):
                    out.append(s)
                    if len(out) == n:
                        return out
            return out

        samples, t_read = timed(read)
        n = len(samples)
        imgs, t_dec = timed(lambda: [decode_image(s.image_bytes, draft) for s in samples])
        x, t_pre = timed(lambda: torch.stack([m.preprocess(i) for i in imgs]))
        fast = fast_transform(m.preprocess, m.info)
        mean, std = torch.tensor(m.info["mean"]), torch.tensor(m.info["std"])
        _, t_fast = timed(lambda: normalize_pixels(torch.stack([fast(i) for i in imgs]), mean, std).contiguous())
        ctx = int(m.info["context_length"])
        toks, t_tok = timed(lambda: m.tokenizer([caption_for_tokenizer(s.caption or "", ctx) for s in samples]))
        with torch.no_grad():
            _, t_img = timed(lambda: [m.model.encode_image(x[i:i + 256]) for i in range(0, n, 256)])
            _, t_txt = timed(lambda: [m.model.encode_text(toks[i:i + 256]) for i in range(0, n, 256)])
        return {"read": t_read, "decode": t_dec, "open_clip preprocess": t_pre, "fast transform + normalise": t_fast,
                "tokenize": t_tok, "image forward": t_img, "text forward": t_txt}
    finally:
        torch.set_num_threads(threads)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}){mem}, torch {torch.__version__}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def measure(name: str, urls: list[str], args: argparse.Namespace, tmp: Path, draft: int | None,
            variants: list[str]) -> dict[str, Any]:
    """Interleaved repeats of the variants on one set of shards; medians of images/s."""
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    counts: dict[str, int] = {}
    for r in range(args.repeats):
        for variant in variants:
            opts = VARIANTS[variant]
            c0 = cpu_seconds()
            if opts is None:
                n, sec = decode_only(urls, args.workers, draft)
            elif opts.get("model") == "null":
                n, sec = curate_embed(urls, args.workers, NULL_ARCH, args.batch_size, tmp / variant,
                                      pretrained=args.null_checkpoint)
            else:
                n, sec = curate_embed(urls, args.workers, args.model, args.batch_size, tmp / variant, **opts)
            cpu[variant].append((cpu_seconds() - c0) / n * 1e6)
            counts[variant] = n
            rates[variant].append(n / sec)
            print(f"  {name} repeat {r + 1}: {variant:<21} {n} images in {sec:6.2f} s = {n / sec:7,.0f} images/s, "
                  f"{cpu[variant][-1]:,.0f} CPU-µs/image", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"name": name, "shards": len(urls), "images": counts, "rates": rates, "median": med,
           "cpu_us": {k: statistics.median(v) for k, v in cpu.items()}}
    if "open_clip preprocess" in variants:
        out["cosine"] = cosines(tmp / "curate embed", tmp / "open_clip preprocess")
    return out


def big_world(tmp: Path, n: int) -> list[str]:
    """A synthetic world of 256 px JPEGs (draft decoding reduces them before resizing to the model's 64 px)."""
    from curate.world import make_sample

    make_sample(tmp / "world256", seed=1, n_train=n, n_test=20, shard_size=max(1, n // 6), image_size=256)
    return expand_shards(str(tmp / "world256" / "train"))


def report(results: list[dict[str, Any]], costs: dict[str, float], args: argparse.Namespace, cmd: str,
           load: tuple[tuple[float, ...], tuple[float, ...]], seconds: float) -> str:
    lines = [
        "# embed throughput vs the decode-only limit",
        "",
        f"- date: {dt.date.today().isoformat()}, commit {commit()}",
        f"- machine: {machine()}",
        f"- command: `{cmd}`",
        f"- model: `{args.model}` on CPU (fp32), batch size {args.batch_size}, {args.workers} decode workers "
        f"in every variant, {args.repeats} interleaved repeat(s), medians shown",
        f"- load average before / after: {' '.join(f'{x:.2f}' for x in load[0])} / "
        f"{' '.join(f'{x:.2f}' for x in load[1])}; benchmark wall time {seconds:.0f} s",
        "",
        "| shards | images | " + " | ".join(f"{v} (images/s)" for v in results[0]["median"])
        + " | curate embed / decode-only | near-free model / decode-only "
        "| image-embedding cosine, curate embed vs open_clip preprocess (mean / min) |",
        "|---|---:|" + "---:|" * len(results[0]["median"]) + "---:|---:|---:|",
    ]
    for r in results:
        cos = f"{r['cosine'][0]:.4f} / {r['cosine'][1]:.4f}" if "cosine" in r else "-"
        m = r["median"]
        lines.append(f"| {r['name']} | {r['images']['curate embed']:,} | "
                     + " | ".join(f"{v:,.0f}" for v in m.values())
                     + f" | {m['curate embed'] / m['decode-only']:.0%} | "
                     f"{m['curate embed, near-free model'] / m['decode-only']:.0%} | {cos} |")
    lines += [
        "",
        "CPU time per image (user + system, all processes; median). Unlike images/s it hardly depends on what "
        "else runs on the machine; `cores × 10⁶ / CPU-µs` is the rate an idle machine allows when every core "
        "is busy:",
        "",
        "| shards | " + " | ".join(f"{v} (CPU-µs / image)" for v in results[0]["cpu_us"])
        + " | curate embed / decode-only, by CPU time | near-free model / decode-only, by CPU time |",
        "|---|" + "---:|" * len(results[0]["cpu_us"]) + "---:|---:|",
    ]
    for r in results:
        c = r["cpu_us"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:,.0f}" for v in c.values())
                     + f" | {c['decode-only'] / c['curate embed']:.0%} | "
                     f"{c['decode-only'] / c['curate embed, near-free model']:.0%} |")
    needed = {k: v for k, v in costs.items() if k != "open_clip preprocess"}  # what curate embed runs
    total = sum(needed.values())
    limit = (os.cpu_count() or 1) * 1e6 / total
    embed_rate = results[0]["median"]["curate embed"]
    lines += [
        "",
        f"Where the time goes (one thread, µs per image, first images of {results[0]['name']}, fastest of 3 "
        "tries; share of what curate embed runs, open_clip's transform shown for comparison):",
        "",
        "| step | µs / image | share |",
        "|---|---:|---:|",
        *[f"| {k} | {v:,.0f} | {v / total:.0%} |" if k in needed else f"| ({k}) | {v:,.0f} | - |"
          for k, v in costs.items()],
        f"| total (curate embed) | {total:,.0f} | 100% |",
        "",
        f"If all of these ran perfectly in parallel on the {os.cpu_count()} cores, embed would reach "
        f"{limit:,.0f} images/s (its compute limit); curate embed reaches {embed_rate:,.0f} images/s, "
        f"{embed_rate / limit:.0%} of that. The decode-only limit from the same figures is "
        f"{(os.cpu_count() or 1) * 1e6 / (costs['read'] + costs['decode']):,.0f} images/s.",
        "",
        "With the near-free model, embed runs everything but the model: the gap to decode-only is the work "
        "embed adds on the CPU per image (fast transform, tokenizing, hashing, batching, writing).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="The sample only, one repeat (< 1 min; make bench).")
    ap.add_argument("--shards", default=str(REPO / "shards" / "sample" / "train"))
    ap.add_argument("--model", default="sample")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=None, help="Interleaved repeats (default 1 quick, 3 full).")
    ap.add_argument("--big", type=int, default=1200, help="Images in the 256 px world (full mode).")
    ap.add_argument("--out", default=None, help="Write the Markdown report here.")
    ap.add_argument("--summary-json", default=None, help="write the key figures as JSON (benchmarks/run_all.py)")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    cmd = "python benchmarks/embed_throughput.py " + " ".join(sys.argv[1:])
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    model = load_model(args.model, device="cpu")
    size = model.info["image_size"]
    draft = min(size) if isinstance(size, list) else size
    urls = expand_shards(args.shards)
    print(f"{machine()}\nload average {load0}", flush=True)
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp_s:
        tmp = Path(tmp_s)
        args.null_checkpoint = null_checkpoint(tmp)
        variants = ["decode-only", "curate embed", "curate embed, near-free model"]
        leave = f"curate embed, --threads {max(1, (os.cpu_count() or 1) - args.workers)}"
        VARIANTS[leave] = {"threads": max(1, (os.cpu_count() or 1) - args.workers)}
        variants += [] if args.quick else [leave, "open_clip preprocess"]
        results = [measure("sample (64 px)", urls, args, tmp, draft, variants)]
        if not args.quick:
            results.append(measure("256 px world", big_world(tmp, args.big), args, tmp, draft, variants))
        costs = per_image_costs(urls, args.model, n=300 if args.quick else 1000)
    text = report(results, costs, args, cmd, (load0, os.getloadavg()), time.perf_counter() - t0)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    med = results[0]["median"]
    write_summary(args.summary_json, "embed_throughput", [
        metric("decode-only images/s (sample)", med["decode-only"], "img/s", "higher"),
        metric("curate embed images/s (sample)", med["curate embed"], "img/s", "higher"),
        metric("curate embed / decode-only", med["curate embed"] / med["decode-only"], "ratio", "higher"),
        metric("near-free model / decode-only", med["curate embed, near-free model"] / med["decode-only"], "ratio",
               "higher"),
    ])


if __name__ == "__main__":
    main()
