"""Model parts, and which rules map each part to Hugging Face BLIP-2, HF LLM and LAVIS tensor names.

A VL model's parameters are stored per *part* (a top-level ``VLModel`` child): ``vision``,
``ln_vision``, ``query_tokens``, ``qformer``, ``projector``, ``llm``. *Towers* name groups of parts:
``vision``, ``vpg`` (the four trainable VPG parts) and ``llm``.

LAVIS/VPGTrans names are derived from the HF BLIP-2 names by a fixed renaming (see
docs/checkpoints.md), except the ViT's q/v biases, which LAVIS keeps as separate tensors while HF
fuses them into ``qkv.bias = cat(q_bias, 0, v_bias)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from vpgtrans_jax.loading import hf_blip2_rules, is_unused_hf_blip2_key
from vpgtrans_jax.models import llama, opt
from vpgtrans_jax.models.vl_model import VLConfig
from vpgtrans_jax.weights import WeightRule

PARTS = ("vision", "ln_vision", "query_tokens", "qformer", "projector", "llm")
VPG_PARTS = ("ln_vision", "query_tokens", "qformer", "projector")
TOWERS = {"vision": ("vision",), "vpg": VPG_PARTS, "llm": ("llm",)}
# Tower-config fields that only change how a checkpoint is computed or laid out, not what it holds.
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy")


def expand_parts(names: Iterable[str]) -> list[str]:
    """Part and tower names → part names (in ``PARTS`` order). Raises ValueError on others."""
    out: set[str] = set()
    for n in names:
        if n in TOWERS:
            out.update(TOWERS[n])
        elif n in PARTS:
            out.add(n)
        else:
            raise ValueError(
                f"unknown part or tower {n!r}; parts are {list(PARTS)}, towers {list(TOWERS)}"
            )
    return [p for p in PARTS if p in out]


def part_of(path: str) -> str:
    """Our dotted parameter path → its part (first component)."""
    return path.split(".", 1)[0]


def rule_part(rule: WeightRule) -> str:
    return part_of(rule.ours)


def tower_config(cfg: VLConfig, part: str):
    """The tower config that decides a part's layout (None for parts without layers)."""
    return {"vision": cfg.vision, "qformer": cfg.qformer, "llm": cfg.llm}.get(part)


def architecture(tower_cfg) -> dict:
    """A tower config's fields minus the runtime ones (what must agree between two checkpoints)."""
    d = dataclasses.asdict(tower_cfg)
    for k in RUNTIME_FIELDS:
        d.pop(k, None)
    return d


def hf_blip2_part_rules(cfg: VLConfig, parts: Iterable[str]) -> list[WeightRule]:
    """``hf_blip2_rules(cfg)`` restricted to ``parts``."""
    wanted = set(parts)
    return [r for r in hf_blip2_rules(cfg) if rule_part(r) in wanted]


def llm_module(llm_type: str):
    return opt if llm_type == "opt" else llama


def hf_llm_rules(cfg: VLConfig) -> list[WeightRule]:
    """``llm.*`` ← an ``OPTForCausalLM`` / ``LlamaForCausalLM`` state dict (no prefix)."""
    return [r.with_prefix("llm.", "") for r in llm_module(cfg.llm_type).hf_weight_map(cfg.llm)]


def is_unused_hf_llm_key(key: str, cfg: VLConfig) -> bool:
    return llm_module(cfg.llm_type).is_unused_hf_key(key)


def is_unused_hf_key(key: str, cfg: VLConfig) -> bool:
    return is_unused_hf_blip2_key(key, cfg)


# ---- LAVIS / VPGTrans names ---------------------------------------------------------------------

PROJ_NAMES = ("opt_proj", "llama_proj")
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
    for r in hf_blip2_part_rules(cfg, parts):
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


__all__ = [
    "PARTS",
    "VPG_PARTS",
    "TOWERS",
    "expand_parts",
    "part_of",
    "tower_config",
    "architecture",
    "hf_blip2_part_rules",
    "hf_llm_rules",
    "hf_to_lavis_key",
    "lavis_rules",
    "is_optional_lavis_key",
]
