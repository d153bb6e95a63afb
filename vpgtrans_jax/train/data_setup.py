"""Training data from a config: sources, tokenizer, the synthetic default, the grain iterator."""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections

from vpgtrans_jax.train.config_base import REQUIRED

log = logging.getLogger(__name__)

SYNTHETIC_PLACEHOLDER = "{synthetic_dir}"


def ensure_synthetic(c: ml_collections.ConfigDict) -> str | None:
    """Generates the synthetic dataset on first use (cached afterwards); returns its directory."""
    if not c.data.synthetic_dir:
        return None
    root = os.path.abspath(os.path.expanduser(c.data.synthetic_dir))
    if os.path.exists(os.path.join(root, "manifest.json")):
        return root
    from vpgtrans_jax.data import synthetic_export

    log.info("generating synthetic data (%d images) in %s", c.data.synthetic_images, root)
    tmp = root + f".tmp{os.getpid()}"
    synthetic_export.generate(
        tmp, num_images=c.data.synthetic_images, seed=0, image_size=c.data.image_size
    )
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process won the race; its copy is identical (deterministic)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _expand(value: Any, synthetic: str | None) -> Any:
    if isinstance(value, str) and SYNTHETIC_PLACEHOLDER in value:
        if synthetic is None:
            raise ValueError(
                f"{value!r} refers to {SYNTHETIC_PLACEHOLDER} but data.synthetic_dir is empty"
            )
        return value.replace(SYNTHETIC_PLACEHOLDER, synthetic)
    if isinstance(value, list | tuple):
        return type(value)(_expand(v, synthetic) for v in value)
    return value


def build_sources(c: ml_collections.ConfigDict) -> tuple[str, list[tuple[str, Any, float]]]:
    """``(tokenizer_dir, [(name, source, weight), ...])`` from ``config.data``."""
    from vpgtrans_jax.data.registry import make_source

    synthetic = ensure_synthetic(c)
    tokenizer = _expand(c.data.tokenizer, synthetic)
    if tokenizer in ("", REQUIRED):
        raise ValueError(
            "config.data.tokenizer: a local Hugging Face tokenizer directory is required"
        )
    if not os.path.isdir(tokenizer):
        raise ValueError(f"config.data.tokenizer: {tokenizer!r} is not a directory")
    sources = []
    for name, spec in sorted(c.data.sources.items()):
        args = {k: _expand(v, synthetic) for k, v in spec["args"].items()}
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
    tokenizer_dir: str,
    sources: list[tuple[str, Any, float]],
    per_host_batch: int,
    shard_index: int,
    shard_count: int,
):
    """The endless, checkpointable per-host training iterator (``vpgtrans_jax.data.pipeline``)."""
    from vpgtrans_jax.data import pipeline, text
    from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor

    tok = text.load_tokenizer(tokenizer_dir)
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
