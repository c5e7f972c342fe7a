"""The embed stage: shards -> per-shard Parquet tables of embeddings and CLIP scores.

The runner (and with it torch and open_clip) is imported on first use, so that modules which only
read a run's state (``curate.embed.state``: inspect, report) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.embed.runner import EmbedConfig, EmbedPlan, EmbedResult, plan_embed, run_embed

__all__ = ["EmbedConfig", "EmbedPlan", "EmbedResult", "plan_embed", "run_embed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curate.embed import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'curate.embed' has no attribute {name!r}")
