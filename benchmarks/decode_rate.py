"""JPEG decode + preprocess cost per CPU core at web image sizes (the input of the 100M–1B scale plan).

The sample shards hold 64×64 images; web-scale pools (LAION, DataComp, CC12M as written by img2dataset)
hold images of a few hundred pixels a side. This measures, on one core, images/s for decoding such
JPEGs and preprocessing them to a 224-pixel model input, with a full decode and with libjpeg's
reduced-size decode (PIL ``draft``, what ``curate embed`` uses), side by side on the same bytes.

    python benchmarks/decode_rate.py [--sizes 256 512 1024] [--n 200] --out benchmarks/results/decode_rate.md

A last column times curate embed's own worker path on the same bytes (draft decode + uint8 resize/crop).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image


def make_jpegs(side: int, n: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields + texture), quality 90, 4:3 aspect."""
    rng = np.random.default_rng(seed)
    out = []
    w, h = side, side * 3 // 4
    for _ in range(n):
        low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, size=(h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def preprocess_224(img: Image.Image) -> torch.Tensor:
    """open_clip's default eval transform: shortest side to 224 (bicubic), centre crop, to tensor, normalise."""
    w, h = img.size
    s = 224 / min(w, h)
    img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(3, 1, 1)
    return (t - mean) / std


def cpu_us(blobs: list[bytes], draft: bool, preprocess: bool = True) -> float:
    """CPU time (this process, one thread) per image in µs: stable under load, unlike wall time.

    With ``preprocess=False`` only the decode (to an RGB image) is timed.
    """
    t0 = time.process_time()
    for b in blobs:
        img = Image.open(io.BytesIO(b))
        if draft:
            img.draft("RGB", (224, 224))
        img = img.convert("RGB")
        if preprocess:
            preprocess_224(img)
    return (time.process_time() - t0) / len(blobs) * 1e6


def curate_us(blobs: list[bytes]) -> float:
    """CPU-µs per image of curate embed's decode worker: draft decode + uint8 resize/crop (normalising is
    done per batch, on the GPU for GPU models, and is not counted)."""
    from curate.embed.preprocess import FastImageTransform
    from curate.io.shards import decode_image

    fast = FastImageTransform(224)
    t0 = time.process_time()
    for b in blobs:
        fast(decode_image(b, draft_size=224))
    return (time.process_time() - t0) / len(blobs) * 1e6


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Pillow {PIL.__version__},"
            f" torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table as Markdown here")
    ap.add_argument("--summary-json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        "| image (w×h) | KB/image | decode only, draft: CPU-µs | full decode + preprocess: CPU-µs | "
        "draft decode + preprocess: CPU-µs | draft: images/s per core | speed-up of draft | "
        "curate embed's worker path: CPU-µs | its images/s per core |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)
    metrics = []
    for side in args.sizes:
        blobs = make_jpegs(side, args.n)
        full = draft = dec = cur = float("inf")
        for _ in range(args.repeats):  # interleave the variants so that they see the same load
            full = min(full, cpu_us(blobs, False))
            draft = min(draft, cpu_us(blobs, True))
            dec = min(dec, cpu_us(blobs, True, preprocess=False))
            cur = min(cur, curate_us(blobs))
        kb = sum(map(len, blobs)) / len(blobs) / 1024
        rows.append(f"| {side}×{side * 3 // 4} | {kb:.0f} | {dec:,.0f} | {full:,.0f} | {draft:,.0f} | "
                    f"{1e6 / draft:,.0f} | {full / draft:.2f}× | {cur:,.0f} | {1e6 / cur:,.0f} |")
        print(rows[-1], flush=True)
        metrics.append({"metric": f"decode+preprocess {side}px (draft), per core", "value": 1e6 / draft,
                        "unit": "img/s", "better": "higher"})
        metrics.append({"metric": f"curate embed worker path {side}px, per core", "value": 1e6 / cur,
                        "unit": "img/s", "better": "higher"})
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    head = [
        "# JPEG decode + preprocess cost per CPU core",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `python benchmarks/decode_rate.py --sizes {' '.join(map(str, args.sizes))} --n {args.n}"
        f" --repeats {args.repeats}`",
        f"- machine: {machine()}",
        f"- load average (`uptime`, 1/5/15 min) before / after: {load_before} / {load_after}; the machine was",
        "  shared with another engineer's training job using about one of the two cores. CPU time (not wall",
        "  time) of one thread is measured, which a busy machine inflates much less than wall time.",
        f"- {args.n} photo-like JPEGs (quality 90, 4:3) per size; best of {args.repeats} interleaved repeats;"
        " preprocess = open_clip's eval transform to 224×224 (bicubic resize of the short side, centre crop,",
        "  to tensor, normalise, one image at a time); draft = libjpeg's reduced-size decode (PIL `draft`).",
        "- curate embed's worker path = `curate.io.shards.decode_image(draft_size=224)` +",
        "  `curate.embed.preprocess.FastImageTransform(224)` (uint8 resize + crop): the CPU work per image in",
        "  curate's decode workers; normalising runs per batch on the model's device and is not included.",
        "",
    ]
    print(f"load average before / after: {load_before} / {load_after}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(head + rows) + "\n")
    if args.summary_json:
        from summary import write_summary

        write_summary(args.summary_json, "decode_rate", metrics)


if __name__ == "__main__":
    main()
