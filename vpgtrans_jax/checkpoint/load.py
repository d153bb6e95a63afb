"""``vpgtrans_jax.load``: a ready VL model from a checkpoint directory.

Supported: this project's model directories (``vpgtrans_model.json`` + Orbax parameters, as
written by the ``convert/`` tools, a training stage's ``export`` and
``checkpoint.model_dir.save_model_dir``; see docs/checkpoints.md), and Hugging Face BLIP-2
directories (``config.json`` + ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, or ``pytorch_model.bin``), as written by
``transformers.Blip2ForConditionalGeneration.save_pretrained``, with an OPT or LLaMA-family text
model. Both go through the one import engine (``checkpoint.engine``).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from vpgtrans_jax import paths, sharding
from vpgtrans_jax.checkpoint import engine, hub, model_dir
from vpgtrans_jax.checkpoint.fill import abstract, expected_params, fill_abstract
from vpgtrans_jax.checkpoint.hf import blip2
from vpgtrans_jax.checkpoint.sources import open_hf_weights, read_json
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models.vl_model import VLModel


def load(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    **tower_overrides: Any,
) -> VLModel:
    """Loads a VL model from ``path``.

    Args:
      path: a model directory of this project or a Hugging Face BLIP-2 directory, or a Hugging
        Face hub id (``"Salesforce/blip2-opt-2.7b"``) when no such local path exists: its
        snapshot in the local HF cache, downloaded unless ``HF_HUB_OFFLINE=1`` (``checkpoint.hub``).
      mesh: when given, parameters are placed on it (one tensor at a time) following ``rules``.
      **tower_overrides: config fields applied to every tower, e.g. ``dtype="bfloat16"``,
        ``param_dtype="bfloat16"``, ``scan_layers=True``, ``remat_policy="nothing_saveable"``;
        or per tower as ``vision={...}``, ``qformer={...}``, ``llm={...}``.

    Returns:
      ``VLModel``; call it as ``model(pixel_values[B,H,W,3], input_ids[B,T], attention_mask[B,T])``.
    """
    path = hub.resolve(path)
    if not paths.isdir(path):  # a local directory or a URL (gs://...)
        raise CheckpointError(f"{path}: not a directory")
    if model_dir.is_model_dir(path):
        return model_dir.load_model_dir(path, mesh=mesh, rules=rules, **tower_overrides)
    config_path = paths.join(path, "config.json")
    hf_config = read_json(config_path)
    if blip2.is_blip2(hf_config):
        return load_hf_blip2(path, hf_config, mesh=mesh, rules=rules, **tower_overrides)
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
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
        hf_config = read_json(paths.join(path, "config.json"))
    try:
        cfg = blip2.config_from_hf(hf_config, **tower_overrides)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    source, weight_rules = open_hf_weights(path), blip2.weight_rules(cfg)
    optional = lambda k: blip2.is_unused_key(k, cfg)  # noqa: E731
    what = "a BLIP-2 model with this config.json"
    # The tensor names config.json implies are checked against the checkpoint's index before any
    # model is built: a config claiming 2000 layers over a 2-layer checkpoint fails at once.
    engine.check_keys(source, weight_rules, optional=optional, what=what)
    abstract_model = abstract(lambda: VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(0))))
    flat = engine.import_all(
        source, weight_rules, expected_params(abstract_model), optional=optional, what=what
    )
    shardings = None
    if mesh is not None:
        shardings = sharding.state_shardings(nnx.state(abstract_model), mesh, rules)
    return fill_abstract(abstract_model, flat, source=path, shardings=shardings)


__all__ = ["load", "load_hf_blip2"]
