"""LAVIS / VPGTrans tensor names: derived from the HF BLIP-2 names by a fixed renaming.

The exception is the ViT's q/v biases, which LAVIS keeps as separate tensors while HF fuses them
into ``qkv.bias = cat(q_bias, 0, v_bias)`` (docs/checkpoints.md has the table).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from vpgtrans_jax.checkpoint.hf import blip2, llms
from vpgtrans_jax.checkpoint.hf.llms import HF_LLMS
from vpgtrans_jax.checkpoint.rules import WeightRule
from vpgtrans_jax.models.parts import part_of
from vpgtrans_jax.models.vl_model import VLConfig

# ---- LAVIS / VPGTrans names ---------------------------------------------------------------------

PROJ_NAMES = tuple(m.LAVIS_PROJECTOR for m in HF_LLMS.values())
_L = r"(\d+|\{i\})"  # a layer index, or the {i} of a rule template
_HF_TO_LAVIS: list[tuple[str, str]] = [
    (r"vision_model\.embeddings\.class_embedding", "visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "visual_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"visual_encoder.patch_embed.proj.\1"),  # noqa: E501
    (rf"vision_model\.encoder\.layers\.{_L}\.layer_norm([12])\.(weight|bias)", r"visual_encoder.blocks.\1.norm\2.\3"),  # noqa: E501
    (rf"vision_model\.encoder\.layers\.{_L}\.self_attn\.qkv\.weight", r"visual_encoder.blocks.\1.attn.qkv.weight"),  # noqa: E501
    (rf"vision_model\.encoder\.layers\.{_L}\.self_attn\.projection\.(weight|bias)", r"visual_encoder.blocks.\1.attn.proj.\2"),  # noqa: E501
    (rf"vision_model\.encoder\.layers\.{_L}\.mlp\.(fc[12])\.(weight|bias)", r"visual_encoder.blocks.\1.mlp.\2.\3"),  # noqa: E501
    (r"vision_model\.post_layernorm\.(weight|bias)", r"ln_vision.\1"),
    (r"query_tokens", "query_tokens"),
    (r"qformer\.layernorm\.(weight|bias)", r"Qformer.bert.embeddings.LayerNorm.\1"),
    (rf"qformer\.encoder\.layer\.{_L}\.(attention|crossattention)\.attention\.(.*)", r"Qformer.bert.encoder.layer.\1.\2.self.\3"),  # noqa: E501
    (rf"qformer\.encoder\.layer\.{_L}\.(.*)", r"Qformer.bert.encoder.layer.\1.\2"),
    (r"language_projection\.(weight|bias)", r"{proj}.\1"),
]  # fmt: skip
_QKV_BIAS = re.compile(rf"vision_model\.encoder\.layers\.{_L}\.self_attn\.qkv\.bias")

# Tensors a LAVIS/VPGTrans checkpoint may hold that this model never uses: the Q-Former's text path
# and stage-1 heads, EVA-CLIP blocks past the ViT depth (LAVIS loads them with strict=False) and
# frozen LLM copies (the LLM comes from --llm).
_LAVIS_OPTIONAL = re.compile(
    r"Qformer\.cls\..*|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\..*"
    r"|Qformer\.bert\.embeddings\.position_ids"
    r"|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*"
    r"|(vision_proj|text_proj|itm_head)\.(weight|bias)|temp"
    r"|(opt_model|llama_model)\..*"
)


def hf_to_lavis_key(key: str, proj: str = "opt_proj") -> str:
    """HF BLIP-2 tensor name (or rule template) → LAVIS name. Raises ValueError if none exists."""
    for pat, repl in _HF_TO_LAVIS:
        if re.fullmatch(pat, key):
            return re.sub(pat, repl, key).replace("{proj}", proj)
    raise ValueError(f"{key!r} has no LAVIS counterpart")


def lavis_rules(cfg: VLConfig, parts: Iterable[str], proj: str = "opt_proj") -> list[WeightRule]:
    """Rules ours ← LAVIS names for the vision and VPG ``parts``.

    The fused ``qkv.bias`` chunk rules of the HF map become copies of LAVIS's ``attn.q_bias`` /
    ``attn.v_bias``.
    """
    out = []
    wanted = set(parts)
    for r in blip2.weight_rules(cfg):
        if part_of(r.ours) not in wanted:
            continue
        m = _QKV_BIAS.fullmatch(r.hf)
        if m is not None:
            name = {0: "q_bias", 2: "v_bias"}[r.chunk]
            hf = f"visual_encoder.blocks.{m.group(1)}.attn.{name}"
            out.append(dataclasses.replace(r, hf=hf, kind="copy", chunk=0, num_chunks=1))
        else:
            out.append(dataclasses.replace(r, hf=hf_to_lavis_key(r.hf, proj)))
    return out


def is_optional_lavis_key(key: str, cfg: VLConfig) -> bool:
    """Known-optional LAVIS tensors (see ``_LAVIS_OPTIONAL``), incl. ViT blocks past the depth."""
    if _LAVIS_OPTIONAL.fullmatch(key):
        return True
    m = re.fullmatch(r"visual_encoder\.blocks\.(\d+)\..*", key)
    return m is not None and int(m.group(1)) >= cfg.vision.num_layers


def projector_name(cfg: VLConfig) -> str:
    """The projector's key in LAVIS / VPGTrans checkpoints for this model's LLM family."""
    return llms.interop(cfg.llm).LAVIS_PROJECTOR


__all__ = [
    "PROJ_NAMES",
    "hf_to_lavis_key",
    "lavis_rules",
    "is_optional_lavis_key",
    "projector_name",
]
