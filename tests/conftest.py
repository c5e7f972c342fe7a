"""Shared fixtures: offline mode, tiny shard builders, GPU marker handling."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CURATE_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see curate/cli/__init__.py

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from curate.io.tarwrite import write_tar

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU tests run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def jpeg_bytes(color: str, size: int = 32, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A small solid-colour image encoded in ``fmt``."""
    img = Image.new("RGB", (size, size), color)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., list[str]]:
    """Write ``n_shards`` tars of ``per_shard`` solid-colour samples; return their paths."""

    def _make(n_shards: int = 2, per_shard: int = 10, captions: bool = True, folder: str = "shards",
              size: int = 32) -> list[str]:
        d = tmp_path / folder
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for s in range(n_shards):
            samples = []
            for i in range(per_shard):
                c = COLORS[(s * per_shard + i) % len(COLORS)]
                members = {"jpg": jpeg_bytes(c, size)}
                if captions:
                    members["txt"] = f"a photo of something {c} number {i}".encode()
                samples.append((f"{s:03d}{i:05d}", members))
            p = d / f"{s:05d}.tar"
            write_tar(p, samples)
            paths.append(str(p))
        return paths

    return _make
