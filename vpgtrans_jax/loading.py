"""``vpgtrans_jax.load``: build a ready VL model from a checkpoint directory.

Supported: this project's model directories (``vpgtrans_model.json`` + Orbax parameters, as
written by the ``convert/`` tools and ``vpgtrans_jax.convert.save_model_dir``; see
docs/checkpoints.md), and Hugging Face BLIP-2 directories (``config.json`` + ``model.safetensors``
or sharded safetensors with ``model.safetensors.index.json``), as written by
``transformers.Blip2ForConditionalGeneration.save_pretrained``, with an OPT or LLaMA-family text
model.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vpgtrans_jax import sharding, weights
from vpgtrans_jax.checkpoint_io import CheckpointError, ShardedCheckpoint, read_json
from vpgtrans_jax.models import llama, opt, qformer, vit
from vpgtrans_jax.models.vl_model import VLConfig, VLModel
from vpgtrans_jax.weights import WeightRule


def hf_blip2_rules(cfg: VLConfig) -> list[WeightRule]:
    """Every parameter of ``VLModel(cfg)`` ← its ``Blip2ForConditionalGeneration`` tensor."""
    rules: list[WeightRule] = []
    rules += [r.with_prefix("vision.", "vision_model.") for r in vit.hf_weight_map(cfg.vision)]
    rules += [
        WeightRule("ln_vision.scale", "vision_model.post_layernorm.weight"),
        WeightRule("ln_vision.bias", "vision_model.post_layernorm.bias"),
        WeightRule("query_tokens", "query_tokens"),
    ]
    rules += [r.with_prefix("qformer.", "qformer.") for r in qformer.hf_weight_map(cfg.qformer)]
    rules += [
        WeightRule("projector.kernel", "language_projection.weight", "linear"),
        WeightRule("projector.bias", "language_projection.bias"),
    ]
    llm_mod = opt if cfg.llm_type == "opt" else llama
    rules += [r.with_prefix("llm.", "language_model.") for r in llm_mod.hf_weight_map(cfg.llm)]
    return rules


def is_unused_hf_blip2_key(key: str, cfg: VLConfig) -> bool:
    """Tensors of HF BLIP-2 checkpoints that the query-path model legitimately never uses."""
    if key.startswith("qformer."):
        return qformer.is_unused_hf_key(key[len("qformer.") :])
    if key.startswith("language_model."):
        llm_mod = opt if cfg.llm_type == "opt" else llama
        return llm_mod.is_unused_hf_key(key[len("language_model.") :])
    return False


def load(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    **tower_overrides: Any,
) -> VLModel:
    """Loads a VL model from ``path``.

    Args:
      path: a model directory of this project or a Hugging Face BLIP-2 directory.
      mesh: when given, parameters are placed on it (one tensor at a time) following ``rules``.
      **tower_overrides: config fields applied to every tower, e.g. ``dtype="bfloat16"``,
        ``param_dtype="bfloat16"``, ``scan_layers=True``, ``remat_policy="nothing_saveable"``.

    Returns:
      ``VLModel``; call it as ``model(pixel_values[B,H,W,3], input_ids[B,T], attention_mask[B,T])``.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    from vpgtrans_jax.convert import model_dir  # imports this module: keep the import local

    if model_dir.is_model_dir(path):
        return model_dir.load_model_dir(path, mesh=mesh, rules=rules, **tower_overrides)
    config_path = os.path.join(path, "config.json")
    hf_config = read_json(config_path)
    model_type = hf_config.get("model_type")
    if model_type in ("blip-2", "blip_2"):
        return load_hf_blip2(path, hf_config, mesh=mesh, rules=rules, **tower_overrides)
    raise CheckpointError(
        f"{config_path}: model_type {model_type!r} is not a loadable VL checkpoint; expected a "
        f"Hugging Face BLIP-2 directory (model_type 'blip-2') or a directory with "
        f"{model_dir.MANIFEST} written by convert/hf_to_orbax.py or convert/lavis_to_orbax.py"
    )


def load_hf_blip2(
    path: str,
    hf_config: dict | None = None,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    **tower_overrides: Any,
) -> VLModel:
    """Loads a ``Blip2ForConditionalGeneration`` directory into a ``VLModel``."""
    if hf_config is None:
        hf_config = read_json(os.path.join(path, "config.json"))
    try:
        cfg = VLConfig.from_hf(hf_config, **tower_overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    ckpt = ShardedCheckpoint(path)
    vit.check_hf_k_bias_zero(_NumpyView(ckpt, "vision_model."), prefix="")
    abstract_model = weights.abstract(lambda: VLModel(cfg, rngs=_rngs()))
    shardings = None
    if mesh is not None:
        from flax import nnx

        shardings = sharding.state_shardings(nnx.state(abstract_model), mesh, rules)
    return weights.load_from_torch_state_dict(
        abstract_model,
        hf_blip2_rules(cfg),
        ckpt,
        ignore_unused=lambda k: is_unused_hf_blip2_key(k, cfg),
        source=path,
        shardings=shardings,
    )


class _NumpyView:
    """``mapping[prefix + key]`` seen as ``view[key]`` (for per-tower checks)."""

    def __init__(self, mapping, prefix: str):
        self._m, self._p = mapping, prefix

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self._m[self._p + key])

    def __contains__(self, key: str) -> bool:
        return (self._p + key) in self._m

    def keys(self):
        return [k[len(self._p) :] for k in self._m if k.startswith(self._p)]

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        return ((k, self[k]) for k in self.keys())


def _rngs():
    from flax import nnx

    return nnx.Rngs(params=jax.random.key(0))
