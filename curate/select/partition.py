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

from curate.errors import InputError, UsageError
from curate.fs import atomic_path


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
    raise UsageError(f"bad --partition {spec!r}: use 'imagenet' or 'kmeans:K' (or --classes FILE); "
                     "'selection:NAME' gives the partitions of --per-partition only")


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
    from curate.rundir import RunDir

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


ARGMAX_ROWS = 1 << 14  # rows whose logits are held at once when labelling (64 MB at 1000 classes)


def _argmax_task(span: tuple[int, int], image: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Engine task: ``argmax_k <image_j, class_text_k>`` for rows ``span`` (one block; first index on ties).

    torch, not numpy: its CPU products do not depend on the thread count, so every engine gets the same labels.
    """
    import torch

    s, e = span
    out = np.empty(e - s, np.int32)
    with warnings.catch_warnings():  # read-only inputs (Ray's object store) are only read here
        warnings.simplefilter("ignore", UserWarning)
        c = torch.from_numpy(class_text)
        for a in range(s, e, ARGMAX_ROWS):  # the logits of ARGMAX_ROWS rows at a time, not of the block
            b = min(e, a + ARGMAX_ROWS)
            out[a - s : b - s] = torch.argmax(torch.from_numpy(image[a:b]) @ c.T, dim=1).numpy()
    return out


def argmax_rows(image: np.ndarray, centres: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``argmax_k <image_j, centres_k>`` for the rows of one block (-1 where ``valid`` is False).

    One product per block of pool rows (the pipeline's blocks), in torch: its CPU products do not depend
    on the thread count, so every engine gets the same labels.
    """
    if centres.ndim != 2 or centres.shape[1] != image.shape[1]:
        raise InputError(
            f"class embeddings have shape {centres.shape} but image embeddings have dim {image.shape[1]}; "
            "encode the classes with the run's model"
        )
    labels = _argmax_task((0, len(image)), image, np.ascontiguousarray(centres, dtype=np.float32))
    if valid is not None:
        labels[~valid] = -1
    return labels


def default_kmeans_sample(k: int) -> int:
    """Rows k-means trains on: faiss never uses more than 256 per centroid; at most 500k (1 GB at d=512)."""
    return int(min(256 * k, 500_000))


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray | None:
    """Pool rows of a seeded uniform sample of ``size`` rows (sorted); None when the pool is not larger."""
    if n_rows <= size:
        return None
    rng = np.random.default_rng([seed, 0x6B6D])
    return np.sort(rng.choice(n_rows, size=size, replace=False))


def train_kmeans(data: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """Spherical faiss k-means centroids ``(k, d)`` trained on the rows of ``data`` (all of them)."""
    import faiss  # lazy: heavy import

    if k > len(data):
        raise UsageError(f"k-means with K={k} needs at least {k} valid samples, the sample has {len(data)}")
    km = faiss.Kmeans(
        data.shape[1],
        k,
        niter=niter,
        seed=int(seed) % (2**31),
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small pools are fine; silences faiss's stderr warning
        max_points_per_centroid=max(256, -(-len(data) // k)),  # the sample is the training set: no resampling
    )
    km.train(np.ascontiguousarray(data, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


class Partitioner:
    """Labels pool rows with a partition: zero-shot classes (ImageNet-1k, or the names in ``classes``)
    with the run's model, ``kmeans:K`` clusters of the image embeddings trained on a seeded sample, or
    ``selection:NAME``, the ``partition`` column of an earlier selection of the same pool (metaclip's
    metadata entries, clipcov's classes, semdedup's clusters).

    ``setup`` runs on the driver (it may encode class names or train k-means on a bounded sample) and
    returns small shared inputs; ``block_labels`` labels one block of rows (-1 where ``valid`` is False).
    """

    def __init__(self, spec: str = "imagenet", classes: str | None = None, kmeans_sample: int | None = None) -> None:
        self.selection = spec.split(":", 1)[1] if spec.startswith("selection:") else None
        if self.selection is not None:
            if not self.selection:
                raise UsageError(f"bad --partition {spec!r}: name the selection, selection:NAME")
            from curate.rundir import check_selection_name

            check_selection_name(self.selection)
            self.kind, self.k = "selection", None
        else:
            self.kind, self.k = parse_partition(spec)
        if classes is not None and self.kind != "imagenet":
            raise UsageError(f"--classes gives zero-shot labels; it cannot be combined with --partition {spec}")
        if kmeans_sample is not None and (self.kind != "kmeans" or kmeans_sample < 1):
            raise UsageError("--kmeans-sample takes a positive integer, with --partition kmeans:K")
        self.spec, self.classes, self.kmeans_sample = spec, classes, kmeans_sample

    def describe(self) -> str:
        return "classes" if self.classes else self.spec

    def setup(self, source: Any, ctx: Any, parts: set[str], valid: Callable[[Any], np.ndarray],
              device: str = "cpu",
              empty: str = "no sample has a valid embedding to train k-means on") -> dict[str, Any]:
        """``centres`` (the argmax targets), ``names`` (or None), ``n_partitions``; zero-shot: ``class_text``;
        ``selection:NAME``: ``scores`` (that selection's score table) instead of centres."""
        if self.selection is not None:
            return selection_partitions(ctx.run_root, self.selection, len(source))
        if self.kind == "kmeans":
            from curate.select.source import gather_rows

            assert self.k is not None
            rows = sample_rows(len(source), self.kmeans_sample or default_kmeans_sample(self.k), ctx.seed)
            data = gather_rows(source, parts, rows, valid)
            if len(data) == 0:
                raise InputError(empty)
            return {"centres": train_kmeans(data, self.k, ctx.seed), "names": None, "n_partitions": self.k}
        if ctx.class_text is not None:
            class_text, names = np.asarray(ctx.class_text, np.float32), ctx.class_names
        else:
            names_in = read_class_names(self.classes) if self.classes else None
            class_text, names = model_class_text(ctx.run_root, names_in, device=device)
        return {"centres": class_text, "class_text": class_text, "names": names, "n_partitions": len(class_text)}

    @staticmethod
    def labels(image: np.ndarray, shared: dict[str, Any], valid: np.ndarray) -> np.ndarray:
        return argmax_rows(image, shared["centres"], valid)

    @staticmethod
    def chunk_labels(chunk: Any, shared: dict[str, Any], valid: np.ndarray) -> np.ndarray:
        """:meth:`labels` of a block's rows, its image rows read :data:`ARGMAX_ROWS` at a time (the
        products :func:`argmax_rows` makes on the whole matrix)."""
        out = np.empty(len(chunk), np.int32)
        for a in range(0, len(chunk), ARGMAX_ROWS):
            b = min(len(chunk), a + ARGMAX_ROWS)
            out[a:b] = Partitioner.labels(chunk.rows("image", a, b), shared, valid[a:b])
        return out

    @staticmethod
    def block_labels(chunk: Any, start: int, stop: int, shared: dict[str, Any], valid: np.ndarray) -> np.ndarray:
        """Labels of pool rows ``[start, stop)`` (``chunk`` holds their ids and image embeddings)."""
        if "scores" not in shared:
            return Partitioner.chunk_labels(chunk, shared, valid)
        from curate.select.source import read_rows

        t = read_rows(shared["scores"], start, stop, ["uid", "partition"])
        if t.num_rows != stop - start or not t.column("uid").equals(chunk.ids.column("uid")):
            raise InputError(f"selection {shared['selection']!r} lists other samples than the pool at rows "
                             f"{start}..{stop}; re-run it on this pool")
        part = t.column("partition").to_numpy(zero_copy_only=False)
        part = np.where(np.isnan(part), -1, part).astype(np.int64) if part.dtype.kind == "f" else part.astype(np.int64)
        return np.where(valid, part, -1)


def selection_partitions(run_root: str | os.PathLike[str], name: str, pool_size: int) -> dict[str, Any]:
    """The shared inputs of ``--partition selection:NAME``: its score table, the number of partitions."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.select.manage import input_selection

    sel = input_selection(run_root, name, pool_size, f"--partition selection:{name}")
    if "partition" not in pq.read_schema(sel.scores).names:
        raise InputError(f"--partition selection:{name}: that selection has no partition column (methods with "
                         "partitions: clipcov, semdedup, metaclip, image-filter, or one made with --per-partition)")
    top = pc.max(pq.read_table(sel.scores, columns=["partition"]).column("partition")).as_py()
    return {"scores": str(sel.scores), "selection": name, "names": None,
            "parent": sel.parent(run_root, role="partitions"),
            "n_partitions": int(top) + 1 if top is not None else 0}


PER_PARTITION_MODES = ("proportional", "sqrt", "cap")


def parse_per_partition(spec: str) -> tuple[str, int | None]:
    """``proportional`` | ``sqrt`` | ``cap:T`` → (mode, T)."""
    if spec in ("proportional", "sqrt"):
        return spec, None
    if spec.startswith("cap:"):
        try:
            t = int(spec.split(":", 1)[1])
        except ValueError:
            t = 0
        if t < 1:
            raise UsageError(f"bad --per-partition {spec!r}: T in cap:T must be a positive integer")
        return "cap", t
    raise UsageError(f"bad --per-partition {spec!r}: use proportional, sqrt or cap:T")


def _largest_remainder(share: np.ndarray, total: int, cap: np.ndarray) -> np.ndarray:
    """Integers q <= cap summing to ``total`` (<= cap.sum()), as close to the real ``share`` as rounding down
    and handing the rest out by largest fractional part (ties: lower partition first) allow."""
    q = np.minimum(np.floor(share).astype(np.int64), cap)
    left = total - int(q.sum())
    while left > 0:
        room = q < cap
        frac = np.where(room, share - np.floor(share), -1.0)
        order = np.lexsort((np.arange(len(q)), -frac))
        take = [i for i in order if room[i]][:left]
        q[take] += 1
        left -= len(take)
        share = q.astype(np.float64)  # any further round: one more each, in partition order
    return q


def allocate_quotas(sizes: np.ndarray, budget: int | None, mode: str, cap: int | None = None) -> np.ndarray:
    """Samples each partition may keep.

    ``proportional``: budget × n_k / N; ``sqrt``: proportional to sqrt(n_k), water-filled so that no
    partition gets more than it has (what one cannot take goes to the others); both sum to the budget
    exactly (largest remainders). ``cap``: min(n_k, T), the budget (if any) then applies across partitions.
    """
    sizes = np.asarray(sizes, np.int64)
    if mode == "cap":
        assert cap is not None
        return np.minimum(sizes, cap)
    if budget is None:
        raise UsageError(f"--per-partition {mode} splits a budget: give --fraction or --count")
    if budget > int(sizes.sum()):
        raise UsageError(f"the partitions hold {int(sizes.sum())} eligible samples, fewer than the budget {budget}")
    weight = sizes.astype(np.float64) if mode == "proportional" else np.sqrt(sizes.astype(np.float64))
    share = np.zeros(len(sizes))
    active = sizes > 0
    left = float(budget)
    while active.any():  # water-filling: partitions whose share exceeds their size keep their size
        c = left / weight[active].sum()
        full = active & (c * weight >= sizes)
        if not full.any():
            share[active] = c * weight[active]
            break
        share[full] = sizes[full]
        left -= float(sizes[full].sum())
        active &= ~full
    return _largest_remainder(share, budget, sizes)
