"""``transformers.LlamaForCausalLM`` (Vicuna, Mistral, Qwen2) ↔ ``models.llama``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpgtrans_jax.checkpoint.hf.common import as_dict
from vpgtrans_jax.checkpoint.rules import WeightRule, layer_rules
from vpgtrans_jax.models.configs import make_config
from vpgtrans_jax.models.llama import LlamaConfig

MODEL_TYPES = ("llama", "mistral", "qwen2")
LAVIS_PROJECTOR = "llama_proj"  # the projector's name in VPGTrans checkpoints


def config_from_hf(hf_config: Any, **overrides: Any) -> LlamaConfig:
    """From a transformers Llama / Mistral / Qwen2 config object or a ``config.json`` dict.

    RoPE settings are read from ``rope_parameters`` (transformers 5) or ``rope_theta`` +
    ``rope_scaling`` (older files). ``overrides`` replace fields (e.g. ``dtype="bfloat16"``).
    """
    d = as_dict(hf_config)
    model_type = d.get("model_type") or "llama"
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not a LLaMA-family decoder; "
            f"expected one of {MODEL_TYPES}"
        )
    if model_type == "mistral" and d.get("sliding_window") is not None:
        raise ValueError(
            f"mistral sliding_window={d['sliding_window']!r} is not supported; "
            "only full attention (sliding_window=None)"
        )
    if model_type == "qwen2" and (
        d.get("use_sliding_window") or "sliding_attention" in (d.get("layer_types") or ())
    ):
        raise ValueError("qwen2 use_sliding_window=True is not supported; only full attention")

    rope_params = d.get("rope_parameters")
    if rope_params:
        if not isinstance(rope_params, Mapping) or any(
            isinstance(v, Mapping) for v in rope_params.values()
        ):
            raise ValueError(
                "rope_parameters must be one flat dict (no per-layer-type RoPE), "
                f"got {rope_params!r}"
            )
        rope_theta = rope_params.get("rope_theta", d.get("rope_theta"))
        rope_scaling = rope_params
    else:
        rope_theta = d.get("rope_theta")
        rope_scaling = d.get("rope_scaling")
    max_pos = int(d.get("max_position_embeddings", 2048))
    heads = int(d["num_attention_heads"])
    kw: dict[str, Any] = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=d.get("head_dim") or None,
        intermediate_size=int(d["intermediate_size"]),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(10000.0 if rope_theta is None else rope_theta),
        rope_scaling=rope_scaling,
        attention_bias=bool(d.get("attention_bias", False)) and model_type == "llama",
        qkv_bias=model_type == "qwen2",
        mlp_bias=bool(d.get("mlp_bias", False)) and model_type == "llama",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        hidden_act=d.get("hidden_act", "silu"),
        max_position_embeddings=max_pos,
    )
    return make_config(LlamaConfig, {**kw, **overrides}, "LlamaConfig override")


def config_to_hf(cfg: LlamaConfig) -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` (``Qwen2ForCausalLM`` with ``qkv_bias``)."""
    if cfg.attention_bias and cfg.qkv_bias:
        raise ValueError("attention_bias and qkv_bias together have no HF counterpart")
    if cfg.mlp_bias and cfg.qkv_bias:
        raise ValueError("a Qwen2-style LLM (qkv_bias) with mlp_bias has no HF counterpart")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {**cfg.rope_scaling_dict, "rope_theta": cfg.rope_theta}
    qwen = cfg.qkv_bias
    return dict(
        model_type="qwen2" if qwen else "llama",
        architectures=["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_parameters=rope,
        attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
        tie_word_embeddings=cfg.tie_word_embeddings, hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
    )  # fmt: skip


def weight_rules(cfg: LlamaConfig) -> list[WeightRule]:
    """Our parameters ← ``LlamaForCausalLM`` (also Mistral / Qwen2) state-dict keys."""
    qkv_bias = cfg.attention_bias or cfg.qkv_bias
    per_layer: list[tuple[str, str, str]] = []
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        src = f"model.layers.{{i}}.self_attn.{name}"
        per_layer.append((f"layers.{{i}}.self_attn.{name}.kernel", f"{src}.weight", "linear"))
        if cfg.attention_bias or (qkv_bias and name != "o_proj"):
            per_layer.append((f"layers.{{i}}.self_attn.{name}.bias", f"{src}.bias", "copy"))
    for name in ("gate_proj", "up_proj", "down_proj"):
        src = f"model.layers.{{i}}.mlp.{name}"
        per_layer.append((f"layers.{{i}}.mlp.{name}.kernel", f"{src}.weight", "linear"))
        if cfg.mlp_bias:
            per_layer.append((f"layers.{{i}}.mlp.{name}.bias", f"{src}.bias", "copy"))
    for name in ("input_layernorm", "post_attention_layernorm"):
        per_layer.append(
            (f"layers.{{i}}.{name}.scale", f"model.layers.{{i}}.{name}.weight", "copy")
        )

    rules = [
        WeightRule("embed_tokens.embedding", "model.embed_tokens.weight", "copy"),
        WeightRule("norm.scale", "model.norm.weight", "copy"),
        *layer_rules(per_layer, cfg.num_layers, cfg.scan_layers),
    ]
    if not cfg.tie_word_embeddings:
        rules.append(WeightRule("lm_head.kernel", "lm_head.weight", "linear"))
    return rules


def is_unused_key(key: str) -> bool:
    """Torch keys no parameter reads: RoPE buffers of old checkpoints and a tied ``lm_head``.

    (Only consulted for keys no rule reads, so an untied ``lm_head.weight`` is still loaded.)
    """
    return key.endswith("rotary_emb.inv_freq") or key == "lm_head.weight"
