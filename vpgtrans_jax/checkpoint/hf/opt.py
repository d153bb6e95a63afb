"""``transformers.OPTForCausalLM`` ↔ ``models.opt.OPTForCausalLM``."""

from __future__ import annotations

from typing import Any

from vpgtrans_jax.checkpoint.hf.common import as_dict
from vpgtrans_jax.checkpoint.rules import WeightRule, layer_rules
from vpgtrans_jax.models.configs import make_config
from vpgtrans_jax.models.opt import OPTConfig

MODEL_TYPES = ("opt",)
LAVIS_PROJECTOR = "opt_proj"  # the projector's name in LAVIS / VPGTrans checkpoints


def config_from_hf(hf_config: Any, **overrides: Any) -> OPTConfig:
    """From a ``transformers.OPTConfig`` or its ``config.json`` dict.

    ``overrides`` replace any of our fields (e.g. ``dtype="bfloat16"``, ``scan_layers=True``).
    Missing optional HF keys take Hugging Face's defaults.
    """
    c = as_dict(hf_config)
    missing = object()

    def get(key: str, default: Any = missing) -> Any:
        value = c.get(key, missing)
        if value is missing:
            if default is missing:
                raise ValueError(f"OPT config is missing required key {key!r}")
            return default
        return value

    model_type = get("model_type", "opt")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"expected an OPT config (model_type 'opt'), got {model_type!r}")
    fields = dict(
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=get("num_attention_heads"),
        ffn_dim=get("ffn_dim"),
        max_position_embeddings=get("max_position_embeddings", 2048),
        word_embed_proj_dim=get("word_embed_proj_dim", None),
        do_layer_norm_before=get("do_layer_norm_before", True),
        enable_bias=get("enable_bias", True),
        layer_norm_elementwise_affine=get("layer_norm_elementwise_affine", True),
        activation_function=get("activation_function", "relu"),
        remove_final_layer_norm=get("_remove_final_layer_norm", False),
        tie_word_embeddings=get("tie_word_embeddings", True),
    )
    return make_config(OPTConfig, {**fields, **overrides}, "OPT override")


def config_to_hf(cfg: OPTConfig) -> dict[str, Any]:
    """The ``config.json`` of an ``OPTForCausalLM`` equal to ``cfg``."""
    if cfg.layer_norm_eps != 1e-5:
        raise ValueError(
            f"OPT layer_norm_eps={cfg.layer_norm_eps} cannot be expressed (HF OPT uses 1e-5)"
        )
    return dict(
        model_type="opt", architectures=["OPTForCausalLM"], vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        word_embed_proj_dim=cfg.input_embed_dim, do_layer_norm_before=cfg.do_layer_norm_before,
        enable_bias=cfg.enable_bias,
        layer_norm_elementwise_affine=cfg.layer_norm_elementwise_affine,
        activation_function=cfg.activation_function,
        _remove_final_layer_norm=cfg.remove_final_layer_norm,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )  # fmt: skip


def weight_rules(cfg: OPTConfig) -> list[WeightRule]:
    """Our parameters ← ``OPTForCausalLM`` state-dict keys."""
    p = "model.decoder."
    rules = [
        WeightRule("embed_tokens.embedding", p + "embed_tokens.weight"),
        WeightRule("embed_positions.embedding", p + "embed_positions.weight"),
    ]
    if cfg.has_projection:
        rules += [
            WeightRule("project_in.kernel", p + "project_in.weight", "linear"),
            WeightRule("project_out.kernel", p + "project_out.weight", "linear"),
        ]
    affine = cfg.layer_norm_elementwise_affine
    if cfg.has_final_layer_norm and affine:
        rules += [
            WeightRule("final_layer_norm.scale", p + "final_layer_norm.weight"),
            WeightRule("final_layer_norm.bias", p + "final_layer_norm.bias"),
        ]
    if not cfg.tie_word_embeddings:
        rules.append(WeightRule("lm_head.kernel", "lm_head.weight", "linear"))

    per_layer: list[tuple[str, str, str]] = []
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        per_layer.append((f"self_attn.{name}.kernel", f"self_attn.{name}.weight", "linear"))
        if cfg.enable_bias:
            per_layer.append((f"self_attn.{name}.bias", f"self_attn.{name}.bias", "copy"))
    for name in ("fc1", "fc2"):
        per_layer.append((f"{name}.kernel", f"{name}.weight", "linear"))
        if cfg.enable_bias:
            per_layer.append((f"{name}.bias", f"{name}.bias", "copy"))
    if affine:
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            per_layer.append((f"{name}.scale", f"{name}.weight", "copy"))
            per_layer.append((f"{name}.bias", f"{name}.bias", "copy"))
    pairs = [(f"layers.{{i}}.{o}", f"{p}layers.{{i}}.{h}", k) for o, h, k in per_layer]
    return rules + layer_rules(pairs, cfg.num_layers, cfg.scan_layers)


def is_unused_key(key: str) -> bool:
    """A tied ``lm_head.weight`` duplicates the token embedding (an untied one is read by a
    rule, so it is never reported as unused either way)."""
    return key == "lm_head.weight"
