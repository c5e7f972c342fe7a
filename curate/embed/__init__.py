"""The embed stage: shards -> per-shard Parquet tables of embeddings and CLIP scores."""

from curate.embed.runner import EmbedConfig, EmbedResult, run_embed

__all__ = ["EmbedConfig", "EmbedResult", "run_embed"]
