"""``transformers.Blip2QFormerModel`` ↔ ``models.qformer.QFormer`` (the query path only)."""

from __future__ import annotations

import re
from typing import Any

from vpgtrans_jax.checkpoint.hf.common import as_dict
from vpgtrans_jax.checkpoint.rules import WeightRule, layer_rules
from vpgtrans_jax.models.configs import make_config
from vpgtrans_jax.models.qformer import QFormerConfig

MODEL_TYPE = "blip_2_qformer"
_COMPOSITE_TYPES = ("blip-2", "blip_2")


def config_from_hf(hf_config: Any, **overrides: Any) -> QFormerConfig:
    """From a ``Blip2QFormerConfig`` (or a whole ``Blip2Config``), as an object or a dict.

    Dropout probabilities are accepted and ignored (the query path runs without dropout).
    """
    c = as_dict(hf_config)
    if c.get("model_type") in _COMPOSITE_TYPES or (
        "qformer_config" in c and "hidden_size" not in c
    ):
        outer = c
        c = as_dict(outer.get("qformer_config") or {})
        # Blip2Config ties the cross-attention input width to the vision width.
        vision = as_dict(outer.get("vision_config") or {})
        if "hidden_size" in vision:
            c["encoder_hidden_size"] = vision["hidden_size"]
    model_type = c.get("model_type")
    if model_type is not None and model_type != MODEL_TYPE:
        raise ValueError(
            f"Q-Former config: model_type {model_type!r} is not supported; expected {MODEL_TYPE!r}"
        )
    act = c.get("hidden_act", "gelu")
    if not isinstance(act, str):
        raise ValueError(f"Q-Former config: hidden_act must be a name, got {act!r}")
    fields = dict(
        hidden_size=int(c.get("hidden_size", 768)),
        num_layers=int(c.get("num_hidden_layers", 12)),
        num_heads=int(c.get("num_attention_heads", 12)),
        intermediate_size=int(c.get("intermediate_size", 3072)),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
        cross_attention_frequency=int(c.get("cross_attention_frequency", 2)),
        encoder_hidden_size=int(c.get("encoder_hidden_size", 1408)),
        hidden_act=act,
    )
    return make_config(QFormerConfig, {**fields, **overrides})


def config_to_hf(cfg: QFormerConfig) -> dict[str, Any]:
    """The ``qformer_config`` of a ``Blip2Config`` equal to ``cfg``."""
    return dict(
        model_type=MODEL_TYPE, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps,
        cross_attention_frequency=cfg.cross_attention_frequency,
        encoder_hidden_size=cfg.encoder_hidden_size, use_qformer_text_input=False,
    )  # fmt: skip


_ATTN_PARTS = (
    ("query.kernel", "attention.query.weight", "linear"),
    ("query.bias", "attention.query.bias", "copy"),
    ("key.kernel", "attention.key.weight", "linear"),
    ("key.bias", "attention.key.bias", "copy"),
    ("value.kernel", "attention.value.weight", "linear"),
    ("value.bias", "attention.value.bias", "copy"),
    ("dense.kernel", "output.dense.weight", "linear"),
    ("dense.bias", "output.dense.bias", "copy"),
    ("norm.scale", "output.LayerNorm.weight", "copy"),
    ("norm.bias", "output.LayerNorm.bias", "copy"),
)
_FFN_PARTS = (
    ("fc1.kernel", "intermediate_query.dense.weight", "linear"),
    ("fc1.bias", "intermediate_query.dense.bias", "copy"),
    ("fc2.kernel", "output_query.dense.weight", "linear"),
    ("fc2.bias", "output_query.dense.bias", "copy"),
    ("norm.scale", "output_query.LayerNorm.weight", "copy"),
    ("norm.bias", "output_query.LayerNorm.bias", "copy"),
)


def weight_rules(cfg: QFormerConfig) -> list[WeightRule]:
    """Rules from ``transformers.Blip2QFormerModel`` state-dict keys to our parameters."""
    rules = [
        WeightRule("layernorm.scale", "layernorm.weight"),
        WeightRule("layernorm.bias", "layernorm.bias"),
    ]
    hf = "encoder.layer.{i}."
    per_layer = [("layers.{i}.self_attn." + o, hf + "attention." + h, k) for o, h, k in _ATTN_PARTS]
    per_layer += [("layers.{i}.ffn." + o, hf + h, k) for o, h, k in _FFN_PARTS]
    rules += layer_rules(per_layer, cfg.num_layers, cfg.scan_layers)
    # Cross-attention exists on every f-th layer only: one explicit rule per such layer.
    for g, i in enumerate(cfg.cross_layers):
        ours = f"cross_attn.{g}." if cfg.scan_layers else f"layers.{i}.cross_attn."
        rules += [
            WeightRule(ours + o, f"encoder.layer.{i}.crossattention." + h, k)
            for o, h, k in _ATTN_PARTS
        ]
    return rules


_UNUSED = re.compile(
    r"encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias)"
    r"|embeddings\.(word_embeddings\.weight|position_embeddings\.weight|position_ids)"
)


def is_unused_key(key: str) -> bool:
    """True for text-path keys (relative to ``Blip2QFormerModel``) the query path never reads.

    These are each layer's text FFN (``intermediate.dense``, ``output.dense``,
    ``output.LayerNorm``) and word/position embeddings when present.
    """
    return _UNUSED.fullmatch(key) is not None
