"""A tiny model to serve with nothing downloaded: random LLaMA-style towers of the tiny configs
(``train.presets.tiny``) with the synthetic dataset's tokenizer and the ``vicuna_v0`` template.
Its answers are noise; its shapes and speed are those of the tiny chat model, which is what
``bench_serve`` measures."""

from __future__ import annotations

import os

from flax import nnx

from vpgtrans_jax.chat.conversation import get_template
from vpgtrans_jax.data.text import load_tokenizer
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.serve.served_model import ServedModel
from vpgtrans_jax.tiny.prepare import ensure_synthetic
from vpgtrans_jax.train import builder, config_base, presets

NAME = "tiny-random"


def random_tiny(seed: int = 0) -> ServedModel:
    """The tiny random model (the synthetic data is generated once and cached)."""
    c = config_base.base_config()
    presets.tiny(c, llm_type="llama")
    synthetic = ensure_synthetic(c.data.synthetic_dir, c.data.synthetic_images, c.data.image_size)
    tokenizer = load_tokenizer(os.path.join(synthetic, "tokenizer"))
    model = VLModel(builder.random_model_config(c), rngs=nnx.Rngs(seed))
    return ServedModel(NAME, model, tokenizer, get_template("vicuna_v0"))
