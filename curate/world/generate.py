"""Writing a synthetic world to a folder: parameter checks, the splits' shards, class files, ``world.json``.

:func:`make_sample` is the entry point; everything it writes is a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import UsageError
from curate.io.tarwrite import atomic_write_bytes, write_tar
from curate.world.captions import ZERO_SHOT_TEMPLATES
from curate.world.plan import Plan, Role, plan_test_split, plan_train_split, zipf_ranks
from curate.world.samples import iter_samples
from curate.world.scenes import (
    COLORS,
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    SHAPES,
    WorldConfig,
    allowed_backgrounds,
    class_names,
)

__all__ = ["WORLD_FORMAT", "list_shards", "make_sample"]

logger = logging.getLogger(__name__)

#: ``format`` of ``world.json``, the marker of a folder holding a generated world.
WORLD_FORMAT = "curate-synthetic-world/1"
_MARKER = "world.json"
_CLASS_FILES = ("classnames.txt", "templates.txt")


def list_shards(out_dir: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The shard files of ``split`` under a generated world, in order."""
    folder = Path(out_dir) / split
    return sorted(p for p in folder.glob("*.tar") if re.fullmatch(r"\d{5}\.tar", p.name))


def _check_params(
    n_train: int,
    n_test: int,
    shard_size: int,
    image_size: int,
    colors: Sequence[str],
    shapes: Sequence[str],
    jpeg_quality: int,
    rates: Mapping[str, float],
) -> None:
    """Refuse arguments that cannot make a world (``ValueError``)."""
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    for name, values, known in (("colors", colors, COLORS), ("shapes", shapes, SHAPES)):
        unknown = [v for v in values if v not in known]
        if not values or unknown or len(set(values)) != len(values):
            raise ValueError(f"{name} must be distinct names from {sorted(known)}, got {list(values)}")
    if len(colors) * len(shapes) < 2:
        raise ValueError("the world needs at least two classes")
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")


def _earlier_world(out: Path) -> set[Path]:
    """The files an earlier world wrote in ``out`` (from its ``world.json``); empty for a new or empty folder.

    Any other non-empty folder is refused: a world is never written over files curate did not write.
    """
    if not out.exists() or not any(out.iterdir()):
        return set()
    try:
        summary = json.loads((out / _MARKER).read_text())
        if summary.get("format") != WORLD_FORMAT:
            raise ValueError(summary.get("format"))
        return {out / f["path"] for f in summary["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{out} is not empty and holds no synthetic world (world.json); "
                         "choose a new or empty --out") from None


def _plan_splits(cfg: WorldConfig, n_train: int, n_test: int, zipf_exponent: float,
                 rates: Mapping[str, float]) -> tuple[np.ndarray, Plan, Plan]:
    """The classes' Zipf ranks and the plans of the training and test splits."""
    ranks = zipf_ranks(cfg)
    role_rates = {  # this order places the defects: keep it
        Role.MISMATCHED: rates["mismatch_rate"],
        Role.UNINFORMATIVE: rates["uninformative_rate"],
        Role.EXACT_DUPLICATE: rates["exact_duplicate_rate"],
        Role.NEAR_DUPLICATE: rates["near_duplicate_rate"],
    }
    train = plan_train_split(cfg, n_train, ranks, zipf_exponent, role_rates)
    return ranks, train, plan_test_split(cfg, n_test)


def _write_split(out: Path, cfg: WorldConfig, plan: Plan, shard_size: int, earlier: set[Path]) -> list[Path]:
    """Write one split's shards under ``out/<split>/``; remove the earlier world's shards it no longer has."""
    n = len(plan.class_ids)
    folder = out / plan.split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, n, shard_size)):
        path = folder / f"{shard:05d}.tar"
        write_tar(path, iter_samples(cfg, plan, start, min(start + shard_size, n)))
        paths.append(path)
    for stale in sorted(set(list_shards(out, plan.split)) - set(paths)):
        if stale in earlier:  # a shard of the earlier world that this one does not write
            logger.info("removing stale shard %s", stale)
            stale.unlink()
    logger.info("wrote %d %s samples in %d shards under %s", n, plan.split, len(paths), folder)
    return paths


def _write_class_files(out: Path, names: Sequence[str]) -> list[Path]:
    """Write ``classnames.txt`` and ``templates.txt`` (zero-shot evaluation); returns their paths."""
    classnames, templates = (out / name for name in _CLASS_FILES)
    atomic_write_bytes(classnames, "".join(f"{n}\n" for n in names).encode())
    atomic_write_bytes(templates, "".join(f"{t}\n" for t in ZERO_SHOT_TEMPLATES).encode())
    return [classnames, templates]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _summary(out: Path, cfg: WorldConfig, params: dict[str, Any], ranks: np.ndarray, train: Plan, test: Plan,
             shards: Mapping[str, list[Path]], files: list[Path]) -> dict[str, Any]:
    """The content of ``world.json``: parameters, classes with counts, defect counts, every file's sha256."""
    names = class_names(cfg.colors, cfg.shapes)
    train_counts = np.bincount(train.class_ids, minlength=cfg.n_classes)
    test_counts = np.bincount(test.class_ids, minlength=cfg.n_classes)
    return {
        "format": WORLD_FORMAT,
        "seed": cfg.seed,
        "params": params,
        "classes": [
            {
                "class_id": c,
                "name": names[c],
                "zipf_rank": int(ranks[c]),
                "train_count": int(train_counts[c]),
                "test_count": int(test_counts[c]),
            }
            for c in range(cfg.n_classes)
        ],
        "splits": {
            "train": {
                "samples": len(train.class_ids),
                "shards": len(shards["train"]),
                "defects": train.defect_counts(),
            },
            "test": {"samples": len(test.class_ids), "shards": len(shards["test"])},
        },
        "files": [
            {"path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ],
    }


def _write_marker(out: Path, summary: Mapping[str, Any]) -> None:
    """Write ``world.json`` (last, so that a folder with it holds a complete world)."""
    text = json.dumps(summary, indent=2, ensure_ascii=True) + "\n"
    atomic_write_bytes(out / _MARKER, text.encode())


def make_sample(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    n_train: int = 3000,
    n_test: int = 600,
    shard_size: int = 500,
    image_size: int = 64,
    *,
    colors: Sequence[str] = DEFAULT_COLORS,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    zipf_exponent: float = 1.0,
    mismatch_rate: float = 0.20,
    exact_duplicate_rate: float = 0.03,
    near_duplicate_rate: float = 0.05,
    uninformative_rate: float = 0.05,
    jpeg_quality: int = 90,
) -> dict[str, Any]:
    """Generate the synthetic world under ``out_dir``; returns the summary also written to ``world.json``.

    Writes ``train/NNNNN.tar`` (long-tailed, with defects), ``test/NNNNN.tar`` (clean, balanced),
    ``classnames.txt``, ``templates.txt`` and ``world.json`` (parameters, classes with counts, defect
    counts, sha256 of every file). Defect rates are fractions of the training split and are met
    exactly (rounded counts); defects are mutually exclusive and duplicates copy clean originals of
    the same class. ``out_dir`` must be new, empty, or hold an earlier world; shards of an earlier world
    that this one does not write are removed (files it did not write are left alone). Same arguments,
    same bytes.
    """
    colors, shapes = tuple(colors), tuple(shapes)
    rates = {
        "mismatch_rate": mismatch_rate,
        "exact_duplicate_rate": exact_duplicate_rate,
        "near_duplicate_rate": near_duplicate_rate,
        "uninformative_rate": uninformative_rate,
    }
    _check_params(n_train, n_test, shard_size, image_size, colors, shapes, jpeg_quality, rates)
    out = Path(out_dir)
    earlier = _earlier_world(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = WorldConfig(seed=int(seed), image_size=image_size, jpeg_quality=jpeg_quality, colors=colors, shapes=shapes,
                      backgrounds={c: allowed_backgrounds(c) for c in colors})
    ranks, train, test = _plan_splits(cfg, n_train, n_test, zipf_exponent, rates)
    shards = {plan.split: _write_split(out, cfg, plan, shard_size, earlier) for plan in (train, test)}
    files = [*shards["train"], *shards["test"], *_write_class_files(out, class_names(colors, shapes))]
    params = {"n_train": n_train, "n_test": n_test, "shard_size": shard_size, "image_size": image_size,
              "jpeg_quality": jpeg_quality, "zipf_exponent": zipf_exponent, "colors": list(colors),
              "shapes": list(shapes), **rates}
    summary = _summary(out, cfg, params, ranks, train, test, shards, files)
    _write_marker(out, summary)
    logger.info("synthetic world (seed %d) written to %s", cfg.seed, out)
    return summary
