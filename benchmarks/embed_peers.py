"""curate embed against what people run today, side by side on the same shards, model and cores.

Variants (images/s; each gets the same number of decode worker processes and the same batch size):

* ``plain loop``: the loop most CLIP users write: ``webdataset.WebDataset`` → ``.decode("pilrgb")`` →
  open_clip's preprocess and tokenizer in the DataLoader workers → ``encode_image``/``encode_text`` in the
  main process → normalise, score, keep everything in memory, one Parquet file at the end (no uids,
  no resume, no drop accounting). Written here from the libraries' documented APIs.
* ``curate embed``: ``curate.embed.run_embed`` (fresh run folder each time).
* ``clip-retrieval inference``: ``clip_retrieval.clip_inference.main.main`` from PyPI, run in a separate
  virtual environment (``--clip-retrieval-python``; clip-retrieval pins numpy<2, pyarrow<16 and
  webdataset<0.3, so it can't share the project's environment). The model is passed as
  ``open_clip:curate-tiny/<local checkpoint>`` after registering the architecture config with open_clip,
  so nothing is downloaded. Its time includes its model load (well under a second for the tiny model).

Timing excludes process start-up and imports; for the in-process variants it also excludes loading the
model. Runs are interleaved (variant order rotates each repeat); medians are reported.

    python benchmarks/embed_peers.py --clip-retrieval-python /tmp/cr/venv/bin/python \\
        --out benchmarks/results/embed_peers.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the curate CLI sets it (inherited by every variant)

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.embed_throughput import commit, cpu_seconds, machine  # noqa: E402
from curate.embed import EmbedConfig, run_embed  # noqa: E402
from curate.io.shards import expand_shards  # noqa: E402
from curate.models import load_model, sample_model_paths  # noqa: E402


def plain_loop(urls: list[str], workers: int, batch_size: int, model_name: str, out: Path) -> tuple[int, float]:
    """The usual webdataset + open_clip + DataLoader loop; returns (images, seconds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds
    from torch.utils.data import DataLoader

    m = load_model(model_name, device="cpu", precision="fp32")
    model, preprocess, tokenizer = m.model, m.preprocess, m.tokenizer
    t0 = time.perf_counter()
    pipeline = (
        wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
        .decode("pilrgb")
        .to_tuple("jpg;jpeg;png;webp", "txt", "__key__")
        .map_tuple(preprocess, lambda caption: tokenizer([caption])[0], lambda key: key)
        .batched(batch_size, partial=True)
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=workers)
    keys, image_embs, text_embs, scores = [], [], [], []
    with torch.no_grad():
        for images, tokens, batch_keys in loader:
            img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
            keys.extend(batch_keys)
            image_embs.append(img.half().numpy())
            text_embs.append(txt.half().numpy())
            scores.append((img * txt).sum(-1).numpy())
    img_all, txt_all = np.concatenate(image_embs), np.concatenate(text_embs)
    d = img_all.shape[1]
    table = pa.table({
        "key": keys,
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(img_all.reshape(-1)), d),
        "text_emb": pa.FixedSizeListArray.from_arrays(pa.array(txt_all.reshape(-1)), d),
        "clip_score": np.concatenate(scores),
    })
    pq.write_table(table, out)
    return len(keys), time.perf_counter() - t0


def curate_embed(urls: list[str], workers: int, batch_size: int, model_name: str, out: Path) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    res = run_embed(EmbedConfig(shards=urls, run=str(out), model=model_name, workers=workers, batch_size=batch_size,
                                device="cpu"))
    return res.samples_written, res.seconds


_CLIP_RETRIEVAL_WRAPPER = r'''
import glob, json, resource, sys, time


def cpu_seconds():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run():
    import numpy as np
    import open_clip
    cfg_json, weights, shards, out, workers, batch_size = sys.argv[1:7]
    open_clip.add_model_config(cfg_json)  # the tiny architecture; its weights come from the local file below
    from clip_retrieval.clip_inference.main import main
    t0, c0 = time.perf_counter(), cpu_seconds()
    main(input_dataset=shards, output_folder=out, input_format="webdataset",
         clip_model=f"open_clip:curate-tiny/{weights}", batch_size=int(batch_size),
         num_prepro_workers=int(workers), enable_text=True, enable_image=True, enable_metadata=False,
         enable_wandb=False, write_batch_size=10**6)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    n = sum(np.load(f, mmap_mode="r").shape[0] for f in glob.glob(f"{out}/img_emb/*.npy"))
    print(json.dumps({"images": n, "seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":  # clip-retrieval starts processes that re-import this file
    run()
'''


def clip_retrieval(python: str, urls: list[str], workers: int, batch_size: int, out: Path
                   ) -> tuple[int, float, float]:
    """clip-retrieval's inference in its own environment: (images embedded, seconds and CPU-seconds of main())."""
    shutil.rmtree(out, ignore_errors=True)
    cfg, weights = sample_model_paths()
    folder = Path(urls[0]).parent
    stems = sorted(Path(u).stem for u in urls)
    spec = str(folder / f"{{{stems[0]}..{stems[-1]}}}.tar")
    assert len(stems) == int(stems[-1]) - int(stems[0]) + 1, "clip-retrieval takes a contiguous brace range"
    script = out.parent / "clip_retrieval_wrapper.py"
    script.write_text(_CLIP_RETRIEVAL_WRAPPER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([python, str(script), str(cfg), str(weights), spec, str(out), str(workers),
                           str(batch_size)], capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"clip-retrieval failed: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads(proc.stdout[proc.stdout.rindex('{"images"'):].splitlines()[0])  # after its progress output
    return int(res["images"]), float(res["seconds"]), float(res["cpu"])


def clip_retrieval_version(python: str) -> str:
    proc = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('clip-retrieval'), "
                           "m.version('open_clip_torch'), m.version('torch'), m.version('webdataset'))"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or f"? ({proc.stderr.strip().splitlines()[-1:]})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=str(REPO / "shards" / "sample" / "train"))
    ap.add_argument("--model", default="sample")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clip-retrieval-python", default=None,
                    help="Python of a virtual environment with clip-retrieval installed (skipped when absent).")
    ap.add_argument("--out", default=None, help="Write the Markdown report here.")
    args = ap.parse_args()
    urls = expand_shards(args.shards)
    cmd = "python benchmarks/embed_peers.py " + " ".join(sys.argv[1:])
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    variants = ["plain loop", "curate embed"] + (["clip-retrieval inference"] if args.clip_retrieval_python else [])
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="embed-peers-") as tmp_s:
        tmp = Path(tmp_s)
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                c0 = cpu_seconds()
                if v == "plain loop":
                    n, sec = plain_loop(urls, args.workers, args.batch_size, args.model, tmp / "plain.parquet")
                    cpu_s = cpu_seconds() - c0
                elif v == "curate embed":
                    n, sec = curate_embed(urls, args.workers, args.batch_size, args.model, tmp / "curate")
                    cpu_s = cpu_seconds() - c0
                else:
                    n, sec, cpu_s = clip_retrieval(args.clip_retrieval_python, urls, args.workers, args.batch_size,
                                                   tmp / "clip-retrieval")
                counts[v] = n
                rates[v].append(n / sec)
                cpu[v].append(cpu_s / n * 1e6)
                print(f"repeat {r + 1}: {v:<25} {n} images in {sec:6.2f} s = {n / sec:7,.0f} images/s, "
                      f"{cpu[v][-1]:,.0f} CPU-µs/image", flush=True)
    med = {v: statistics.median(x) for v, x in rates.items()}
    cmed = {v: statistics.median(x) for v, x in cpu.items()}
    lines = [
        "# embed: curate vs the usual loop and clip-retrieval",
        "",
        f"- date: {dt.date.today().isoformat()}, commit {commit()}",
        f"- machine: {machine()}",
        f"- command: `{cmd}`",
        f"- shards: {args.shards} ({len(urls)} shards); model `{args.model}` on CPU (fp32); batch size "
        f"{args.batch_size}; {args.workers} decode workers for every variant; {args.repeats} interleaved repeats "
        "(rotating order), medians",
        f"- load average before / after: {' '.join(f'{x:.2f}' for x in load0)} / "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; wall time {time.perf_counter() - t_all:.0f} s",
    ]
    if args.clip_retrieval_python:
        lines += [
            f"- clip-retrieval environment (clip-retrieval, open_clip_torch, torch, webdataset): "
            f"{clip_retrieval_version(args.clip_retrieval_python)}; made with `python3.11 -m venv /tmp/cr/venv && "
            "/tmp/cr/venv/bin/pip install torch==2.13.0 torchvision==0.28.0 clip-retrieval 'setuptools<81'` "
            "(torch and torchvision pinned as a matching pair; clip-anytorch, imported by clip-retrieval's model "
            "loader, needs `pkg_resources`, which setuptools 81+ no longer ships)",
        ]
    lines += [
        "",
        "| variant | images | images/s (median) | runs (images/s) | curate embed / variant | CPU-µs / image "
        "(median) | variant / curate embed, by CPU time |",
        "|---|---:|---:|---|---:|---:|---:|",
        *[f"| {v} | {counts[v]:,} | {med[v]:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[v])} | "
          f"{med['curate embed'] / med[v]:.2f}× | {cmed[v]:,.0f} | {cmed[v] / cmed['curate embed']:.2f}× |"
          for v in variants],
        "",
        "CPU time (user + system of all the variant's processes) hardly depends on other load on the machine; "
        "images/s does.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
