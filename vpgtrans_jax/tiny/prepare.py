"""Resolving a training config's offline demo assets before training starts.

A tiny config (``configs/tiny_*.py``) names a synthetic dataset directory and refers to it as
``{synthetic_dir}`` in its paths, and asks for a pretrained tiny LLM
(``model.tiny_llm_steps``). ``prepare(config)`` makes both exist — the dataset generated on first
use, the LLM pretrained on its captions and cached — and writes the concrete paths into the
config, so ``train()`` only ever sees a config of real paths. Configs without
``data.synthetic_dir`` pass through unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import ml_collections

from vpgtrans_jax.tiny import chat_corpus, dataset
from vpgtrans_jax.tiny.llm import ensure_tiny_llm
from vpgtrans_jax.train.config_base import SYNTHETIC_PLACEHOLDER, validate

log = logging.getLogger(__name__)


def ensure_synthetic(root: str, num_images: int, image_size: int) -> str:
    """Generates the synthetic dataset into ``root`` on first use; returns its absolute path."""
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.exists(os.path.join(root, "manifest.json")):
        return root
    log.info("generating synthetic data (%d images) in %s", num_images, root)
    tmp = root + f".tmp{os.getpid()}"
    dataset.generate(tmp, num_images=num_images, seed=0, image_size=image_size)
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process won the race; its copy is identical (deterministic)
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def substitute(value: Any, synthetic: str) -> Any:
    """``{synthetic_dir}`` replaced by ``synthetic`` in a string or a list/tuple of strings."""
    if isinstance(value, str):
        return value.replace(SYNTHETIC_PLACEHOLDER, synthetic)
    if isinstance(value, list | tuple):
        return type(value)(substitute(v, synthetic) for v in value)
    return value


def prepare(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes ``c``'s synthetic data and tiny LLM exist and fills their paths into ``c`` (in
    place; returned for convenience). The config is validated first, so a bad value is
    reported before anything is generated."""
    validate(c, prepared=False)
    if not c.data.synthetic_dir:
        return c
    synthetic = ensure_synthetic(c.data.synthetic_dir, c.data.synthetic_images, c.data.image_size)
    c.data.synthetic_dir = synthetic
    c.data.tokenizer = substitute(c.data.tokenizer, synthetic)
    for spec in c.data.sources.values():
        for arg, value in spec["args"].items():
            spec["args"][arg] = substitute(value, synthetic)
            if value == f"{SYNTHETIC_PLACEHOLDER}/{chat_corpus.DIRNAME}":
                chat_corpus.ensure_chat_align(synthetic)  # derived from the dataset, cached
    if c.model.init == "random" and c.model.tiny_llm_steps > 0 and not c.model.llm_init:
        c.model.llm_init = ensure_tiny_llm(c, synthetic, c.data.tokenizer)
    return c


__all__ = ["prepare", "ensure_synthetic", "substitute"]
