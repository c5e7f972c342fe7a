"""Scenes of the synthetic world: the palette, what one image shows, and drawing it as a JPEG.

A class is a ``"<colour> <shape>"`` pair. A :class:`Scene` fixes everything about one image (shape,
colour, size, position, rotation, background, JPEG quality), drawn by :func:`make_scene` from a
sample's generator; :func:`render` turns it into JPEG bytes, a pure function of the scene.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUND_COLORS",
    "COLORS",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "SHAPES",
    "Scene",
    "WorldConfig",
    "allowed_backgrounds",
    "class_names",
    "make_scene",
    "perturb",
    "render",
]

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

# Minimum RGB distance between a shape colour and the backgrounds it may be drawn on.
_MIN_CONTRAST = 120.0
_SUPERSAMPLE = 4
# Noise backgrounds: smooth blotches plus per-pixel grain (in 0..255 units).
_BLOB_AMPLITUDE = 16.0
_GRAIN_SIGMA = 7.0
_SIZES: tuple[tuple[str, float], ...] = (("small", 0.13), ("medium", 0.20), ("large", 0.29))
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
_BG_KINDS: tuple[str, ...] = ("solid", "gradient", "noise")
_BG_KIND_P = (0.4, 0.3, 0.3)


def class_names(colors: Sequence[str] = DEFAULT_COLORS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[str]:
    """Class names in class_id order: colour-major, ``class_id = colour_index * len(shapes) + shape_index``."""
    return [f"{c} {s}" for c in colors for s in shapes]


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image (a pure function of these fields).

    ``size_idx`` indexes the sizes small, medium, large; ``pos_idx`` the 3×3 grid of positions, row by row.
    """

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

    def describe(self) -> dict[str, Any]:
        """The scene as a sample's json records it: size, position, background kind and colours."""
        return {
            "size": _SIZES[self.size_idx][0],
            "position": _POSITION_NAMES[self.pos_idx],
            "background": self.bg_kind,
            "background_colors": list(self.bg_names),
        }


@dataclass(frozen=True)
class WorldConfig:
    """The parameters every sample of a world is drawn with."""

    seed: int
    image_size: int
    jpeg_quality: int
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    backgrounds: dict[str, tuple[str, ...]]  # shape colour -> allowed background names

    @property
    def n_classes(self) -> int:
        """Number of classes (colour × shape pairs)."""
        return len(self.colors) * len(self.shapes)

    def color_shape(self, class_id: int) -> tuple[str, str]:
        """The colour and shape of ``class_id``."""
        return self.colors[class_id // len(self.shapes)], self.shapes[class_id % len(self.shapes)]


def allowed_backgrounds(color: str) -> tuple[str, ...]:
    """The background colours that contrast enough with shape colour ``color``, in palette order."""
    rgb = np.array(COLORS[color], dtype=np.float64)
    dist = {b: float(np.linalg.norm(rgb - np.array(v, dtype=np.float64))) for b, v in BACKGROUND_COLORS.items()}
    return tuple(b for b in BACKGROUND_COLORS if dist[b] > _MIN_CONTRAST)


def make_scene(rng: np.random.Generator, cfg: WorldConfig, class_id: int) -> Scene:
    """A random scene of class ``class_id`` drawn from ``rng``."""
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
    return Scene(
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


def perturb(scene: Scene, rng: np.random.Generator) -> Scene:
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


def _background(scene: Scene, size: int) -> np.ndarray:
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


def _draw_shape(draw: ImageDraw.ImageDraw, scene: Scene, k: int) -> None:
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


def render(scene: Scene, size: int) -> bytes:
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
