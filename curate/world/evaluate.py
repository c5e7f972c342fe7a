"""Evaluation against a world's ground truth: quality of a subset, and zero-shot accuracy on a labelled split.

Both are used by ``curate demo`` and by the benchmarks. Ground truth exists for the synthetic world
(every sample's json carries ``truth``; :func:`curate.world.read_truth` reads it); zero-shot evaluation
needs shards whose json names the class (``truth.class``) and a class-name list.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from curate.models import LoadedModel


def subset_truth_metrics(selected_uids: pa.Array | Sequence[str], truth: pa.Table) -> dict[str, float]:
    """Defect shares among the kept samples and how evenly they cover the classes.

    ``truth`` is ``curate.world.read_truth(...)`` of the pool. Returns ``kept``, the shares of
    ``mismatched``, ``duplicates`` (copies of another sample), ``redundant`` (copies kept together with
    their original) and ``uninformative`` captions among kept samples, the normalised class entropy
    (1 = perfectly even), the smallest and largest class share, and the number of classes covered.
    """
    uids = selected_uids if isinstance(selected_uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(selected_uids))
    kept = truth.filter(pc.is_in(truth.column("uid"), value_set=uids))
    n = kept.num_rows
    dup = kept.column("duplicate_of")
    is_dup = pc.is_valid(dup).to_numpy(zero_copy_only=False)
    orig_kept = pc.is_in(dup, value_set=uids).to_numpy(zero_copy_only=False) & is_dup
    n_cls = int(pc.max(truth.column("class_id")).as_py()) + 1
    share = np.bincount(kept.column("class_id").to_numpy(), minlength=n_cls) / max(n, 1)
    nz = share[share > 0]

    def mean(col: str) -> float:
        return float(kept.column(col).to_numpy(zero_copy_only=False).mean()) if n else 0.0

    return {
        "kept": n,
        "mismatched": mean("mismatched"),
        "duplicates": float(is_dup.mean()) if n else 0.0,
        "redundant": float(orig_kept.mean()) if n else 0.0,
        "uninformative": mean("uninformative"),
        "entropy": float(-(nz * np.log(nz)).sum() / np.log(n_cls)) if n_cls > 1 else 1.0,
        "min_share": float(share.min()),
        "max_share": float(share.max()),
        "classes": int((share > 0).sum()),
    }


def load_labelled_split(
    loaded: LoadedModel, shards: str | Sequence[str], classnames: Sequence[str], stats: Counter[str] | None = None
) -> tuple[Any, np.ndarray]:
    """Preprocessed images [n, 3, H, W] and class ids of every sample of labelled shards.

    Bad samples are skipped and counted as in embed (``dropped_<reason>``, ``shard_<problem>`` in ``stats``).
    """
    import torch

    from curate.io.shards import ErrorPolicy, SampleError, decode_image, expand_shards, iter_shards

    stats = stats if stats is not None else Counter()
    policy = ErrorPolicy()
    index = {c: i for i, c in enumerate(classnames)}
    images, labels = [], []
    for s in iter_shards(expand_shards(shards), policy, stats):
        truth = (s.meta or {}).get("truth") or {}
        if truth.get("class") not in index:
            continue
        try:
            images.append(loaded.preprocess(decode_image(s.image_bytes or b"", max_pixels=policy.max_pixels)))
        except SampleError as exc:
            stats[f"dropped_{exc.reason}"] += 1
            continue
        labels.append(index[truth["class"]])
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped_"))
    if dropped:
        logging.getLogger(__name__).warning("evaluation shards: skipped %d bad sample(s)", dropped)
    if not images:
        from curate.errors import InputError

        raise InputError("no labelled samples (json truth.class naming a listed class) in the evaluation shards")
    return torch.stack(images), np.asarray(labels)


def zero_shot_accuracy(
    loaded: LoadedModel,
    images: Any,
    labels: np.ndarray,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> float:
    """Top-1 zero-shot accuracy: argmax of image · (template-averaged class text embedding)."""
    import torch

    was_training = loaded.model.training
    loaded.model.eval()
    with torch.no_grad():
        cls = loaded.zeroshot_classifier(classnames, templates)
        feats = torch.cat([loaded.encode_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        pred = (feats @ cls.to(feats.device).T).argmax(1).cpu().numpy()
    loaded.model.train(was_training)
    return float((pred == labels).mean())
