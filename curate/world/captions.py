"""Captions of the synthetic world: templated descriptions of a scene, uninformative alt-texts, prompts.

A caption names a colour and shape (the scene's own, or another class's for a mismatched sample) with
the scene's size, position and background in varied wording. Every choice is drawn from the sample's
generator, so a caption is a pure function of that generator's state and the scene.
"""

from __future__ import annotations

import numpy as np

from curate.world.scenes import Scene

__all__ = ["ZERO_SHOT_TEMPLATES", "caption", "uninformative_caption"]

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

# Indexed by Scene.size_idx (small, medium, large) and Scene.pos_idx (3×3 grid, row by row).
_SIZE_WORDS: tuple[tuple[str, ...], ...] = (
    ("small", "tiny", "little"),
    ("medium", "medium-sized", "mid-sized"),
    ("large", "big", "huge"),
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


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def caption(rng: np.random.Generator, scene: Scene, color: str, shape: str) -> str:
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


def uninformative_caption(rng: np.random.Generator) -> str:
    """An alt-text that says nothing about the image (a camera file name or boilerplate)."""
    if rng.random() < 0.35:
        pattern, digits = _FILENAMES[int(rng.integers(len(_FILENAMES)))]
        return pattern.format(int(rng.integers(10**digits)))
    return _UNINFORMATIVE[int(rng.integers(len(_UNINFORMATIVE)))]
