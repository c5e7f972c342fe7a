"""Samples of the synthetic world: one planned sample as WebDataset members (jpg, txt, json with truth).

Each sample draws its scene and caption from its own ``PCG64`` generator (seeded by the plan), so it
can be re-rendered from its seed alone: duplicates re-render their original, and near duplicates then
perturb it with their own generator. The json records the sample's ground truth under ``"truth"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np

from curate.world.captions import caption, uninformative_caption
from curate.world.plan import Plan, Role
from curate.world.scenes import Scene, WorldConfig, make_scene, perturb, render

__all__ = ["build_sample", "iter_samples", "sample_uid"]


def sample_uid(seed: int, split: str, index: int) -> str:
    """DataComp-style 128-bit lowercase hex uid of sample ``index`` of ``split`` in world ``seed``."""
    msg = f"curate-synthetic:{seed}:{split}:{index}".encode()
    return hashlib.blake2b(msg, digest_size=16).hexdigest()


def _base(cfg: WorldConfig, plan: Plan, i: int) -> tuple[np.random.Generator, Scene]:
    rng = np.random.Generator(np.random.PCG64(int(plan.seeds[i])))
    return rng, make_scene(rng, cfg, int(plan.class_ids[i]))


def _clean_content(cfg: WorldConfig, plan: Plan, i: int) -> tuple[Scene, str]:
    rng, scene = _base(cfg, plan, i)
    return scene, caption(rng, scene, *cfg.color_shape(int(plan.class_ids[i])))


def build_sample(cfg: WorldConfig, plan: Plan, i: int) -> tuple[str, dict[str, bytes]]:
    """Sample ``i`` of ``plan`` as ``(key, {"jpg", "txt", "json"})``, the json carrying its ground truth."""
    role = int(plan.roles[i])
    class_id = int(plan.class_ids[i])
    uid = sample_uid(cfg.seed, plan.split, i)
    key = f"{i:09d}"
    duplicate_of: str | None = None
    duplicate_kind: str | None = None
    caption_class: str | None = " ".join(cfg.color_shape(int(plan.caption_classes[i])))
    if role in (Role.EXACT_DUPLICATE, Role.NEAR_DUPLICATE):
        original = int(plan.originals[i])
        duplicate_of = sample_uid(cfg.seed, plan.split, original)
        scene, text = _clean_content(cfg, plan, original)
        if role == Role.NEAR_DUPLICATE:
            duplicate_kind = "near"
            rng = np.random.Generator(np.random.PCG64(int(plan.seeds[i])))
            scene = perturb(scene, rng)
            if rng.random() < 0.5:  # lightly paraphrased: same scene, another template and wording
                text = caption(rng, scene, *cfg.color_shape(class_id))
        else:
            duplicate_kind = "exact"
    else:
        rng, scene = _base(cfg, plan, i)
        if role == Role.UNINFORMATIVE:
            caption_class = None
            text = uninformative_caption(rng)
        else:
            text = caption(rng, scene, *cfg.color_shape(int(plan.caption_classes[i])))
    meta = {
        "uid": uid,
        "key": key,
        "split": plan.split,
        "caption": text,
        "width": cfg.image_size,
        "height": cfg.image_size,
        "scene": scene.describe(),
        "truth": {
            "class": " ".join(cfg.color_shape(class_id)),
            "class_id": class_id,
            "caption_class": caption_class,
            "mismatched": role == Role.MISMATCHED,
            "duplicate_of": duplicate_of,
            "duplicate_kind": duplicate_kind,
            "uninformative": role == Role.UNINFORMATIVE,
        },
    }
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return key, {"jpg": render(scene, cfg.image_size), "txt": text.encode(), "json": blob}


def iter_samples(cfg: WorldConfig, plan: Plan, start: int, stop: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples ``start`` to ``stop - 1`` of ``plan``, in order (one shard's worth)."""
    for i in range(start, stop):
        yield build_sample(cfg, plan, i)
