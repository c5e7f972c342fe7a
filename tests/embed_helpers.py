"""Helpers for the embed, inspect and model tests: tiny models, defect shards, table comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from curate.io.tarwrite import write_members, write_tar
from curate.models import register_model_config, sample_model_paths
from tests.conftest import jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "shards" / "sample"
CURATE = [sys.executable, "-m", "curate.cli.app"]

#: A tiny open_clip architecture (random weights) for tests that must not depend on the sample model.
TINY_ARCH = "curate-test-tiny"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
#: Content columns compared between runs (everything except Parquet metadata).
CONTENT = ("uid", "shard", "key", "position", "content_hash", "image_emb", "text_emb", "clip_score")


def sample_model_ready() -> bool:
    """True when the built-in tiny CLIP's weights exist (scripts/train_sample_model.py writes them)."""
    return all(p.exists() for p in sample_model_paths())


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of ``TINY_ARCH`` (deterministic for ``seed``)."""
    import open_clip

    register_model_config(TINY_ARCH, TINY_CONFIG)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random ``TINY_ARCH`` state dict to ``path`` (.safetensors, or torch.save for .pt/.bin)."""
    state = tiny_state_dict(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def make_local_dir(folder: Path, seed: int = 0) -> Path:
    """An open_clip ``local-dir:`` model folder (config + safetensors weights) of ``TINY_ARCH``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_tiny_checkpoint(folder / "open_clip_model.safetensors", seed)
    return folder


def defect_shard(path: Path) -> dict[str, int]:
    """A shard with 6 good samples and one of each common defect; returns the expected drop counts."""
    good = [(f"g{i}", {"jpg": jpeg_bytes(c), "txt": f"a {c} square".encode()})
            for i, c in enumerate(["red", "green", "blue", "yellow", "purple", "orange"])]
    members = []
    for key, m in good[:3]:
        members += [(f"{key}.{ext}", data) for ext, data in m.items()]
    members += [("bad1.jpg", b"not a jpeg"), ("bad1.txt", b"broken image")]  # corrupt_image
    members += [("bad2.txt", b"caption without image")]  # missing_image
    members += [("bad3.jpg", jpeg_bytes("white"))]  # missing_caption (the shard has captions)
    members += [("bad4.jpg", jpeg_bytes("black")), ("bad4.txt", b"\xff\xfe bad utf8")]  # caption_not_utf8
    for key, m in good[3:]:
        members += [(f"{key}.{ext}", data) for ext, data in m.items()]
    write_members(path, members)
    return {"seen": 10, "written": 6, "dropped_corrupt_image": 1, "dropped_missing_image": 1,
            "dropped_missing_caption": 1, "dropped_caption_not_utf8": 1}


def image_only_shard(path: Path, n: int = 5, size: int = 32) -> Path:
    """A shard of images without captions (MoCo-style data)."""
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    write_tar(path, [(f"{i:04d}", {"jpg": jpeg_bytes(colors[i % len(colors)], size)}) for i in range(n)])
    return path


def read_content(path: Path) -> dict[str, list[Any]]:
    """The content columns of one embedding table as Python lists."""
    return pq.read_table(path, columns=list(CONTENT)).to_pydict()


def run_tables(run: Path) -> dict[str, dict[str, list[Any]]]:
    """Every finished embedding table of a run by shard name."""
    return {p.stem: read_content(p) for p in sorted((run / "embeddings").glob("*.parquet"))
            if not p.name.startswith(".")}


def matrix(col: list[Any]) -> np.ndarray:
    """A list-of-lists embedding column as a float32 matrix."""
    return np.asarray(col, dtype=np.float32)


def cli_in_new_session(argv: list[str]) -> None:
    """``curate ARGV`` in this (forked) process as a session leader, so that a test can kill it with its workers."""
    import multiprocessing

    os.setsid()
    multiprocessing.set_start_method("fork", force=True)  # as in a fresh `curate` process (not the server's)
    from curate.cli.app import main

    sys.exit(main(argv))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``curate ARGS`` in a subprocess from the repo root; capture text output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "CURATE_OFFLINE": "1", **(env or {})}
    return subprocess.run([*CURATE, *args], capture_output=True, text=True, cwd=REPO, env=full_env,
                          timeout=timeout, check=False)


def terminal_sigint() -> None:
    """In a child before exec: SIGINT as a terminal's foreground job has it (default action).

    A test suite started in the background of a non-interactive shell (``cmd &``) inherits SIGINT
    ignored, and a process that starts with SIGINT ignored keeps ignoring it (Python then installs no
    KeyboardInterrupt handler): a Ctrl-C test would see the command finish with exit 0."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
