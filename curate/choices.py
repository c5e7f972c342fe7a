"""Fixed option values shared by the library and the CLI, importable without torch (``--help`` lists them)."""

from __future__ import annotations

#: Numeric precision of a model's forward pass (auto: fp16 on CUDA, fp32 on CPU).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: Caption handling of ``curate embed``: auto (image-only shards allowed), required, ignore.
CAPTION_MODES = ("auto", "required", "ignore")
