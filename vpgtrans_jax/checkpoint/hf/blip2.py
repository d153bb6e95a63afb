"""``transformers.Blip2ForConditionalGeneration`` ↔ ``models.vl_model.VLModel``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpgtrans_jax.checkpoint.hf import llms
from vpgtrans_jax.checkpoint.hf import qformer as hf_qformer
from vpgtrans_jax.checkpoint.hf import vit as hf_vit
from vpgtrans_jax.checkpoint.rules import WeightRule
from vpgtrans_jax.models.vl_model import VLConfig

MODEL_TYPES = ("blip-2", "blip_2")


def is_blip2(hf_config: Any) -> bool:
    """True for a BLIP-2 ``config.json`` dict (either spelling of its ``model_type``)."""
    return isinstance(hf_config, Mapping) and hf_config.get("model_type") in MODEL_TYPES


def config_from_hf(
    hf: Mapping[str, Any],
    *,
    vision: dict[str, Any] | None = None,
    qformer: dict[str, Any] | None = None,
    llm: dict[str, Any] | None = None,
    **all_towers: Any,
) -> VLConfig:
    """From a HF ``Blip2Config`` dict (``config.json``) with a decoder-only text model.

    ``all_towers`` (e.g. ``dtype="bfloat16"``, ``scan_layers=True``) apply to every tower;
    ``vision`` / ``qformer`` / ``llm`` dicts apply to one tower and win over ``all_towers``.
    """
    if not is_blip2(hf):
        got = hf.get("model_type") if isinstance(hf, Mapping) else type(hf).__name__
        raise ValueError(f"expected a BLIP-2 config (model_type 'blip-2'), got {got!r}")
    per = {"vision": vision or {}, "qformer": qformer or {}, "llm": llm or {}}
    kw = {name: {**all_towers, **over} for name, over in per.items()}
    text = _sub_config(hf, "text_config")
    text_type = text.get("model_type", "opt")
    family = llms.family_of_model_type(text_type)
    if family is None:
        raise ValueError(
            f"text_config.model_type {text_type!r} is not supported; this project runs "
            f"decoder-only LLMs ({', '.join(sorted(llms.MODEL_TYPE_FAMILY))})"
        )
    llm_cfg = llms.HF_LLMS[family].config_from_hf(text, **kw["llm"])
    vision_cfg = hf_vit.config_from_hf(_sub_config(hf, "vision_config"), **kw["vision"])
    q = _sub_config(hf, "qformer_config")
    # Blip2Config ties the cross-attention input width to the vision width.
    q["encoder_hidden_size"] = vision_cfg.hidden_size
    return VLConfig(
        vision=vision_cfg,
        qformer=hf_qformer.config_from_hf(q, **kw["qformer"]),
        llm=llm_cfg,
        num_query_tokens=int(hf.get("num_query_tokens", 32)),
        ln_vision_eps=vision_cfg.layer_norm_eps,
    )


def _sub_config(hf: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A tower's section of ``config.json`` (absent = the defaults); anything but an object is a
    ValueError naming it."""
    sub = hf.get(name)
    if sub is None:
        return {}
    if not isinstance(sub, Mapping):
        raise ValueError(f"{name} must be a JSON object, got {type(sub).__name__}")
    return dict(sub)


def config_to_hf(cfg: VLConfig, image_token_index: int) -> dict[str, Any]:
    """``config.json`` of a ``Blip2ForConditionalGeneration`` equal to ``cfg``.

    Raises ValueError for settings HF's classes cannot express.
    """
    return {
        "architectures": ["Blip2ForConditionalGeneration"],
        "model_type": "blip-2",
        "vision_config": hf_vit.config_to_hf(cfg.vision),
        "qformer_config": hf_qformer.config_to_hf(cfg.qformer),
        "text_config": llms.config_to_hf(cfg.llm),
        "num_query_tokens": cfg.num_query_tokens,
        "image_token_index": int(image_token_index),
        "use_decoder_only_language_model": True,
        "dtype": "float32",
    }


def weight_rules(cfg: VLConfig) -> list[WeightRule]:
    """Every parameter of ``VLModel(cfg)`` ← its ``Blip2ForConditionalGeneration`` tensor."""
    rules = [r.with_prefix("vision.", "vision_model.") for r in hf_vit.weight_rules(cfg.vision)]
    rules += [
        WeightRule("ln_vision.scale", "vision_model.post_layernorm.weight"),
        WeightRule("ln_vision.bias", "vision_model.post_layernorm.bias"),
        WeightRule("query_tokens", "query_tokens"),
    ]
    rules += [r.with_prefix("qformer.", "qformer.") for r in hf_qformer.weight_rules(cfg.qformer)]
    rules += [
        WeightRule("projector.kernel", "language_projection.weight", "linear"),
        WeightRule("projector.bias", "language_projection.bias"),
    ]
    return rules + llms.weight_rules(cfg.llm, "llm.", "language_model.")


def is_unused_key(key: str, cfg: VLConfig) -> bool:
    """Tensors of HF BLIP-2 checkpoints that the query-path model legitimately never uses."""
    if key.startswith("qformer."):
        return hf_qformer.is_unused_key(key[len("qformer.") :])
    if key.startswith("language_model."):
        return llms.is_unused_key(cfg.llm, key[len("language_model.") :])
    return False


__all__ = ["MODEL_TYPES", "is_blip2", "config_from_hf", "config_to_hf", "weight_rules",
           "is_unused_key"]  # fmt: skip
