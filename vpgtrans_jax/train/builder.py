"""Builds the model, data iterator and optimiser that a training config describes."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from vpgtrans_jax import sharding
from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.models.vl_model import VLConfig, VLModel
from vpgtrans_jax.train.config_base import KNOBS

log = logging.getLogger(__name__)


def _knobs(c: ml_collections.ConfigDict, tower: str) -> dict[str, Any]:
    k = {name: c.model[tower][name] for name in KNOBS}
    k["remat_policy"] = None if k["remat_policy"] in ("", "none", None) else k["remat_policy"]
    return k


def rules_of(c: ml_collections.ConfigDict) -> sharding.Rules:
    if not c.sharding_rules:
        return sharding.DEFAULT_RULES
    return tuple((name, None if t is None else t) for name, t in c.sharding_rules)


def random_model_config(c: ml_collections.ConfigDict) -> VLConfig:
    """``VLConfig`` from ``config.model.arch`` + the per-tower knobs (``model.init='random'``)."""
    arch = c.model.arch
    llm_cls = OPTConfig if c.model.llm_type == "opt" else LlamaConfig

    def make(cls, fields, tower):
        try:
            return cls(**{**fields.to_dict(), **_knobs(c, tower)})
        except TypeError as e:
            raise ValueError(f"config.model.arch.{tower}: {e}") from None

    return VLConfig(
        vision=make(VisionConfig, arch.vision, "vision"),
        qformer=make(QFormerConfig, arch.qformer, "qformer"),
        llm=make(llm_cls, arch.llm, "llm"),
        num_query_tokens=arch.num_query_tokens,
        ln_vision_eps=arch.ln_vision_eps,
    )


def build_model(
    c: ml_collections.ConfigDict, mesh: Mesh, tokenizer_dir: str | None = None
) -> tuple[VLModel, dict[str, Any]]:
    """The model placed on ``mesh``, and a JSON description of where its weights came from."""
    rules = rules_of(c)
    if c.model.init == "random":
        cfg = random_model_config(c)
        model = VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(c.seed)))
        source = {"init": "random", "seed": c.seed, "config": cfg.to_dict()}
        if c.model.tiny_llm_steps > 0:
            from vpgtrans_jax.train.data_setup import ensure_synthetic
            from vpgtrans_jax.train.tiny_lm import ensure_pretrained_tiny_llm

            synthetic = ensure_synthetic(c)
            if synthetic is None or tokenizer_dir is None:
                raise ValueError(
                    "config.model.tiny_llm_steps needs config.data.synthetic_dir (its captions "
                    "and tokenizer pretrain the tiny LLM)"
                )
            source["llm"] = ensure_pretrained_tiny_llm(
                model, synthetic, tokenizer_dir, steps=c.model.tiny_llm_steps, seed=c.seed
            )
        sharding.shard_model(model, mesh, rules)
    else:
        import vpgtrans_jax

        model = vpgtrans_jax.load(
            c.model.path,
            mesh=mesh,
            rules=rules,
            vision=_knobs(c, "vision"),
            qformer=_knobs(c, "qformer"),
            llm=_knobs(c, "llm"),
        )
        source = {"init": "pretrained", "path": os.path.abspath(c.model.path)}
    if c.model.vpg_init:
        from vpgtrans_jax.train.export import apply_vpg_init

        replaced = apply_vpg_init(model, c.model.vpg_init, mesh, rules)
        source["vpg_init"] = {"path": os.path.abspath(c.model.vpg_init), "modules": replaced}
        log.info("initialised %s from %s", ", ".join(replaced), c.model.vpg_init)
    return model, source
