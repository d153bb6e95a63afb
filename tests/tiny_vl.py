"""A tiny VL model config and its stage train step, shared by the performance tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.models.vl_model import VLConfig, VLModel
from vpgtrans_jax.train import optim
from vpgtrans_jax.train import step as step_lib

VOCAB = 512


def config(llm_type: str = "opt", frozen: str = "float32", vpg: str = "float32") -> VLConfig:
    """Vision and LLM towers in ``frozen`` dtype (compute and storage), the VPG side in ``vpg``."""
    fz = dict(dtype=frozen, param_dtype=frozen)
    llm_cls = OPTConfig if llm_type == "opt" else LlamaConfig
    llm_fields = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4)
    llm_fields.update(
        ffn_dim=48, max_position_embeddings=64
    ) if llm_type == "opt" else llm_fields.update(
        num_kv_heads=2, intermediate_size=48, max_position_embeddings=64
    )
    return VLConfig(
        vision=VisionConfig(image_size=16, patch_size=8, hidden_size=24, num_layers=1,
                            num_heads=2, mlp_dim=32, **fz),
        qformer=QFormerConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                              encoder_hidden_size=24, dtype=vpg, param_dtype=vpg),
        llm=llm_cls(**llm_fields, **fz),
        num_query_tokens=4,
    )  # fmt: skip


def batch(b: int, t: int, seed: int = 0, image_size: int = 16) -> dict[str, jax.Array]:
    key = jax.random.key(seed)
    k1, k2 = jax.random.split(key)
    ids = jax.random.randint(k1, (b, t), 0, VOCAB)
    mask = (jnp.arange(t)[None, :] < jnp.arange(t - b + 1, t + 1)[:, None]).astype(jnp.int32)
    return {
        "pixel_values": jax.random.normal(k2, (b, image_size, image_size, 3)),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": jnp.where(mask == 1, ids, -100),
    }


def train_step(cfg: VLConfig, trainable, **step_kw):
    """(jitted step, state, frozen) of a freshly initialised model."""
    model = VLModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, frozen = optim.split_trainable(model, trainable)
    tx = optax.adamw(1e-3)
    state = step_lib.TrainState.create(params, tx)
    return jax.jit(step_lib.make_train_step(graphdef, tx, **step_kw)), state, frozen
