"""The GPU check: every CUDA path of curate and the GPU figures, in one time-boxed run (docs/gpu_check.md).

    bash scripts/gpu_check.sh                 # on the GPU machine (installs .whl/ first); results in $OUT
    bash scripts/gpu_check.sh --cpu           # the same steps with tiny sizes on the CPU (make test runs it)
    python scripts/gpu_check.py --steps embed --set world_n=5000 --out DIR   # a part, other sizes

Each step runs in its own process under a time limit (its own, and what is left of ``--budget``), so a
step that fails, hangs or crashes the interpreter leaves the others' results. After every step the
results so far are written to OUT/gpu.json (everything measured), OUT/gpu.md (the tables) and
OUT/gpu.log (each step's output). Steps that need CUDA report ``skipped: no CUDA`` on a CPU; the others
run for real at the CPU sizes and check their outputs. Sizes and limits are parameters (``--set``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORMAT = 1
OUT_FILES = ("gpu.json", "gpu.md", "gpu.log")
LOG_TAIL_BYTES = 60_000  # of each step's output in gpu.log

#: Sizes, models and limits of each mode (``--set KEY=VALUE`` overrides one; VALUE is JSON or a string).
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "isolate": True,  # each step in its own process: a crash or a hang costs that step only
        "budget_s": 480,  # the whole check: fits one 10-minute command with the wheel install and slack
        "world_sizes": [256, 512],  # px of the synthetic JPEGs (the short side is the model's 224 or more)
        "world_n": 20_000,  # samples per world
        "shard_size": 200,  # ~100 shards: 15 decode workers share them within 5%
        "models": ["ViT-B-32", "ViT-L-14"],  # random weights: throughput needs none
        "precisions": ["fp16", "bf16"],
        "workers": ["default", 15],  # decode workers; "default" is curate's own choice
        "batch_size": 256,
        "warmup_shards": 4,
        "preprocess_model": "sample",  # trained weights: the cosine means something
        "preprocess_shards": 10,
        "pixel_model": "ViT-B-32",
        "pixel_images": 256,
        "clipcov_n": 200_000,
        "clipcov_d": 512,
        "clipcov_classes": 1000,
        "clipcov_fraction": 0.1,
        "devices_shards": 16,
        "devices_model": "sample",
        "devices_cli": "all",  # every GPU, one process each (one GPU: one process, and a second run below)
        "devices_two_on_cpu": False,
        # most CUDA-dependent first: the last step gets what is left of the budget
        "pytest_cuda_files": ["tests/select/test_select_clipcov.py", "tests/test_models.py", "tests/test_engines.py",
                              "tests/test_embed_cli.py", "tests/test_embed.py"],
        "timeouts": {"env": 90, "pytest_gpu": 120, "worlds": 120, "embed": 270, "preprocess": 90,
                     "clipcov": 120, "devices": 120, "ray": 60, "pytest_cuda": 180},
    },
    "cpu": {
        "isolate": False,  # one process for all steps: torch is imported once (seconds on a busy CPU)
        "budget_s": 240,
        "world_sizes": [64],
        "world_n": 48,
        "shard_size": 12,
        "models": ["sample"],
        "precisions": ["fp32"],
        "workers": ["default", 0],
        "batch_size": 16,
        "warmup_shards": 1,
        "preprocess_model": "sample",
        "preprocess_shards": 2,
        "pixel_model": "sample",
        "pixel_images": 16,
        "clipcov_n": 3000,
        "clipcov_d": 32,
        "clipcov_classes": 12,
        "clipcov_fraction": 0.1,
        "devices_shards": 4,
        "devices_model": "sample",
        "devices_cli": "all",  # one process on a CPU (tests/test_engines_embed.py runs cpu,cpu)
        "devices_two_on_cpu": False,  # true: also two processes on the CPU, as the one-GPU machine runs two
        "pytest_cuda_files": [],
        "timeouts": {"env": 60, "pytest_gpu": 60, "worlds": 60, "embed": 90, "preprocess": 60,
                     "clipcov": 60, "devices": 90, "ray": 30, "pytest_cuda": 30},
    },
}


# ---------------------------------------------------------------------------------------------------------
# steps


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Ctx], dict[str, Any]]
    needs: tuple[str, ...] = ()  # steps whose results this one reads
    cuda_only: str = ""  # the note of its "skipped" outcome where there is no CUDA ("": runs on a CPU too)


STEPS: dict[str, Step] = {}
StepFn = Callable[["Ctx"], dict[str, Any]]


def step(name: str, title: str, needs: tuple[str, ...] = (), cuda_only: str = "") -> Callable[[StepFn], StepFn]:
    """Register a step (they run in the order of registration)."""

    def deco(fn: StepFn) -> StepFn:
        STEPS[name] = Step(name, title, fn, needs, cuda_only)
        return fn

    return deco


@dataclasses.dataclass
class Ctx:
    """What a step gets: the mode's parameters, its work folder, the earlier steps' results."""

    params: dict[str, Any]
    work: Path
    cpu_mode: bool

    @property
    def cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def result(self, name: str) -> dict[str, Any]:
        path = self.work / "results" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}


def outcome(status: str, note: str = "", **result: Any) -> dict[str, Any]:
    """A step's outcome: ``pass``, ``fail`` or ``skipped``, a one-line note, and what it measured."""
    return {"status": status, "note": note, "result": result}


def say(msg: str) -> None:
    print(msg, flush=True)


@step("env", "imports and the machine")
def step_env(ctx: Ctx) -> dict[str, Any]:
    """curate imports against this machine's torch; what the machine and its packages are."""
    from importlib.metadata import PackageNotFoundError, version

    import open_clip
    import torch

    import curate
    import curate.cli.app
    import curate.embed
    import curate.engines
    import curate.select

    r: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                         "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                         "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "ram_gib": _ram_gib(),
                         "curate_from": str(Path(curate.__file__).parent), "open_clip_from": open_clip.__file__,
                         "float32_matmul_precision": torch.get_float32_matmul_precision()}
    pkgs = {}
    for dist in ("open_clip_torch", "torchvision", "timm", "huggingface_hub", "numpy", "pyarrow", "pillow", "ftfy",
                 "wcwidth", "regex", "braceexpand", "webdataset", "faiss-cpu", "ray", "typer", "rich", "pytest",
                 "nvidia-ml-py"):
        try:
            pkgs[dist] = version(dist)
        except PackageNotFoundError:
            pkgs[dist] = None
    r["packages"] = pkgs
    notes = []
    for mod, what in (("faiss", "k-means partitions and semdedup are not checked"),
                      ("ray", "the Ray step is skipped"), ("webdataset", "tests that write webdataset shards fail")):
        try:
            __import__(mod)
        except ImportError:
            notes.append(f"{mod} not importable: {what}")
    if Path(curate.__file__).resolve().parent != REPO / "curate":
        return outcome("fail", f"curate imported from {curate.__file__}, not from this tree ({REPO})", **r)
    if torch.cuda.is_available():
        r["gpus"] = [_gpu_info(i) for i in range(torch.cuda.device_count())]
        r["driver"] = _nvidia_smi("driver_version")
        x = torch.arange(1000, device="cuda", dtype=torch.float32)
        if float(x.sum()) != 499500.0:
            return outcome("fail", "a sum on the GPU came out wrong", **r)
    elif not ctx.cpu_mode:
        return outcome("fail", "no CUDA on this machine: run with --cpu for the CPU check", **r)
    return outcome("pass", "; ".join(notes), **r)


@step("pytest_gpu", "pytest -m gpu",
      cuda_only="no CUDA: the gpu-marked tests skip themselves on a CPU (make test collects them)")
def step_pytest_gpu(ctx: Ctx) -> dict[str, Any]:
    """The tests marked ``gpu``."""
    files = [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").rglob("test_*.py"))
             if re.search(r"mark\.gpu\b", p.read_text())]
    if not files:
        return outcome("fail", "no test file has a gpu mark")
    rc, out = _pytest(["-m", "gpu", *files])
    counts = _pytest_counts(out)
    ok = rc == 0 and counts.get("passed", 0) > 0  # a skip here has its reason in the summary (-ra)
    return outcome("pass" if ok else "fail", _pytest_line(out, rc), files=files, counts=counts)


@step("worlds", "synthetic worlds")
def step_worlds(ctx: Ctx) -> dict[str, Any]:
    """World per image size: ``world_n`` JPEG samples with captions, made by every core at once."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    p = ctx.params
    n, per = int(p["world_n"]), int(p["shard_size"])
    cores = os.cpu_count() or 1
    parts = max(1, min(cores, math.ceil(n / per)))
    jobs = []
    for size in sorted(p["world_sizes"], reverse=True):  # the slowest jobs first
        for part in range(parts):
            count = n // parts + (part < n % parts)
            jobs.append((int(size), part, count, per, str(ctx.work / "worlds" / str(size))))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cores, mp_context=mp.get_context("fork")) as ex:
        made = list(ex.map(_make_world_part, jobs))
    worlds = {}
    for size in p["world_sizes"]:
        shards = sorted((ctx.work / "worlds" / str(size) / "shards").glob("*.tar"))
        samples = sum(m for s, m in made if s == int(size))
        nbytes = sum(f.stat().st_size for f in shards)
        worlds[str(size)] = {"dir": str(shards[0].parent), "shards": len(shards), "samples": samples,
                             "mib": round(nbytes / 2**20, 1), "kib_per_sample": round(nbytes / 1024 / samples, 1)}
    bad = [s for s, w in worlds.items() if w["samples"] != n]
    note = (f"{n} samples at each of {', '.join(worlds)} px in {time.perf_counter() - t0:.0f} s, {parts} processes "
            f"per world on {cores} cores")
    return outcome("fail" if bad else "pass", f"worlds {bad} are short" if bad else note, worlds=worlds)


def _make_world_part(job: tuple[int, int, int, int, str]) -> tuple[int, int]:
    """One process's part of a world: its own seed, its shards renamed into the world's shard folder."""
    from curate.world import make_sample

    size, part, count, per, root = job
    if count == 0:
        return size, 0
    tmp = Path(root) / "parts" / f"{part:03d}"
    make_sample(tmp, seed=1000 * size + part, n_train=count, n_test=0, shard_size=per, image_size=size)
    dest = Path(root) / "shards"
    dest.mkdir(parents=True, exist_ok=True)
    for i, tar in enumerate(sorted((tmp / "train").glob("*.tar"))):
        tar.rename(dest / f"{part:03d}{i:04d}.tar")
    shutil.rmtree(tmp)
    return size, count


@step("preprocess", "fast preprocessing vs open_clip's transform", needs=("worlds",))
def step_preprocess(ctx: Ctx) -> dict[str, Any]:
    """Embeddings through the fast path (uint8 to the device, normalised there) against open_clip's own
    per-image transform with full decoding; and the fast path's pixels against open_clip's, on the device."""
    import torch

    from curate.embed import EmbedConfig, run_embed
    from curate.embed.preprocess import fast_transform, normalize_pixels
    from curate.io.shards import decode_image, iter_shard
    from curate.io.tables import table_metadata
    from curate.models import RANDOM_WEIGHTS, load_model

    et = _bench("embed_throughput")
    p = ctx.params
    worlds = ctx.result("worlds")["result"]["worlds"]
    size, world = max(worlds.items(), key=lambda kv: int(kv[0]))
    urls = sorted(str(u) for u in Path(world["dir"]).glob("*.tar"))[: p["preprocess_shards"]]
    runs = {}
    for name, kw in (("fast", {}), ("open_clip", {"fast_preprocess": False, "draft": False})):
        runs[name] = ctx.work / f"pre-{name}"
        shutil.rmtree(runs[name], ignore_errors=True)
        run_embed(EmbedConfig(shards=urls, run=str(runs[name]), model=p["preprocess_model"], device=ctx.device,
                              batch_size=p["batch_size"], **kw))
    paths = {k: sorted((v / "embeddings").glob("*.parquet"))[0] for k, v in runs.items()}
    used = {k: table_metadata(v).get("preprocess") for k, v in paths.items()}
    cos_mean, cos_min = et.cosines(runs["fast"], runs["open_clip"])
    # pixels: the same decoded images through open_clip's transform (CPU) and the fast path (device)
    m = load_model(p["pixel_model"], RANDOM_WEIGHTS, device="cpu")
    fast = fast_transform(m.preprocess, m.info)
    pix: dict[str, Any] = {"model": p["pixel_model"], "image_size": m.info["image_size"]}
    if fast is not None:
        imgs = [decode_image(s.image_bytes or b"") for s in itertools.islice(iter_shard(urls[0]), p["pixel_images"])]
        ref = torch.stack([m.preprocess(i) for i in imgs])
        mean, std = (torch.tensor(m.info[k], device=ctx.device) for k in ("mean", "std"))
        got = normalize_pixels(torch.stack([fast(i) for i in imgs]).to(ctx.device, non_blocking=True), mean, std,
                               channels_last=ctx.cuda).cpu()
        pix.update(images=len(imgs), bit_identical=bool(torch.equal(got, ref)),
                   max_abs_diff=float((got - ref).abs().max()))
    ok = (cos_mean >= 0.99 and used == {"fast": "curate-fast", "open_clip": "open_clip"} and fast is not None
          and pix["max_abs_diff"] <= 1e-5)
    note = (f"{p['preprocess_model']} on {len(urls)} shards of {size} px, "
            f"{ctx.device}: cosine mean {cos_mean:.4f}, min {cos_min:.4f}; pixels ({p['pixel_model']}): "
            + (f"max diff {pix['max_abs_diff']:.2g}" if fast is not None else "no fast path for this model"))
    return outcome("pass" if ok else "fail", note, world=f"{size} px", shards=len(urls), device=ctx.device,
                   cosine_mean=round(cos_mean, 5), cosine_min=round(cos_min, 5), preprocess=used, pixels=pix)


@step("clipcov", "clipcov cross terms, GPU vs CPU")
def step_clipcov(ctx: Ctx) -> dict[str, Any]:
    """clipcov on a Zipf pool (written as a run, as curate embed writes it) on each device: the same
    selection, the time of each, and the cross terms' time against a plain matrix product of the same
    shapes. Float32 inputs on both devices (so that they can agree), plus the GPU's default (float16
    inputs, float32 accumulation) timed and compared."""
    import tempfile

    import numpy as np

    p = ctx.params
    n, d, k = int(p["clipcov_n"]), int(p["clipcov_d"]), int(p["clipcov_classes"])
    img, txt, labels, centres = zipf_pool(n, d, k, seed=0)
    budget = max(1, int(p["clipcov_fraction"] * n))
    sizes = np.bincount(labels, minlength=k)
    flops = float(2 * (sizes.astype(np.float64) ** 2).sum() * d)
    out: dict[str, Any] = {"n": n, "d": d, "classes": k, "largest_class": int(sizes.max()), "budget": budget,
                           "matmul_gflop": round(flops / 1e9, 1), "devices": {}}
    with tempfile.TemporaryDirectory(prefix="curate-gpu-clipcov-") as tmp:
        run = _write_pool_run(Path(tmp) / "run", img, txt)
        img16 = _stored(img)  # what the pipeline reads back: float16, normalised again
        txt16 = _stored(txt)
        per = {}
        for dev in ["cpu", "cuda"] if ctx.cuda else ["cpu"]:
            per[dev] = _clipcov_on(dev, run, img16, txt16, labels, centres, budget, flops)
            out["devices"][dev] = {key: v for key, v in per[dev].items()
                                   if key not in ("order", "cross", "partition")}
            say(f"clipcov on {dev}: {out['devices'][dev]}")
        if ctx.cuda:
            t0 = time.perf_counter()
            half = _select(run, "cuda", centres, budget, "auto", "gpu-half")
            out["devices"]["cuda"]["select_float16_inputs_s"] = round(time.perf_counter() - t0, 3)
            out["float16_overlap_with_float32"] = round(len(set(half[0]) & set(per["cuda"]["order"])) / budget, 6)
    # the cross terms of a few mid-sized classes against float64 products of the stored embeddings
    problems = []
    for dev, r in per.items():
        errs = []
        got = np.bincount(r["partition"][r["partition"] >= 0], minlength=k)
        for c in [c for c in np.argsort(got, kind="stable") if 2 <= got[c] <= 4000][-3:]:
            idx = np.flatnonzero(r["partition"] == c)
            m = np.maximum(img16[idx] @ txt16[idx].T, 0.0)
            want = (m.sum(0) + m.sum(1)) / len(idx)
            errs.append(float(np.abs(r["cross"][idx] - want).max() / np.abs(want).max()))
        err = max(errs) if errs else None
        out["devices"][dev]["cross_rel_err_vs_float64"] = err
        if err is None or err > 1e-4:
            problems.append(f"{dev}: cross terms off the float64 reference by {err}")
        if len(set(r["order"])) != budget:
            problems.append(f"{dev}: the selection does not have {budget} distinct rows")
    if "cuda" not in per:
        return outcome("fail" if problems else "pass", "; ".join(["no CUDA: the CPU half only", *problems]), **out)
    a, b = per["cpu"], per["cuda"]
    out["same_order"] = a["order"] == b["order"]
    out["same_set"] = set(a["order"]) == set(b["order"])
    out["overlap"] = round(len(set(a["order"]) & set(b["order"])) / budget, 6)
    out["cross_max_rel_diff"] = float(np.abs(a["cross"] - b["cross"]).max() / np.abs(a["cross"]).max())
    if not out["same_set"]:
        problems.append(f"GPU and CPU selections differ ({out['overlap']:.4%} overlap)")
    cpu_s, gpu_s = a["cross_s"], b["cross_s"]
    note = (f"same selection ({'order and set' if out['same_order'] else 'set, not order'}); cross terms "
            f"{cpu_s:.2f} s on the CPU, {gpu_s:.3f} s on the GPU ({cpu_s / gpu_s:.0f}x), the GPU's at "
            f"{b['cross_vs_matmul']:.2f}x the time of a plain matmul of the same shapes")
    return outcome("fail" if problems else "pass", "; ".join(problems) or note, **out)


def _stored(x: Any) -> Any:
    """Rows as curate embed stores them (float16) and select reads them (normalised), in float64."""
    import numpy as np

    y = x.astype(np.float16).astype(np.float64)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def _write_pool_run(run: Path, img: Any, txt: Any, shard_rows: int = 50_000) -> Path:
    """A run folder holding ``img``/``txt`` as float16 embedding tables (and run.json)."""
    import numpy as np
    import pyarrow as pa

    from curate.io.tables import embedding_schema, fixed_list, write_embedding_table
    from curate.rundir import RunDir

    n, d = img.shape
    shards = []
    for s, lo in enumerate(range(0, n, shard_rows)):
        hi = min(n, lo + shard_rows)
        name = f"{s:05d}"
        uid = pa.array([f"{i:032x}" for i in range(lo, hi)])
        table = pa.table({
            "uid": uid, "shard": pa.array([name] * (hi - lo)), "key": pa.array([f"{i:09d}" for i in range(lo, hi)]),
            "position": pa.array(np.arange(hi - lo, dtype=np.int32)), "content_hash": uid,
            "image_emb": fixed_list(img[lo:hi]), "text_emb": fixed_list(txt[lo:hi]),
            "clip_score": pa.array(np.einsum("ij,ij->i", img[lo:hi], txt[lo:hi]).astype(np.float32)),
        }, schema=embedding_schema(d, {"model": "synthetic", "dim": d}))
        write_embedding_table(run / "embeddings" / f"{name}.parquet", table)
        shards.append({"name": name, "url": f"synthetic/{name}.tar"})
    RunDir(run).update("embed", {"model": "synthetic", "shards": shards}, command="gpu_check")
    return run


def _select(run: Path, dev: str, centres: Any, budget: int, dtype: str, name: str) -> tuple[list[int], Any, Any]:
    """``run_selection`` (clipcov, reference) on ``dev``: the pool rows in pick order, the cross terms and the
    classes (zero-shot labels against ``centres``)."""
    import numpy as np
    import pyarrow.parquet as pq

    from curate.select import run_selection

    res = run_selection(run, "clipcov", count=budget, class_text=centres, device=dev, name=name, force=True,
                        options={"dtype": dtype})
    t = pq.read_table(res.path / "scores.parquet", columns=["rank", "cross", "partition"])
    rank = t.column("rank").fill_null(-1).to_numpy()
    picked = np.flatnonzero(rank >= 0)
    return ([int(i) for i in picked[np.argsort(rank[picked])]], t.column("cross").to_numpy(zero_copy_only=False),
            t.column("partition").fill_null(-1).to_numpy())


def _clipcov_on(dev: str, run: Path, img: Any, txt: Any, labels: Any, centres: Any, budget: int, flops: float
                ) -> dict[str, Any]:
    """The whole selection through the pipeline on ``dev`` (float32 inputs), then the cross-term kernel
    class by class against plain matmuls of the same block shapes (warmed up once)."""
    import numpy as np
    import torch

    from curate.select.clipcov import Blocks, cross_block_rows

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    order, cross, part = _select(run, dev, centres, budget, "float32", f"gpu-check-{dev}")
    t_sel = time.perf_counter() - t0
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    blocks = [Blocks(img[idx].astype(np.float32), txt[idx].astype(np.float32), dev, "float32") for idx in classes]
    blocks[0].cross(0, len(classes[0]))  # warm-up
    sync()
    t0 = time.perf_counter()
    for b, idx in zip(blocks, classes, strict=True):
        b.cross(0, len(idx))
    t_cross = time.perf_counter() - t0  # cross() copies its result to the host: synchronised
    t0 = time.perf_counter()
    for b, idx in zip(blocks, classes, strict=True):
        x, y = b.img.held, b.txt.held
        bs = cross_block_rows(len(idx))
        for r in range(0, len(idx), bs):
            x[r : r + bs] @ y.T
    sync()
    t_mm = time.perf_counter() - t0
    return {"select_s": round(t_sel, 3), "cross_s": round(t_cross, 4), "matmul_s": round(t_mm, 4),
            "cross_vs_matmul": round(t_cross / t_mm, 2), "matmul_gflop_per_s": round(flops / t_mm / 1e9, 1),
            "cross_gflop_per_s": round(flops / t_cross / 1e9, 1), "order": order, "cross": cross, "partition": part}


def zipf_pool(n: int, d: int, classes: int, seed: int) -> tuple[Any, Any, Any, Any]:
    """Unit image and caption embeddings around class centres, classes of Zipf(1) sizes (as BENCHMARKS §4)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    prob = 1.0 / np.arange(1, classes + 1)
    labels = rng.choice(classes, size=n, p=prob / prob.sum())
    sigma = np.float32(1.3 / np.sqrt(d))
    img = centres[labels] + sigma * rng.standard_normal((n, d), dtype=np.float32)
    txt = centres[labels] + sigma * rng.standard_normal((n, d), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt, labels, centres


def __getattr__(name: str) -> Any:
    """``SharedDevicesConfig``, made on first use (it subclasses ``EmbedConfig``, whose import loads torch).

    Module level, so that the processes ``--devices`` spawns unpickle it by name.
    """
    if name != "SharedDevicesConfig":
        raise AttributeError(name)
    from curate.embed import EmbedConfig

    @dataclasses.dataclass
    class SharedDevicesConfig(EmbedConfig):
        """``EmbedConfig`` whose device list may name one GPU twice (two processes on one card)."""

        shared_devices: tuple[str, ...] = ()

        def device_list(self) -> list[str]:
            return list(self.shared_devices) or super().device_list()

    SharedDevicesConfig.__module__ = __name__
    SharedDevicesConfig.__qualname__ = name
    globals()[name] = SharedDevicesConfig
    return SharedDevicesConfig


@step("devices", "--devices vs one process", needs=("worlds",))
def step_devices(ctx: Ctx) -> dict[str, Any]:
    """``curate embed --devices all`` (the CLI) and two processes on one device write the tables of one process."""
    import torch

    from curate.embed import EmbedConfig, run_embed

    p = ctx.params
    worlds = ctx.result("worlds")["result"]["worlds"]
    _, world = min(worlds.items(), key=lambda kv: int(kv[0]))
    urls = sorted(str(u) for u in Path(world["dir"]).glob("*.tar"))[: p["devices_shards"]]
    model, dev, bs = p["devices_model"], ctx.device, p["batch_size"]
    runs: dict[str, dict[str, Any]] = {}

    def timed(label: str, run: Path, fn: Callable[[], Any]) -> None:
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        fn()
        runs[label] = {"seconds": round(time.perf_counter() - t0, 1)}
        if label != "one process":
            runs[label]["diff"] = _compare_runs(ctx.work / "dev-one", run)

    timed("one process", ctx.work / "dev-one", lambda: run_embed(
        EmbedConfig(shards=urls, run=str(ctx.work / "dev-one"), model=model, device=dev, batch_size=bs)))

    def cli() -> None:
        cmd = [sys.executable, "-m", "curate.cli.app", "embed", *urls, "--run", str(ctx.work / "dev-cli"),
               "--model", model, "--devices", p["devices_cli"], "--batch-size", str(bs), "--json"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
        if proc.returncode != 0:
            raise RuntimeError(f"curate embed --devices {p['devices_cli']} exited with {proc.returncode}: "
                               + (proc.stderr.strip().splitlines() or [""])[-1])

    timed(f"--devices {p['devices_cli']} (CLI)", ctx.work / "dev-cli", cli)
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    shared = __getattr__("SharedDevicesConfig")
    if gpus == 1 or (not gpus and p["devices_two_on_cpu"]):  # --devices all was one process: run two on it
        two = ("cuda:0", "cuda:0") if gpus else ("cpu", "cpu")
        timed(f"two processes on {two[0]}", ctx.work / "dev-two", lambda: run_embed(
            shared(shards=urls, run=str(ctx.work / "dev-two"), model=model, batch_size=bs, shared_devices=two)))
    else:  # what the GPU machine runs, short of running it: the config names two devices and survives pickling
        cfg = pickle.loads(pickle.dumps(shared(shards=urls, run="unused", model=model, shared_devices=("cpu", "cpu"))))
        if cfg.device_list() != ["cpu", "cpu"]:
            raise RuntimeError(f"SharedDevicesConfig lists {cfg.device_list()}, not two devices")
    bad = {k: v["diff"] for k, v in runs.items() if v.get("diff")}
    others = [k for k in runs if k != "one process"]
    note = (f"{len(urls)} shards, {model} on {dev}: {' and '.join(others)} "
            + (f"differ: {bad}" if bad else "bit-identical to one process"))
    return outcome("fail" if bad else "pass", note, shards=len(urls), gpus=gpus, runs=runs)


def _compare_runs(a: Path, b: Path) -> list[str]:
    """What differs between two runs' embedding tables (every column; the metadata but timestamps)."""
    import pyarrow.parquet as pq

    fa = {f.name: f for f in sorted((a / "embeddings").glob("*.parquet"))}
    fb = {f.name: f for f in sorted((b / "embeddings").glob("*.parquet"))}
    if fa.keys() != fb.keys() or not fa:
        return [f"tables {sorted(fa)} vs {sorted(fb)}"]
    diff = []
    for name in fa:
        ta, tb = pq.read_table(fa[name]), pq.read_table(fb[name])
        diff += [f"{name}:{c}" for c in ta.column_names if c not in tb.column_names or not ta[c].equals(tb[c])]
        ma, mb = (json.loads((t.schema.metadata or {}).get(b"curate", b"{}")) for t in (ta, tb))
        diff += [f"{name}:metadata.{k}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
    return diff


@step("embed", "embed throughput", needs=("worlds",))
def step_embed(ctx: Ctx) -> dict[str, Any]:
    """Decode-only and ``curate embed`` (random weights) per world, model, precision and decode workers."""
    import torch

    from curate.embed import EmbedConfig, run_embed
    from curate.embed.runner import decode_workers
    from curate.models import RANDOM_WEIGHTS

    et = _bench("embed_throughput")
    p = ctx.params
    device = ctx.device
    default = decode_workers(None, device, torch.get_num_threads())
    counts: list[tuple[str, int]] = []
    for w in p["workers"]:
        label, num = ("default", default) if w == "default" else (str(w), int(w))
        if num not in [c for _, c in counts]:
            counts.append((label, num))
        else:
            say(f"--workers {w} is curate's default here ({default}): measured once")
    sampler = GpuSampler() if ctx.cuda else None
    worlds = {size: (w, sorted(str(u) for u in Path(w["dir"]).glob("*.tar")))
              for size, w in ctx.result("worlds")["result"]["worlds"].items()}
    draft = min(_input_size(m) for m in p["models"])  # decode-only decodes at the scale embed does
    decode = {}
    for size, (_, urls) in worlds.items():
        for _, num in counts:
            n, sec = et.decode_only(urls, num, draft)
            decode[(size, num)] = n / sec
            say(f"{size} px, decode-only, {num} workers: {n} images in {sec:.2f} s = {n / sec:,.0f} images/s")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for model in p["models"]:
        warm = True
        for precision in p["precisions"]:
            for size, (world, urls) in worlds.items():
                if warm:  # first use of the model's kernels and of the pinned-memory path: not timed
                    _embed_run(run_embed, EmbedConfig, urls[: p["warmup_shards"]], ctx.work / "warmup", model,
                               RANDOM_WEIGHTS, device, precision, default, p["batch_size"])
                    warm = False
                # every decode-worker count for the first model and precision, curate's default for the others
                first = (model, precision) == (p["models"][0], p["precisions"][0])
                for label, num in counts if first else counts[:1]:
                    if ctx.cuda:
                        torch.cuda.reset_peak_memory_stats()
                    with sampler.window() if sampler else contextlib.nullcontext() as win:
                        res = _embed_run(run_embed, EmbedConfig, urls, ctx.work / "embed-run", model, RANDOM_WEIGHTS,
                                         device, precision, num, p["batch_size"])
                    rate = res["images"] / res["seconds"]
                    row = {"world": f"{size} px", "model": model, "precision": res["precision"], "workers": num,
                           "workers_label": label, "images": res["images"], "seconds": round(res["seconds"], 2),
                           "images_per_s": round(rate, 1), "decode_only_per_s": round(decode[(size, num)], 1),
                           "ratio": round(rate / decode[(size, num)], 3)}
                    if win is not None:
                        row["gpu_busy"] = win.busy(res["end"] - res["seconds"], res["end"])
                        row["gpu_samples"] = win.count
                    if ctx.cuda:
                        row["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    rows.append(row)
                    say(f"{row['world']}, {model} {row['precision']}, {num} workers: {rate:,.0f} images/s "
                        f"({row['ratio']:.0%} of decode-only), GPU busy {row.get('gpu_busy')}")
                    if res["images"] != world["samples"] or res["failed"] or not res["unit_norm"]:
                        problems.append(f"{row['world']} {model} {precision} workers {num}: {res['images']} of "
                                        f"{world['samples']} written, failed {res['failed']}, "
                                        f"unit-norm finite embeddings: {res['unit_norm']}")
    if sampler and sampler.kind:
        how = f"GPU busy sampled with {sampler.kind}"
    else:
        how = "GPU busy not sampled (" + ("no NVML or nvidia-smi" if ctx.cuda else "no CUDA") + ")"
    return outcome("fail" if problems else "pass", "; ".join(problems) or f"{len(rows)} runs; {how}", runs=rows,
                   default_workers=default, gpu_sampler=sampler.kind if sampler else None)


def _embed_run(run_embed: Any, config: Any, urls: list[str], run: Path, model: str, pretrained: str, device: str,
               precision: str, workers: int, batch_size: int) -> dict[str, Any]:
    """One ``run_embed`` into a fresh run folder; what it wrote and whether its embeddings are sane."""
    import numpy as np

    from curate.io.tables import read_embeddings, to_numpy_matrix

    shutil.rmtree(run, ignore_errors=True)
    res = run_embed(config(shards=urls, run=str(run), model=model, pretrained=pretrained, device=device,
                           precision=precision, workers=workers, batch_size=batch_size))
    end = time.monotonic()
    emb = to_numpy_matrix(read_embeddings(run, ["image_emb"]).column("image_emb"))
    norms = np.linalg.norm(emb, axis=1)
    meta = json.loads((run / "run.json").read_text())["embed"]
    return {"images": res.samples_written, "seconds": res.seconds, "end": end, "failed": res.failed,
            "unit_norm": bool(np.isfinite(emb).all() and np.abs(norms - 1).max() < 1e-2),
            "precision": meta.get("precision")}


@step("ray", "GPU Ray actors", needs=("worlds",),
      cuda_only="no CUDA (the Ray engine on a CPU is covered by tests/test_engines_ray.py)")
def step_ray(ctx: Ctx) -> dict[str, Any]:
    """``--engine ray`` with GPU actors writes the tables of one process (where Ray is installed)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return outcome("skipped", "ray not installed: its wheel (76 MiB) does not fit in what travels to the machine")
    from curate.embed import EmbedConfig, run_embed

    p = ctx.params
    worlds = ctx.result("worlds")["result"]["worlds"]
    _, world = min(worlds.items(), key=lambda kv: int(kv[0]))
    urls = sorted(str(u) for u in Path(world["dir"]).glob("*.tar"))[: p["devices_shards"]]
    one, on_ray = ctx.work / "ray-one", ctx.work / "ray-run"
    for r in (one, on_ray):
        shutil.rmtree(r, ignore_errors=True)
    model = p["devices_model"]
    run_embed(EmbedConfig(shards=urls, run=str(one), model=model, device="cuda", batch_size=p["batch_size"]))
    t0 = time.perf_counter()
    run_embed(EmbedConfig(shards=urls, run=str(on_ray), model=model, device="cuda", batch_size=p["batch_size"],
                          engine="ray", ray_num_cpus=os.cpu_count()))
    diff = _compare_runs(one, on_ray)
    return outcome("fail" if diff else "pass", f"differ: {diff}" if diff else "bit-identical to one process",
                   seconds=round(time.perf_counter() - t0, 1), diff=diff)


@step("pytest_cuda", "tests with CUDA branches", cuda_only="no CUDA: on a CPU these tests run in make test")
def step_pytest_cuda(ctx: Ctx) -> dict[str, Any]:
    """Whole test files whose code takes a CUDA branch when a GPU is present (device auto, cuda checks)."""
    files = [f for f in ctx.params["pytest_cuda_files"] if (REPO / f).exists()]
    if not files:
        return outcome("fail", "none of the listed test files exists")
    rc, out = _pytest(files)
    counts = _pytest_counts(out)
    return outcome("pass" if rc == 0 else "fail", _pytest_line(out, rc), files=files, counts=counts)


# ---------------------------------------------------------------------------------------------------------
# helpers


class GpuSampler:
    """GPU utilisation sampled in a thread (NVML, else nvidia-smi): the share of time a kernel was running."""

    def __init__(self, index: int = 0, interval: float = 0.1) -> None:
        self.interval, self.kind, self._nvml, self._handle = interval, None, None, None
        self.index = index
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml, self.kind = pynvml, "NVML"
        except Exception:
            if shutil.which("nvidia-smi"):
                self.kind, self.interval = "nvidia-smi", max(interval, 0.25)

    def read(self) -> float | None:
        try:
            if self._nvml is not None:
                return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            if self.kind == "nvidia-smi":
                out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
        except Exception:
            return None
        return None

    @contextlib.contextmanager
    def window(self) -> Iterator[_Window]:
        """Samples taken while the ``with`` block runs."""
        win = _Window()
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                v = self.read()
                if v is not None:
                    win.samples.append((time.monotonic(), v))
                stop.wait(self.interval)

        th = threading.Thread(target=loop, name="gpu-sampler", daemon=True)
        if self.kind:
            th.start()
        try:
            yield win
        finally:
            stop.set()
            if self.kind:
                th.join()


@dataclasses.dataclass
class _Window:
    samples: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (time.monotonic(), percent)
    count: int = 0  # samples in the last ``busy`` window

    def busy(self, start: float, end: float) -> float | None:
        """Mean utilisation (0-1) of the samples taken from ``start`` to ``end`` (``time.monotonic``)."""
        vals = [v for t, v in self.samples if start <= t <= end]
        self.count = len(vals)
        return round(sum(vals) / len(vals) / 100, 3) if vals else None


def _bench(name: str) -> Any:
    """A module of benchmarks/ (its helpers are reused: one definition of decode-only and of the cosines)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    return __import__(name)


def _input_size(model: str) -> int:
    """The model's square input side, from its open_clip config (no weights are made)."""
    import open_clip

    from curate.models import SAMPLE_MODEL, sample_model_paths

    cfg = (json.loads(sample_model_paths()[0].read_text()) if model == SAMPLE_MODEL
           else open_clip.get_model_config(model))
    size = cfg["vision_cfg"]["image_size"]
    return int(min(size) if isinstance(size, list | tuple) else size)


def _pytest(args: list[str]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *args]
    say("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    print(out[-20_000:], flush=True)
    return proc.returncode, out


def _pytest_counts(out: str) -> dict[str, int]:
    last = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error|skipped)", ln)), "")
    return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed)", last)}


def _pytest_line(out: str, rc: int) -> str:
    last = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error|skipped)", ln)), "")
    return f"exit {rc}: {last.strip('= ')}" if last else f"exit {rc}, no summary line"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return None


def _gpu_info(i: int) -> dict[str, Any]:
    import torch

    pr = torch.cuda.get_device_properties(i)
    return {"name": pr.name, "memory_gib": round(pr.total_memory / 2**30, 1), "capability": f"{pr.major}.{pr.minor}",
            "multiprocessors": pr.multi_processor_count}


def _nvidia_smi(field: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0]
    return None


def _commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    return "?"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# the report


def render_md(doc: dict[str, Any]) -> str:
    """gpu.md: the machine, one line per step, and the tables of the steps that measured something."""
    steps = doc["steps"]
    env = (steps.get("env") or {}).get("result") or {}
    gpus = env.get("gpus") or []
    card = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus) or "no GPU"
    lines = [
        "# curate GPU check", "",
        f"- mode: {doc['mode']}{' (tiny sizes)' if doc['mode'] == 'cpu' else ''}; {doc['started']}, commit "
        f"{doc['commit']}; {doc.get('seconds', 0):.0f} s of a {doc['params']['budget_s']} s budget",
        f"- card: {card}; driver {env.get('driver') or '-'}; torch {env.get('torch', '?')} (CUDA "
        f"{env.get('torch_cuda') or '-'}), Python {env.get('python', '?')}, open_clip "
        f"{(env.get('packages') or {}).get('open_clip_torch') or '?'}",
        f"- CPU: {env.get('cpus', '?')} × {env.get('cpu_model', '?')}, {env.get('ram_gib', '?')} GiB RAM",
        f"- wheels: {doc.get('wheels') or '-'}", "",
        "| step | status | seconds | note |", "|---|---|---:|---|",
    ]
    for name, st in steps.items():
        note = str(st.get("note", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {st['status']} | {st.get('seconds', 0):.0f} | {note} |")
    runs = ((steps.get("embed") or {}).get("result") or {}).get("runs") or []
    if runs:
        lines += ["", "## embed throughput (random weights)", "",
                  "| world | model | precision | decode workers | images | images/s | decode-only images/s "
                  "| embed / decode-only | GPU busy | GPU peak GiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in runs:
            busy = f"{r['gpu_busy']:.0%}" if r.get("gpu_busy") is not None else "-"
            wl = f"{r['workers']} ({r['workers_label']})" if r["workers_label"] == "default" else str(r["workers"])
            lines.append(f"| {r['world']} | {r['model']} | {r['precision']} | {wl} | {r['images']:,} | "
                         f"{r['images_per_s']:,.0f} | {r['decode_only_per_s']:,.0f} | {r['ratio']:.0%} | {busy} | "
                         f"{r.get('gpu_peak_gib', '-')} |")
    cc = (steps.get("clipcov") or {}).get("result") or {}
    if cc.get("devices"):
        lines += ["", f"## clipcov: {cc['n']:,} × {cc['d']} pool, {cc['classes']} Zipf classes (largest "
                  f"{cc['largest_class']:,}), budget {cc['budget']:,}; plain matmul of the same shapes: "
                  f"{cc['matmul_gflop']:,} GFLOP", "",
                  "| device | select s (float32 inputs) | select s (float16 inputs) | cross terms s | plain matmul s | "
                  "cross / matmul | matmul GFLOP/s | cross terms vs float64 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for dev, r in cc["devices"].items():
            err = r.get("cross_rel_err_vs_float64")
            lines.append(f"| {dev} | {r['select_s']} | {r.get('select_float16_inputs_s', '-')} | {r['cross_s']} | "
                         f"{r['matmul_s']} | {r['cross_vs_matmul']} | {r['matmul_gflop_per_s']:,} | "
                         f"{'-' if err is None else f'{err:.1e}'} |")
        if "float16_overlap_with_float32" in cc:
            share = cc["float16_overlap_with_float32"]
            lines.append(f"\nOn the GPU, float16 inputs (the default there) keep {share:.4%} of the float32-input "
                         "selection.")
        if "same_set" in cc:
            lines.append(f"\nSame selection: order {cc['same_order']}, set {cc['same_set']} (overlap "
                         f"{cc['overlap']:.4%}); largest cross-term difference GPU vs CPU "
                         f"{cc['cross_max_rel_diff']:.2e} (relative).")
    for name in ("preprocess", "devices", "ray", "pytest_gpu", "pytest_cuda"):
        st = steps.get(name)
        if st and st.get("note"):
            lines += ["", f"**{name}** ({st['status']}): {st['note']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# running


def precheck(name: str, results: dict[str, dict[str, Any]], deadline: float) -> dict[str, Any] | None:
    """The outcome of a step that is not to run (what it needs failed, no CUDA, no time left), else None."""
    st = STEPS[name]
    env = results.get("env") or {}
    if name != "env" and env.get("status") != "pass":
        return {"status": "not run", "note": "the env step did not pass", "result": {}}
    if st.cuda_only and not (env.get("result") or {}).get("cuda_available"):
        return {"status": "skipped", "note": st.cuda_only, "result": {}}
    failed = [n for n in st.needs if (results.get(n) or {}).get("status") != "pass"]
    if failed:
        return {"status": "not run", "note": f"needs {', '.join(failed)}, which did not pass", "result": {}}
    if time.time() > deadline - 5:
        return {"status": "not run", "note": "out of time (--budget)", "result": {}}
    return None


def _results(work: Path) -> dict[str, dict[str, Any]]:
    return {f.stem: json.loads(f.read_text()) for f in (work / "results").glob("*.json")}


def run_child(names: list[str], work: Path, cpu_mode: bool, deadline: float) -> int:
    """Run steps one after the other in this process; each writes work/results/NAME.json."""
    params = json.loads((work / "params.json").read_text())
    ctx = Ctx(params, work, cpu_mode)
    for name in names:
        res = precheck(name, _results(work), deadline)
        if res is None:
            say(f"--- {name}: {STEPS[name].title}")
            t0 = time.perf_counter()
            try:
                res = STEPS[name].run(ctx)
            except Exception as exc:
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                res = outcome("error", f"{type(exc).__name__}: {first}")
            res["seconds"] = round(time.perf_counter() - t0, 1)
        _atomic_write(work / "results" / f"{name}.json", json.dumps(res, indent=1, default=str))
    return 0


def _run_group(names: list[str], work: Path, cpu_mode: bool, limit: float, deadline: float,
               env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Steps in one child process (its own process group), killed at ``limit`` seconds."""
    log = work / "logs" / f"{len(list((work / 'logs').iterdir())):02d}-{'+'.join(names)}.log"
    for name in names:
        (work / "results" / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(names), "--work", str(work),
           "--deadline", str(deadline), *(["--cpu"] if cpu_mode else [])]
    t0 = time.perf_counter()
    timed_out = False
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
        finally:
            _kill_group(proc)  # and what it left: decode workers, device processes
    out: dict[str, dict[str, Any]] = {}
    done, ended = _results(work), False
    for name in names:
        if name in done:
            out[name] = done[name]
        elif not ended:  # the step that was running when the process ended
            ended = True
            tail = " ".join(log.read_text(errors="replace").strip().splitlines()[-1:])
            note = (f"stopped after {limit:.0f} s" if timed_out
                    else f"its process ended with exit {rc} and no result: {tail}")
            out[name] = {"status": "timeout" if timed_out else "error", "note": note, "result": {},
                         "seconds": round(time.perf_counter() - t0, 1)}
        else:
            out[name] = {"status": "not run", "note": "an earlier step in its process did not finish", "result": {}}
    return out


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the child's process group, then SIGKILL to whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _write_out(out: Path, work: Path, doc: dict[str, Any]) -> None:
    _atomic_write(out / "gpu.json", json.dumps(doc, indent=1, default=str) + "\n")
    _atomic_write(out / "gpu.md", render_md(doc))
    parts = []
    for log in sorted((work / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        cut = f"[... first {len(text) - LOG_TAIL_BYTES} characters left out]\n" * (len(text) > LOG_TAIL_BYTES)
        parts.append(f"===== {log.stem} =====\n{cut}{text[-LOG_TAIL_BYTES:]}")
    _atomic_write(out / "gpu.log", "\n".join(parts) + "\n")


def _parse_set(items: list[str], params: dict[str, Any]) -> None:
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set takes KEY=VALUE, got {item!r}")
        if key.startswith("timeouts."):
            params["timeouts"][key.split(".", 1)[1]] = float(value)
            continue
        if key not in params:
            raise SystemExit(f"error: unknown parameter {key!r}; known: {', '.join(sorted(params))}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="Tiny sizes on the CPU (steps that need CUDA are skipped).")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu-check-out"),
                    help="Folder for gpu.json, gpu.md, gpu.log (default: $OUT, else ./gpu-check-out).")
    ap.add_argument("--work", default=None, help="Scratch folder (default: a temporary one, removed at the end).")
    ap.add_argument("--steps", default=None,
                    help=f"Comma-separated subset of: {', '.join(STEPS)} (and the steps they need).")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a size or limit of the mode's profile (JSON value), e.g. world_n=5000, "
                    "timeouts.embed=300.")
    ap.add_argument("--budget", type=float, default=None, help="Seconds for the whole check (default: the profile's).")
    ap.add_argument("--wheels", default="", help="What the wrapper installed (recorded in the report).")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child.split(","), Path(args.work), args.cpu, args.deadline)

    mode = "cpu" if args.cpu else "gpu"
    params = json.loads(json.dumps(PROFILES[mode]))
    _parse_set(args.set, params)
    if args.budget is not None:
        params["budget_s"] = args.budget
    wanted = list(STEPS)
    if args.steps:
        asked = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = [s for s in asked if s not in STEPS]
        if unknown:
            raise SystemExit(f"error: unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")
        closure = set(asked) | {"env"}
        for s in asked:
            closure |= set(STEPS[s].needs)
        wanted = [s for s in STEPS if s in closure]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="curate-gpu-check-"))
    for sub in ("results", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    _atomic_write(work / "params.json", json.dumps(params))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "CURATE_OFFLINE": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU run stays on the CPU on a GPU machine too
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*filter(None, env.get("PYTHONPATH", "").split(os.pathsep)),
                                                       str(REPO)]))
    start = time.perf_counter()
    deadline = time.time() + float(params["budget_s"])
    doc: dict[str, Any] = {"format": FORMAT, "mode": mode, "started": dt.datetime.now().isoformat(timespec="seconds"),
                           "commit": _commit(), "wheels": args.wheels, "params": params,
                           "steps": {n: {"status": "not run", "note": "not asked for (--steps)", "result": {}}
                                     for n in STEPS if n not in wanted}}
    say(f"curate GPU check ({mode}): steps {', '.join(wanted)}; budget {params['budget_s']:.0f} s; results in {out}; "
        + ("each step in its own process" if params["isolate"] else "the steps in one process"))
    todo = list(wanted)
    try:
        while todo:
            pre = precheck(todo[0], {**doc["steps"]}, deadline)
            if pre is not None:  # decided here: no process to start
                group, results = todo[:1], {todo[0]: pre}
            else:
                group = todo[:1] if params["isolate"] else todo
                limit = min(sum(float(params["timeouts"].get(n, 60)) for n in group), deadline - time.time())
                say(f"--- {', '.join(group)} (up to {limit:.0f} s)")
                results = _run_group(group, work, args.cpu, limit, deadline, env)
            for name in group:
                doc["steps"][name] = results[name]
                r = results[name]
                say(f"    {name}: {r['status']} ({r.get('seconds', 0):.0f} s) {r.get('note', '')}")
            todo = todo[len(group):]
            doc["steps"] = {n: doc["steps"][n] for n in STEPS if n in doc["steps"]}
            doc["seconds"] = round(time.perf_counter() - start, 1)
            _write_out(out, work, doc)
    finally:
        doc["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        doc["seconds"] = round(time.perf_counter() - start, 1)
        _write_out(out, work, doc)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    print(render_md(doc), flush=True)
    bad = [n for n, s in doc["steps"].items() if s["status"] in ("fail", "error", "timeout")]
    say(f"GPU check: {len(bad)} step(s) failed: {', '.join(bad)}" if bad else "GPU check: no step failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
