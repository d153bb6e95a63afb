"""Training data from a config: sources, tokenizer and the grain iterator."""

from __future__ import annotations

from typing import Any

import ml_collections

from vpgtrans_jax import paths
from vpgtrans_jax.data import pipeline
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor
from vpgtrans_jax.train.config_base import REQUIRED


def build_sources(c: ml_collections.ConfigDict) -> tuple[str, list[tuple[str, Any, float]]]:
    """``(tokenizer_dir, [(name, source, weight), ...])`` from ``config.data``."""
    tokenizer = c.data.tokenizer
    if tokenizer in ("", REQUIRED):
        raise ValueError(
            "config.data.tokenizer: a local Hugging Face tokenizer directory is required"
        )
    if not paths.isdir(tokenizer):
        raise ValueError(f"config.data.tokenizer: {tokenizer!r} is not a directory")
    sources = []
    for name, spec in sorted(c.data.sources.items()):
        args = dict(spec["args"])
        try:
            src = make_source(spec["kind"], **args)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"config.data.sources.{name}: {e}") from e
        if len(src) == 0:
            raise ValueError(f"config.data.sources.{name}: the source is empty")
        sources.append((name, src, float(spec["weight"])))
    return tokenizer, sources


def build_train_iterator(
    c: ml_collections.ConfigDict,
    tok: Any,
    sources: list[tuple[str, Any, float]],
    per_host_batch: int,
    shard_index: int,
    shard_count: int,
):
    """The endless, checkpointable per-host training iterator (``vpgtrans_jax.data.pipeline``);
    ``tok`` is the LLM's tokenizer (``text.load_tokenizer(tokenizer_dir)``)."""
    sample_cfg = SampleConfig(
        mode="train",
        image_size=c.data.image_size,
        max_len=c.data.max_len,
        prompt=c.data.prompt,
        text_field=c.data.text_field,
        text_processor=c.data.text_processor,
        end=c.data.end,
        flip_prob=c.data.flip_prob,
        min_scale=c.data.min_scale,
        instructions=tuple(c.data.instructions),
        max_image_pixels=c.data.max_image_pixels,
    )
    return pipeline.train_iterator(
        sources,
        SampleProcessor(sample_cfg, tok),
        batch_size=per_host_batch,
        seed=c.seed,
        num_workers=c.data.num_workers,
        max_bad_fraction=c.data.max_bad_fraction,
        buckets=[c.data.max_len],
        shard_index=shard_index,
        shard_count=shard_count,
    )
