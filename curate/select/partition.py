"""Partitions of the pool into pseudo-classes: zero-shot labels from class names, or k-means.

Zero-shot (ClipCov's default; docs/select.md, "Partition"): every class name is put into each prompt template,
the prompts are encoded with the run's model, each prompt embedding is normalised, the class's
prompts are averaged and re-normalised; a sample's class is ``argmax_k <image, class_k>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.engines.base import Engine
from curate.errors import InputError, UsageError
from curate.run import atomic_path

_BLOCK_ROWS = 1 << 16


def parse_partition(spec: str) -> tuple[str, int | None]:
    """``"imagenet"`` → ("imagenet", None); ``"kmeans:K"`` → ("kmeans", K)."""
    if spec == "imagenet":
        return "imagenet", None
    if spec.startswith("kmeans:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise UsageError(f"bad --partition {spec!r}: K in kmeans:K must be a positive integer")
        return "kmeans", k
    raise UsageError(f"bad --partition {spec!r}: use 'imagenet' or 'kmeans:K' (or --classes FILE)")


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"classes file not found: {path}") from None
    except UnicodeDecodeError:
        raise InputError(f"classes file {path} is not UTF-8 text") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise InputError(f"classes file {path} holds no class names (one per line)")
    if len(set(names)) != len(names):
        raise InputError(f"classes file {path} repeats class names; list each class once")
    return names


#: The class list a world of shards may come with (``curate shards make-sample`` writes one beside them).
CLASS_LIST = "classnames.txt"


def shard_class_list(run_root: str | os.PathLike[str], max_folders: int = 16) -> Path | None:
    """A class list that came with the run's shards: ``classnames.txt`` in the folder of a local shard or
    the folder above it (``DIR/classnames.txt`` beside ``DIR/train/*.tar``, as make-sample writes).

    Only local shards are looked at, and only the first ``max_folders`` distinct folders (a few stats).
    """
    from curate.embed.state import run_shard_urls
    from curate.run import RunDir

    folders: list[Path] = []
    for url in run_shard_urls(RunDir(run_root)):
        if url.startswith("pipe:") or ("://" in url and not url.startswith("file://")):
            continue
        folder = Path(url.removeprefix("file://")).parent
        if folder not in folders:
            folders.append(folder)
            if len(folders) >= max_folders:
                break
    for folder in folders:
        for d in (folder, folder.parent):
            if (d / CLASS_LIST).is_file():
                return d / CLASS_LIST
    return None


def _render(template: str | Callable[[str], str], name: str) -> str:
    return template(name) if callable(template) else template.format(name)


def encode_class_names(
    encode_texts: Callable[[list[str]], Any],
    class_names: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    batch_size: int = 1024,
) -> np.ndarray:
    """Prompt-ensemble class embeddings ``(K, d)``: per-prompt normalised, averaged, re-normalised."""
    prompts = [_render(t, c) for c in class_names for t in templates]
    chunks = []
    for i in range(0, len(prompts), batch_size):
        emb = encode_texts(prompts[i : i + batch_size])
        chunks.append(np.asarray(emb.detach().cpu().numpy() if hasattr(emb, "detach") else emb, np.float32))
    emb = np.concatenate(chunks).reshape(len(class_names), len(templates), -1)
    emb /= np.maximum(np.linalg.norm(emb, axis=2, keepdims=True), 1e-12)
    out = emb.mean(axis=1)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def model_class_text(
    run_root: str | os.PathLike[str], class_names: Sequence[str] | None, device: str = "cpu"
) -> tuple[np.ndarray, list[str]]:
    """Class embeddings from the model that embedded the run (ImageNet-1k names when ``None``).

    Cached in ``RUN/cache/class_text/<hash>.npy`` keyed by model, class names and templates.
    """
    from curate import models  # lazy: imports torch/open_clip

    templates: Sequence[Any]
    if class_names is None:
        class_names, templates = models.imagenet_zeroshot_metadata()
    else:
        templates = models.imagenet_zeroshot_metadata()[1]
    class_names = list(class_names)
    loaded = models.load_model_from_run(run_root, device=device)
    rendered = [_render(t, "{}") for t in templates]
    key = json.dumps([loaded.info, class_names, rendered], sort_keys=True, default=str)
    cache = Path(run_root) / "cache" / "class_text" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if cache.exists():
        return np.load(cache), class_names
    emb = encode_class_names(loaded.encode_texts, class_names, templates)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb)
    return emb, class_names


def _argmax_task(span: tuple[int, int], image: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Engine task: ``argmax_k <image_j, class_text_k>`` for rows ``span`` (one block; first index on ties).

    torch, not numpy: its CPU products do not depend on the thread count, so every engine gets the same labels.
    """
    import torch

    s, e = span
    with warnings.catch_warnings():  # read-only inputs (Ray's object store) are only read here
        warnings.simplefilter("ignore", UserWarning)
        x, c = torch.from_numpy(image[s:e]), torch.from_numpy(class_text)
    return torch.argmax(x @ c.T, dim=1).numpy().astype(np.int32)


def zeroshot_labels(
    image: np.ndarray, valid: np.ndarray, class_text: np.ndarray, engine: Engine | None = None
) -> np.ndarray:
    """``argmax_k <image_j, class_text_k>`` per sample (block-wise); -1 for invalid rows.

    With a distributed ``engine`` the blocks (the same ones) run as its tasks.
    """
    if class_text.ndim != 2 or class_text.shape[1] != image.shape[1]:
        raise InputError(
            f"class embeddings have shape {class_text.shape} but image embeddings have dim {image.shape[1]}; "
            "encode the classes with the run's model"
        )
    ct = np.ascontiguousarray(class_text, dtype=np.float32)
    labels = np.full(len(image), -1, dtype=np.int32)
    spans = [(s, min(len(image), s + _BLOCK_ROWS)) for s in range(0, len(image), _BLOCK_ROWS)]
    if engine is not None and engine.distributed and len(spans) > 1:
        for (s, e), lab in zip(spans, engine.map(_argmax_task, spans, {"image": image, "class_text": ct}), strict=True):
            labels[s:e] = lab
    else:
        for span in spans:
            labels[span[0] : span[1]] = _argmax_task(span, image, ct)
    labels[~valid] = -1
    return labels


def kmeans(x: np.ndarray, valid: np.ndarray, k: int, seed: int, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Spherical faiss k-means on the valid rows: ``(labels with -1 for invalid, centroids (k, d))``."""
    import faiss  # lazy: heavy import

    idx = np.flatnonzero(valid)
    if k > len(idx):
        raise UsageError(f"k-means with K={k} needs at least {k} valid samples, the pool has {len(idx)}")
    data = np.ascontiguousarray(x[idx], dtype=np.float32)
    km = faiss.Kmeans(
        data.shape[1],
        k,
        niter=niter,
        seed=int(seed) % (2**31),
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small pools are fine; silences faiss's stderr warning
    )
    km.train(data)
    centroids = np.asarray(km.centroids, dtype=np.float32)
    labels = np.full(len(x), -1, dtype=np.int32)
    for s in range(0, len(idx), _BLOCK_ROWS):
        labels[idx[s : s + _BLOCK_ROWS]] = np.argmax(data[s : s + _BLOCK_ROWS] @ centroids.T, axis=1)
    return labels, centroids
