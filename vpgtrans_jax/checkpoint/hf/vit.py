"""``transformers.Blip2VisionModel`` ↔ ``models.vit.VisionTransformer``."""

from __future__ import annotations

from typing import Any

from vpgtrans_jax.checkpoint.hf.common import as_dict
from vpgtrans_jax.checkpoint.rules import WeightRule, layer_rules
from vpgtrans_jax.models.configs import make_config
from vpgtrans_jax.models.vit import VisionConfig

MODEL_TYPES = ("blip_2_vision_model", "instructblip_vision_model")
_COMPOSITE_TYPES = ("blip-2", "blip_2", "instructblip")


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"vision config: only square {name} is supported, got {value}")
        value = value[0]
    return int(value)


def config_from_hf(hf_config: Any, **overrides: Any) -> VisionConfig:
    """From a ``Blip2VisionConfig`` (or a whole ``Blip2Config``), as an object or a dict."""
    c = as_dict(hf_config)
    if c.get("model_type") in _COMPOSITE_TYPES or ("vision_config" in c and "hidden_size" not in c):
        c = as_dict(c.get("vision_config") or {})
    model_type = c.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(
            f"vision config: model_type {model_type!r} is not supported; expected one of "
            f"{MODEL_TYPES}"
        )
    fields = dict(
        image_size=_square(c.get("image_size", 224), "image_size"),
        patch_size=_square(c.get("patch_size", 14), "patch_size"),
        num_channels=int(c.get("num_channels", 3)),
        hidden_size=int(c.get("hidden_size", 1408)),
        num_layers=int(c.get("num_hidden_layers", 39)),
        num_heads=int(c.get("num_attention_heads", 16)),
        mlp_dim=int(c.get("intermediate_size", 6144)),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-6)),
        hidden_act=c.get("hidden_act", "gelu"),
        qkv_bias=bool(c.get("qkv_bias", True)),
    )
    if not isinstance(fields["hidden_act"], str):
        raise ValueError(
            f"vision config: hidden_act must be an activation name, got {fields['hidden_act']!r}"
        )
    return make_config(VisionConfig, {**fields, **overrides})


def config_to_hf(cfg: VisionConfig) -> dict[str, Any]:
    """The ``vision_config`` of a ``Blip2Config`` equal to ``cfg``."""
    if cfg.pre_layernorm or cfg.num_channels != 3:
        raise ValueError("Blip2VisionModel has no pre-LayerNorm and takes 3 channels")
    return dict(
        model_type="blip_2_vision_model", hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias,
    )  # fmt: skip


def weight_rules(cfg: VisionConfig) -> list[WeightRule]:
    """Our parameters ← ``Blip2VisionModel`` state-dict keys.

    ``post_layernorm.*`` is not mapped: it is BLIP-2's ``ln_vision``, owned by the VL model. The
    fused ``qkv.bias = cat(q_bias, k_bias, v_bias)`` fills ``q_bias`` and ``v_bias``; EVA has no
    k bias (the import engine decides what to do with a non-zero one).
    """
    if cfg.pre_layernorm:
        raise ValueError(
            "VisionConfig.pre_layernorm=True has no counterpart in Blip2VisionModel; "
            "a Blip2VisionModel checkpoint needs pre_layernorm=False"
        )
    n, scan = cfg.num_layers, cfg.scan_layers
    rules = [
        WeightRule("cls_token", "embeddings.class_embedding"),
        WeightRule("pos_embed", "embeddings.position_embedding"),
        WeightRule("patch_embed.kernel", "embeddings.patch_embedding.weight", "conv"),
        WeightRule("patch_embed.bias", "embeddings.patch_embedding.bias"),
    ]
    hf = "encoder.layers.{i}."
    rules += layer_rules(
        [
            ("layers.{i}.norm1.scale", hf + "layer_norm1.weight", "copy"),
            ("layers.{i}.norm1.bias", hf + "layer_norm1.bias", "copy"),
            ("layers.{i}.attn.qkv.kernel", hf + "self_attn.qkv.weight", "linear"),
            ("layers.{i}.attn.proj.kernel", hf + "self_attn.projection.weight", "linear"),
            ("layers.{i}.attn.proj.bias", hf + "self_attn.projection.bias", "copy"),
            ("layers.{i}.norm2.scale", hf + "layer_norm2.weight", "copy"),
            ("layers.{i}.norm2.bias", hf + "layer_norm2.bias", "copy"),
            ("layers.{i}.mlp.fc1.kernel", hf + "mlp.fc1.weight", "linear"),
            ("layers.{i}.mlp.fc1.bias", hf + "mlp.fc1.bias", "copy"),
            ("layers.{i}.mlp.fc2.kernel", hf + "mlp.fc2.weight", "linear"),
            ("layers.{i}.mlp.fc2.bias", hf + "mlp.fc2.bias", "copy"),
        ],
        n,
        scan,
    )
    if cfg.qkv_bias:
        for name, chunk in (("q_bias", 0), ("v_bias", 2)):
            rules.append(
                WeightRule(f"layers.{{i}}.attn.{name}", hf + "self_attn.qkv.bias", "chunk",
                           num_layers=n, stacked=scan, chunk=chunk, num_chunks=3)
            )  # fmt: skip
    return rules
