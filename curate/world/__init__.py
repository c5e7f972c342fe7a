"""The synthetic world: a deterministic image–caption dataset with known defects, for demos, tests and benchmarks.

A *world* is a folder of WebDataset shards drawn from a seed. Its images are coloured shapes (a class
is a ``"<colour> <shape>"`` pair, e.g. ``"red circle"``) of a few sizes and positions on solid,
gradient or noisy backgrounds, stored as JPEG; its captions are templated. The training split is
long-tailed over classes (Zipf) and carries injected defects: mismatched captions (describing another
class), exact and near duplicates (re-rendered copies of a clean sample of the same class, a near one
shifted, recoloured or re-encoded), and uninformative captions (file names, boilerplate). Defects are
mutually exclusive and their rates are met exactly. The test split is clean and class-balanced.

:func:`make_sample` writes, under its folder::

    train/NNNNN.tar      the training pool (with defects)
    test/NNNNN.tar       the held-out split (clean, balanced), for zero-shot evaluation
    classnames.txt       one class name per line, in class_id order
    templates.txt        zero-shot prompt templates (``{}`` is the class name)
    world.json           the marker, written last: format, seed, parameters, classes with their
                         Zipf rank and counts, defect counts, and the size and sha256 of every file

Every sample has ``jpg``, ``txt`` (the caption) and ``json`` members. The json holds ``uid``, ``key``,
``split``, ``caption``, ``width``, ``height``, ``scene`` (size, position, background) and the ground
truth under ``"truth"``: ``class``, ``class_id``, ``caption_class`` (the class the caption names, or null
for an uninformative caption), ``mismatched``, ``duplicate_of`` (the original's uid, or null),
``duplicate_kind`` (``"exact"``, ``"near"`` or null) and ``uninformative``. That object is the
ground-truth contract: :func:`read_truth` reads it into a table of schema ``curate.schemas.TRUTH_SCHEMA``
(``subset_truth_metrics`` and the demo use it), the zero-shot evaluation reads ``truth.class``, and
``curate report`` labels gallery samples with it.

Everything is a pure function of the seed and the parameters: the same call writes the same bytes.
Streams are independent per split, and every sample draws from its own ``PCG64`` generator, so a sample
can be re-rendered from its seed (which is how duplicates copy their originals).

Modules: :mod:`~curate.world.scenes` (palette, scenes, rendering), :mod:`~curate.world.captions`,
:mod:`~curate.world.plan` (class counts and defects per split), :mod:`~curate.world.samples` (one
sample's members), :mod:`~curate.world.generate` (:func:`make_sample`), :mod:`~curate.world.truth`
(:func:`read_truth`), :mod:`~curate.world.evaluate` (subset quality, zero-shot accuracy).
"""

from __future__ import annotations

from curate.world.captions import ZERO_SHOT_TEMPLATES
from curate.world.evaluate import load_labelled_split, subset_truth_metrics, zero_shot_accuracy
from curate.world.generate import WORLD_FORMAT, list_shards, make_sample
from curate.world.samples import sample_uid
from curate.world.scenes import BACKGROUND_COLORS, COLORS, DEFAULT_COLORS, DEFAULT_SHAPES, SHAPES, class_names
from curate.world.truth import read_truth

__all__ = [
    "BACKGROUND_COLORS",
    "COLORS",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "SHAPES",
    "WORLD_FORMAT",
    "ZERO_SHOT_TEMPLATES",
    "class_names",
    "list_shards",
    "load_labelled_split",
    "make_sample",
    "read_truth",
    "sample_uid",
    "subset_truth_metrics",
    "zero_shot_accuracy",
]
