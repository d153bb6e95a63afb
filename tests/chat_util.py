"""A tiny chat model directory for the chat and web UI tests."""

from __future__ import annotations

import os

import jax
from flax import nnx

from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.tiny import dataset as synthetic
from vpgtrans_jax.train import config_base, presets
from vpgtrans_jax.train.builder import random_model_config
from vpgtrans_jax.train.export import export_model_dir


def make_chat_model_dir(root: str) -> tuple[str, str]:
    """A tiny random LLaMA-style VL model directory (one layer per tower: quick to compile)
    recording the vicuna_v0 template and a synthetic tokenizer; returns (its path, an image)."""
    data = os.path.join(root, "data")
    synthetic.generate(data, num_images=6, seed=0, image_size=32)
    c = config_base.base_config()
    presets.tiny(c, llm_type="llama")
    c.model.arch.vision.num_layers = c.model.arch.llm.num_layers = 1
    model = VLModel(random_model_config(c), rngs=nnx.Rngs(params=jax.random.key(0)))
    info = {"tokenizer": os.path.join(data, "tokenizer"), "chat_template": "vicuna_v0"}
    out = os.path.join(root, "model")
    export_model_dir(model, out, pretrained_path=None, created_by="test", info=info)
    images = os.path.join(data, "images", "train")
    return out, os.path.join(images, sorted(os.listdir(images))[0])
