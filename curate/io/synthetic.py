"""A deterministic synthetic image–caption world for demos, tests and benchmarks.

Images are coloured shapes (a class is a ``"<colour> <shape>"`` pair, e.g. ``"red circle"``) of a
few sizes and positions on solid, gradient or noisy backgrounds, drawn with PIL and stored as JPEG.
Captions are templated. The training split is long-tailed over classes (Zipf) and carries known
defects — mismatched captions, exact and near duplicates, uninformative captions — recorded as
ground truth in every sample's json under ``"truth"``; the test split is clean and class-balanced,
for zero-shot evaluation with ``classnames.txt`` and ``templates.txt``.

Everything is a pure function of ``seed`` and the parameters: the same call writes the same bytes.
Streams are independent per split, and every sample draws from its own ``PCG64`` generator, so a
sample can be re-rendered from its seed (which is how duplicates copy their originals).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from curate.errors import UsageError
from curate.io.tarwrite import atomic_write_bytes, write_tar
from curate.schemas import TRUTH_SCHEMA

__all__ = [
    "BACKGROUND_COLORS",
    "COLORS",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "SHAPES",
    "TRUTH_SCHEMA",
    "WORLD_FORMAT",
    "ZERO_SHOT_TEMPLATES",
    "class_names",
    "list_shards",
    "make_sample",
    "read_truth",
    "sample_uid",
]

logger = logging.getLogger(__name__)

WORLD_FORMAT = "curate-synthetic-world/1"

#: Shape colours (name -> sRGB). Names are disjoint from the background names.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 210),
    "yellow": (240, 205, 30),
    "purple": (140, 60, 185),
    "orange": (250, 130, 20),
    "cyan": (30, 190, 210),
    "magenta": (215, 40, 175),
}
#: Background colours (name -> sRGB).
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 242),
    "light gray": (196, 196, 196),
    "dark gray": (72, 72, 72),
    "black": (18, 18, 20),
    "beige": (226, 212, 180),
    "navy": (22, 32, 86),
    "teal": (18, 112, 112),
    "brown": (104, 66, 38),
    "pink": (244, 182, 200),
    "olive": (110, 112, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Zero-shot prompt templates written to ``templates.txt``.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of the {}.",
    "a picture of the {}.",
    "a drawing of the {}.",
    "the {} on a plain background.",
    "a close-up photo of the {}.",
    "a small {}.",
    "a large {}.",
)

# Minimum RGB distance between a shape colour and the backgrounds it may be drawn on.
_MIN_CONTRAST = 120.0
_SUPERSAMPLE = 4
# Noise backgrounds: smooth blotches plus per-pixel grain (in 0..255 units).
_BLOB_AMPLITUDE = 16.0
_GRAIN_SIGMA = 7.0
_SIZES: tuple[tuple[str, float], ...] = (("small", 0.13), ("medium", 0.20), ("large", 0.29))
_SIZE_WORDS: tuple[tuple[str, ...], ...] = (
    ("small", "tiny", "little"),
    ("medium", "medium-sized", "mid-sized"),
    ("large", "big", "huge"),
)
_GRID = (0.27, 0.5, 0.73)
_POSITION_NAMES: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
_POSITION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("in the top left", "in the top left corner", "at the upper left"),
    ("at the top", "near the top", "at the top center"),
    ("in the top right", "in the top right corner", "at the upper right"),
    ("on the left", "on the left side", "at the left"),
    ("in the center", "in the middle", "centered"),
    ("on the right", "on the right side", "at the right"),
    ("in the bottom left", "in the bottom left corner", "at the lower left"),
    ("at the bottom", "near the bottom", "at the bottom center"),
    ("in the bottom right", "in the bottom right corner", "at the lower right"),
)
_BG_KINDS: tuple[str, ...] = ("solid", "gradient", "noise")
_BG_KIND_P = (0.4, 0.3, 0.3)
_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{a_obj}",
    "{a_sobj}",
    "{a_sobj} {pos}",
    "{a_obj} {bg}",
    "{a_sobj} {bg}",
    "{a_sobj} {pos} {bg}",
    "photo of {a_obj} {pos}",
    "a photo of {a_sobj} {bg}",
    "picture of {a_obj}",
    "an image of {a_sobj} {pos}",
    "{obj} {pos}",
    "{sobj} {bg}",
    "close-up of {a_obj}",
    "illustration of {a_sobj}, {pos}",
    "simple drawing of {a_obj} {bg}",
    "{a_obj} icon {pos}",
    "there is {a_sobj} {pos}",
    "{sobj} shape {pos} {bg}",
)
_UNINFORMATIVE: tuple[str, ...] = (
    "image",
    "untitled",
    "stock photo",
    "click here for more",
    "photo",
    "no description available",
    "thumbnail",
    "view larger image",
    "free download",
    "screenshot",
    "picture",
    "untitled design",
    "default",
    "download now",
    "see more",
    "product image",
    "placeholder",
    "new",
)
_FILENAMES: tuple[tuple[str, int], ...] = (  # (pattern, number of digits)
    ("IMG_{:04d}.jpg", 4),
    ("DSC{:05d}.JPG", 5),
    ("image_{:03d}.png", 3),
    ("photo-{:06d}.jpeg", 6),
)

# Sample roles in the training plan (mutually exclusive defects).
_CLEAN, _MISMATCHED, _UNINFORMATIVE_ROLE, _EXACT, _NEAR = range(5)
_ROLE_NAMES = ("clean", "mismatched", "uninformative", "exact_duplicate", "near_duplicate")
_SPLIT_STREAM = {"train": 1, "test": 2}
_WORLD_STREAM = 0

def class_names(colors: Sequence[str] = DEFAULT_COLORS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[str]:
    """Class names in class_id order: colour-major, ``class_id = colour_index * len(shapes) + shape_index``."""
    return [f"{c} {s}" for c in colors for s in shapes]


def sample_uid(seed: int, split: str, index: int) -> str:
    """DataComp-style 128-bit lowercase hex uid of sample ``index`` of ``split`` in world ``seed``."""
    msg = f"curate-synthetic:{seed}:{split}:{index}".encode()
    return hashlib.blake2b(msg, digest_size=16).hexdigest()


def list_shards(out_dir: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The shard files of ``split`` under a generated world, in order."""
    folder = Path(out_dir) / split
    return sorted(p for p in folder.glob("*.tar") if re.fullmatch(r"\d{5}\.tar", p.name))


# --------------------------------------------------------------------------------------------------
# Scenes and rendering


@dataclass(frozen=True)
class _Scene:
    """Everything needed to render one image (a pure function of these fields)."""

    shape: str
    rgb: tuple[int, int, int]
    size_idx: int
    pos_idx: int
    radius: float
    cx: float
    cy: float
    rotation: float
    bg_kind: str
    bg_names: tuple[str, ...]
    grad_dir: int
    bg_seed: int
    quality: int


@dataclass(frozen=True)
class _Config:
    seed: int
    image_size: int
    jpeg_quality: int
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    backgrounds: dict[str, tuple[str, ...]]  # shape colour -> allowed background names

    @property
    def n_classes(self) -> int:
        return len(self.colors) * len(self.shapes)

    def color_shape(self, class_id: int) -> tuple[str, str]:
        return self.colors[class_id // len(self.shapes)], self.shapes[class_id % len(self.shapes)]


def _allowed_backgrounds(color: str) -> tuple[str, ...]:
    rgb = np.array(COLORS[color], dtype=np.float64)
    dist = {b: float(np.linalg.norm(rgb - np.array(v, dtype=np.float64))) for b, v in BACKGROUND_COLORS.items()}
    return tuple(b for b in BACKGROUND_COLORS if dist[b] > _MIN_CONTRAST)


def _make_scene(rng: np.random.Generator, cfg: _Config, class_id: int) -> _Scene:
    color, shape = cfg.color_shape(class_id)
    size = cfg.image_size
    size_idx = int(rng.integers(len(_SIZES)))
    pos_idx = int(rng.integers(len(_POSITION_NAMES)))
    radius = _SIZES[size_idx][1] * size * float(rng.uniform(0.9, 1.1))
    lo, hi = radius + 1.0, size - 1.0 - radius
    jitter = rng.uniform(-0.04, 0.04, size=2) * size
    cx = float(np.clip(_GRID[pos_idx % 3] * size + jitter[0], lo, hi))
    cy = float(np.clip(_GRID[pos_idx // 3] * size + jitter[1], lo, hi))
    rotation = float(rng.uniform(-15.0, 15.0))
    base = np.array(COLORS[color], dtype=np.int64) + rng.integers(-12, 13, size=3)
    rgb = tuple(int(v) for v in np.clip(base, 0, 255))
    kind = _BG_KINDS[int(rng.choice(len(_BG_KINDS), p=_BG_KIND_P))]
    allowed = cfg.backgrounds[color]
    first = int(rng.integers(len(allowed)))
    second = (first + 1 + int(rng.integers(len(allowed) - 1))) % len(allowed) if len(allowed) > 1 else first
    bg_names = (allowed[first], allowed[second]) if kind == "gradient" else (allowed[first],)
    grad_dir = int(rng.integers(4))
    bg_seed = int(rng.integers(0, 2**63))
    return _Scene(
        shape=shape,
        rgb=(rgb[0], rgb[1], rgb[2]),
        size_idx=size_idx,
        pos_idx=pos_idx,
        radius=radius,
        cx=cx,
        cy=cy,
        rotation=rotation,
        bg_kind=kind,
        bg_names=bg_names,
        grad_dir=grad_dir,
        bg_seed=bg_seed,
        quality=cfg.jpeg_quality,
    )


def _perturb(scene: _Scene, rng: np.random.Generator) -> _Scene:
    """A near duplicate of ``scene``: shifted a few pixels, colour/size jittered, or re-encoded."""
    variant = int(rng.integers(3))
    if variant == 0:
        shift = rng.integers(1, 4, size=2) * np.where(rng.random(2) < 0.5, -1, 1)
        return replace(scene, cx=scene.cx + float(shift[0]), cy=scene.cy + float(shift[1]))
    if variant == 1:
        delta = rng.integers(4, 11, size=3) * np.where(rng.random(3) < 0.5, -1, 1)
        rgb = tuple(int(v) for v in np.clip(np.array(scene.rgb) + delta, 0, 255))
        shift = rng.integers(-1, 2, size=2)
        return replace(
            scene,
            rgb=(rgb[0], rgb[1], rgb[2]),
            radius=scene.radius * float(rng.uniform(0.94, 1.06)),
            cx=scene.cx + float(shift[0]),
            cy=scene.cy + float(shift[1]),
        )
    qualities = [q for q in (60, 70, 75, 80, 95) if q != scene.quality]
    return replace(scene, quality=qualities[int(rng.integers(len(qualities)))])


def _background(scene: _Scene, size: int) -> np.ndarray:
    """Float32 HxWx3 background."""
    c1 = np.array(BACKGROUND_COLORS[scene.bg_names[0]], dtype=np.float32)
    if scene.bg_kind == "solid":
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if scene.bg_kind == "gradient":
        c2 = np.array(BACKGROUND_COLORS[scene.bg_names[-1]], dtype=np.float32)
        yy, xx = ramp[:, None], ramp[None, :]
        t = (xx + 0 * yy, yy + 0 * xx, (xx + yy) / 2, (1 - xx + yy) / 2)[scene.grad_dir]
        return c1 * (1.0 - t[..., None]) + c2 * t[..., None]
    brng = np.random.Generator(np.random.PCG64(scene.bg_seed))
    coarse = brng.standard_normal((4, 4)).astype(np.float32)
    blobs = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    fine = brng.standard_normal((size, size, 3)).astype(np.float32)
    return c1 + _BLOB_AMPLITUDE * blobs[..., None] + _GRAIN_SIGMA * fine


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


def _regular(n: int, start_deg: float) -> np.ndarray:
    ang = np.radians(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _draw_shape(draw: ImageDraw.ImageDraw, scene: _Scene, k: int) -> None:
    cx, cy, r = scene.cx * k, scene.cy * k, scene.radius * k
    if scene.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if scene.shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
        return
    if scene.shape == "square":
        pts = _regular(4, 45.0) * (0.82 * math.sqrt(2.0))
    elif scene.shape == "triangle":
        pts = _regular(3, -90.0) + np.array([0.0, 0.15])
    elif scene.shape == "star":
        pts = _regular(10, -90.0) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None]
    elif scene.shape == "hexagon":
        pts = _regular(6, 0.0) * 0.95
    elif scene.shape == "diamond":
        pts = np.array([[0.0, -1.0], [0.68, 0.0], [0.0, 1.0], [-0.68, 0.0]])
    elif scene.shape == "cross":
        w, arm = 0.3, 0.95
        pts = np.array(
            [
                [-w, -arm],
                [w, -arm],
                [w, -w],
                [arm, -w],
                [arm, w],
                [w, w],
                [w, arm],
                [-w, arm],
                [-w, w],
                [-arm, w],
                [-arm, -w],
                [-w, -w],
            ]
        )
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    xy = _rotate(pts, scene.rotation) * r + np.array([cx, cy])
    draw.polygon([(float(x), float(y)) for x, y in xy], fill=255)


def _render(scene: _Scene, size: int) -> bytes:
    """JPEG bytes of ``scene`` at ``size``×``size``."""
    k = _SUPERSAMPLE
    canvas = Image.new("L", (size * k, size * k), 0)
    _draw_shape(ImageDraw.Draw(canvas), scene, k)
    alpha = np.asarray(canvas.reduce(k), dtype=np.float32)[..., None] / 255.0
    fg = np.array(scene.rgb, dtype=np.float32)
    pixels = _background(scene, size) * (1.0 - alpha) + fg * alpha
    img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=scene.quality, subsampling="4:2:0", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Captions


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _caption(rng: np.random.Generator, scene: _Scene, color: str, shape: str) -> str:
    """A templated caption describing ``color shape`` with the scene's size, position and background."""
    template = _CAPTION_TEMPLATES[int(rng.integers(len(_CAPTION_TEMPLATES)))]
    size_words = _SIZE_WORDS[scene.size_idx]
    size_word = size_words[int(rng.integers(len(size_words)))]
    pos_phrases = _POSITION_PHRASES[scene.pos_idx]
    pos = pos_phrases[int(rng.integers(len(pos_phrases)))]
    bg_form = int(rng.integers(2))
    name = scene.bg_names[0]
    if scene.bg_kind == "gradient":
        bg = f"on {_article(name)} {name} to {scene.bg_names[1]} gradient" if bg_form else "on a gradient background"
    elif scene.bg_kind == "noise":
        bg = f"on a textured {name} background" if bg_form else f"on a noisy {name} background"
    else:
        bg = f"on {_article(name)} {name} background" if bg_form else f"against a plain {name} backdrop"
    obj = f"{color} {shape}"
    sobj = f"{size_word} {obj}"
    text = template.format(
        obj=obj, sobj=sobj, a_obj=f"{_article(obj)} {obj}", a_sobj=f"{_article(sobj)} {sobj}", pos=pos, bg=bg
    )
    capitalize, period = rng.random(2)
    if capitalize < 0.35:
        text = text[:1].upper() + text[1:]
    if period < 0.3:
        text += "."
    return text


def _uninformative_caption(rng: np.random.Generator) -> str:
    if rng.random() < 0.35:
        pattern, digits = _FILENAMES[int(rng.integers(len(_FILENAMES)))]
        return pattern.format(int(rng.integers(10**digits)))
    return _UNINFORMATIVE[int(rng.integers(len(_UNINFORMATIVE)))]


# --------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class _Plan:
    """Per-sample decisions of one split, as arrays indexed by position in the split."""

    split: str
    class_ids: np.ndarray
    seeds: np.ndarray
    roles: np.ndarray
    originals: np.ndarray  # index of the original for duplicates, else -1
    caption_classes: np.ndarray  # class the caption describes (mismatched), else the true class


def _rng(*keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(keys)))


def _zipf_counts(n: int, ranks: np.ndarray, exponent: float) -> np.ndarray:
    """Exact per-class counts summing to ``n`` (largest remainder), proportional to (rank+1)^-exponent."""
    weights = 1.0 / (ranks.astype(np.float64) + 1.0) ** exponent
    quota = n * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    remainder = quota - counts
    order = np.lexsort((ranks, -remainder))  # largest remainder first, ties by rank
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _role_counts(n: int, rates: Mapping[int, float]) -> dict[int, int]:
    counts = {role: round(rate * n) for role, rate in rates.items()}
    if sum(counts.values()) > n:
        raise ValueError("defect rates add up to more than the whole training split")
    return counts


def _train_plan(cfg: _Config, n: int, ranks: np.ndarray, exponent: float, rates: Mapping[int, float]) -> _Plan:
    rng = _rng(cfg.seed, _SPLIT_STREAM["train"])
    counts = _zipf_counts(n, ranks, exponent)
    class_ids = rng.permutation(np.repeat(np.arange(cfg.n_classes, dtype=np.int64), counts))
    role_counts = _role_counts(n, rates)
    roles = np.full(n, _CLEAN, dtype=np.int64)
    roles[: sum(role_counts.values())] = np.repeat(list(role_counts), list(role_counts.values()))
    roles = rng.permutation(roles)
    seeds = rng.integers(0, 2**63, size=n, dtype=np.int64)
    offsets = rng.integers(1, max(cfg.n_classes, 2), size=n)
    caption_classes = np.where(roles == _MISMATCHED, (class_ids + offsets) % cfg.n_classes, class_ids)

    clean = np.flatnonzero(roles == _CLEAN)
    dups = np.flatnonzero((roles == _EXACT) | (roles == _NEAR))
    if len(dups) and not len(clean):
        raise ValueError("no clean training sample left to duplicate; lower the defect rates or raise n_train")
    clean_by_class = {c: clean[class_ids[clean] == c] for c in range(cfg.n_classes)}
    originals = np.full(n, -1, dtype=np.int64)
    for i in dups:  # ascending order: deterministic
        pool = clean_by_class[int(class_ids[i])]
        if not len(pool):  # a class too rare to have a clean sample: copy any clean one
            pool = clean
        originals[i] = pool[int(rng.integers(len(pool)))]
    class_ids = np.where(originals >= 0, class_ids[np.maximum(originals, 0)], class_ids)
    caption_classes = np.where(originals >= 0, class_ids, caption_classes)
    return _Plan("train", class_ids, seeds, roles, originals, caption_classes)


def _test_plan(cfg: _Config, n: int) -> _Plan:
    rng = _rng(cfg.seed, _SPLIT_STREAM["test"])
    class_ids = rng.permutation(np.arange(n, dtype=np.int64) % cfg.n_classes)
    seeds = rng.integers(0, 2**63, size=n, dtype=np.int64)
    return _Plan("test", class_ids, seeds, np.full(n, _CLEAN), np.full(n, -1), class_ids.copy())


# --------------------------------------------------------------------------------------------------
# Samples


def _base(cfg: _Config, plan: _Plan, i: int) -> tuple[np.random.Generator, _Scene]:
    rng = np.random.Generator(np.random.PCG64(int(plan.seeds[i])))
    return rng, _make_scene(rng, cfg, int(plan.class_ids[i]))


def _clean_content(cfg: _Config, plan: _Plan, i: int) -> tuple[_Scene, str]:
    rng, scene = _base(cfg, plan, i)
    return scene, _caption(rng, scene, *cfg.color_shape(int(plan.class_ids[i])))


def _sample(cfg: _Config, plan: _Plan, i: int) -> tuple[str, dict[str, bytes]]:
    role = int(plan.roles[i])
    class_id = int(plan.class_ids[i])
    uid = sample_uid(cfg.seed, plan.split, i)
    key = f"{i:09d}"
    duplicate_of: str | None = None
    duplicate_kind: str | None = None
    caption_class: str | None = " ".join(cfg.color_shape(int(plan.caption_classes[i])))
    if role in (_EXACT, _NEAR):
        original = int(plan.originals[i])
        duplicate_of = sample_uid(cfg.seed, plan.split, original)
        scene, caption = _clean_content(cfg, plan, original)
        if role == _NEAR:
            duplicate_kind = "near"
            rng = np.random.Generator(np.random.PCG64(int(plan.seeds[i])))
            scene = _perturb(scene, rng)
            if rng.random() < 0.5:  # lightly paraphrased: same scene, another template and wording
                caption = _caption(rng, scene, *cfg.color_shape(class_id))
        else:
            duplicate_kind = "exact"
    else:
        rng, scene = _base(cfg, plan, i)
        if role == _UNINFORMATIVE_ROLE:
            caption_class = None
            caption = _uninformative_caption(rng)
        else:
            caption = _caption(rng, scene, *cfg.color_shape(int(plan.caption_classes[i])))
    meta = {
        "uid": uid,
        "key": key,
        "split": plan.split,
        "caption": caption,
        "width": cfg.image_size,
        "height": cfg.image_size,
        "scene": {
            "size": _SIZES[scene.size_idx][0],
            "position": _POSITION_NAMES[scene.pos_idx],
            "background": scene.bg_kind,
            "background_colors": list(scene.bg_names),
        },
        "truth": {
            "class": " ".join(cfg.color_shape(class_id)),
            "class_id": class_id,
            "caption_class": caption_class,
            "mismatched": role == _MISMATCHED,
            "duplicate_of": duplicate_of,
            "duplicate_kind": duplicate_kind,
            "uninformative": role == _UNINFORMATIVE_ROLE,
        },
    }
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return key, {"jpg": _render(scene, cfg.image_size), "txt": caption.encode(), "json": blob}


def _samples(cfg: _Config, plan: _Plan, start: int, stop: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    for i in range(start, stop):
        yield _sample(cfg, plan, i)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _earlier_world(out: Path) -> set[Path]:
    """The files an earlier world wrote in ``out`` (from its ``world.json``); empty for a new or empty folder.

    Any other non-empty folder is refused: a world is never written over files curate did not write.
    """
    if not out.exists() or not any(out.iterdir()):
        return set()
    try:
        summary = json.loads((out / "world.json").read_text())
        if summary.get("format") != WORLD_FORMAT:
            raise ValueError(summary.get("format"))
        return {out / f["path"] for f in summary["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{out} is not empty and holds no synthetic world (world.json); "
                         "choose a new or empty --out") from None


def _write_split(out: Path, cfg: _Config, plan: _Plan, shard_size: int, earlier: set[Path]) -> list[Path]:
    n = len(plan.class_ids)
    folder = out / plan.split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, n, shard_size)):
        path = folder / f"{shard:05d}.tar"
        write_tar(path, _samples(cfg, plan, start, min(start + shard_size, n)))
        paths.append(path)
    for stale in sorted(set(list_shards(out, plan.split)) - set(paths)):
        if stale in earlier:  # a shard of the earlier world that this one does not write
            logger.info("removing stale shard %s", stale)
            stale.unlink()
    logger.info("wrote %d %s samples in %d shards under %s", n, plan.split, len(paths), folder)
    return paths


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
    seed = int(seed)
    out = Path(out_dir)
    earlier = _earlier_world(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _Config(
        seed=seed,
        image_size=image_size,
        jpeg_quality=jpeg_quality,
        colors=colors,
        shapes=shapes,
        backgrounds={c: _allowed_backgrounds(c) for c in colors},
    )
    names = class_names(colors, shapes)
    order = _rng(seed, _WORLD_STREAM).permutation(cfg.n_classes)  # order[r] = class of Zipf rank r
    ranks = np.empty(cfg.n_classes, dtype=np.int64)
    ranks[order] = np.arange(cfg.n_classes)

    train = _train_plan(
        cfg,
        n_train,
        ranks,
        zipf_exponent,
        {
            _MISMATCHED: mismatch_rate,
            _UNINFORMATIVE_ROLE: uninformative_rate,
            _EXACT: exact_duplicate_rate,
            _NEAR: near_duplicate_rate,
        },
    )
    test = _test_plan(cfg, n_test)
    train_paths = _write_split(out, cfg, train, shard_size, earlier)
    test_paths = _write_split(out, cfg, test, shard_size, earlier)
    atomic_write_bytes(out / "classnames.txt", "".join(f"{n}\n" for n in names).encode())
    atomic_write_bytes(out / "templates.txt", "".join(f"{t}\n" for t in ZERO_SHOT_TEMPLATES).encode())

    files = [*train_paths, *test_paths, out / "classnames.txt", out / "templates.txt"]
    train_counts = np.bincount(train.class_ids, minlength=cfg.n_classes)
    test_counts = np.bincount(test.class_ids, minlength=cfg.n_classes)
    summary: dict[str, Any] = {
        "format": WORLD_FORMAT,
        "seed": seed,
        "params": {
            "n_train": n_train,
            "n_test": n_test,
            "shard_size": shard_size,
            "image_size": image_size,
            "jpeg_quality": jpeg_quality,
            "zipf_exponent": zipf_exponent,
            "colors": list(colors),
            "shapes": list(shapes),
            **rates,
        },
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
                "samples": n_train,
                "shards": len(train_paths),
                "defects": {name: int(np.sum(train.roles == r)) for r, name in enumerate(_ROLE_NAMES)},
            },
            "test": {"samples": n_test, "shards": len(test_paths)},
        },
        "files": [
            {"path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ],
    }
    text = json.dumps(summary, indent=2, ensure_ascii=True) + "\n"
    atomic_write_bytes(out / "world.json", text.encode())
    logger.info("synthetic world (seed %d) written to %s", seed, out)
    return summary


# --------------------------------------------------------------------------------------------------
# Reading the ground truth back


def _iter_paths(shard_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(shard_paths, str | os.PathLike):
        return [Path(shard_paths)]
    return [Path(p) for p in shard_paths]


def read_truth(shard_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pa.Table:
    """Ground truth of synthetic shards as a table (schema :data:`TRUTH_SCHEMA`), one row per sample.

    Reads only the ``.json`` members with :mod:`tarfile`; rows follow shard then member order.
    ``shard`` is the file's basename without ``.tar``; ``key`` is the WebDataset key of the member.
    Raises ``ValueError`` for a json member without a ``truth`` object (not a synthetic shard).
    """
    columns: dict[str, list[Any]] = {name: [] for name in TRUTH_SCHEMA.names}
    for path in _iter_paths(shard_paths):
        shard = path.name[: -len(".tar")] if path.name.endswith(".tar") else path.name
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".json"):
                    continue
                folder, _, base = member.name.rpartition("/")
                key = (f"{folder}/" if folder else "") + base.split(".", 1)[0]
                fh = tar.extractfile(member)
                meta = json.loads(fh.read() if fh is not None else b"null")
                truth = meta.get("truth") if isinstance(meta, dict) else None
                if not isinstance(truth, dict):
                    raise ValueError(f"{path}: member {member.name!r} has no 'truth' object")
                columns["uid"].append(meta["uid"])
                columns["key"].append(key)
                columns["shard"].append(shard)
                for name in ("class", "class_id", "mismatched", "duplicate_of", "duplicate_kind", "uninformative"):
                    columns[name].append(truth[name])
    return pa.Table.from_pydict(columns, schema=TRUTH_SCHEMA)
