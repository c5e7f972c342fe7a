"""Long captions: ``caption_for_tokenizer`` keeps the tokens of ordinary text and bounds tokenizing time."""

from __future__ import annotations

import random

import pytest
import torch

from curate.io.shards import MAX_CAPTION_WORD, caption_for_tokenizer

VOCAB = ["photo", "of", "a", "the", "antidisestablishmentarianism", "https://example.com/a/b?c=d&e=f", "2023-01-01",
         "café", "東京タワー", "🙂", "red", "circle", "incomprehensibilities", "x" * 40, "\n", "—", "ÆØÅ"]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


def test_ordinary_long_captions_keep_their_tokens(tokenizer: object) -> None:
    rng = random.Random(0)
    for _ in range(30):
        caption = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 1500)))
        assert torch.equal(tokenizer([caption]), tokenizer([caption_for_tokenizer(caption)]))  # type: ignore


def test_cut_is_bounded_and_a_prefix() -> None:
    rng = random.Random(1)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    out = caption_for_tokenizer(word)
    assert out == word[:MAX_CAPTION_WORD]
    text = "short words " * 100_000
    assert caption_for_tokenizer(text, context_length=16) == text[: 16 * 16]
    assert caption_for_tokenizer("") == ""


def test_hostile_caption_tokenizes_quickly(tokenizer: object) -> None:
    """1 MB without a space takes hours through open_clip's BPE; after the cut it is one short word."""
    rng = random.Random(2)
    hostile = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    spaced = " ".join(hostile[i : i + MAX_CAPTION_WORD] for i in range(0, len(hostile), MAX_CAPTION_WORD))
    tokens = tokenizer([caption_for_tokenizer(hostile), caption_for_tokenizer(spaced)])  # type: ignore[operator]
    assert tokens.shape == (2, 77)
    assert torch.equal(tokens[0], tokenizer([hostile[:MAX_CAPTION_WORD]])[0])  # type: ignore[operator]
