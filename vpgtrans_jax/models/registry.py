"""The LLM families a VL model can be built on: one entry each, the only place that lists them.

Everything that differs per family — the config and module classes, how a tokenizer spells the
newline the VPGTrans answers end with — is looked up here by family name (``"opt"``) or by config
object, so no other module branches on the family. Adding a family: its model file in
``vpgtrans_jax/models/`` and one ``LLMFamily`` line below (plus its Hugging Face face in
``vpgtrans_jax/checkpoint/hf/``; see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vpgtrans_jax.models.llama import LlamaConfig, LlamaForCausalLM
from vpgtrans_jax.models.opt import OPTConfig, OPTForCausalLM

# Any family's config (each has input_embed_dim, num_layers, num_kv_heads, head_dim, vocab_size,
# matmul_flops and the run knobs dtype / param_dtype / scan_layers / remat_policy).
LLMConfig = OPTConfig | LlamaConfig


@dataclasses.dataclass(frozen=True)
class LLMFamily:
    """One decoder family.

    Attributes:
      name: the family's name in configs, manifests and flags (``model.llm_type``).
      config_cls, model_cls: its config dataclass and ``CausalLM`` module.
      newline_index: which id of ``tokenizer("\\n")`` is the newline token the answers end with
        (0 for byte-level BPE such as OPT's; -1 for SentencePiece, which prepends ``"▁"``).
    """

    name: str
    config_cls: type
    model_cls: type
    newline_index: int


FAMILIES: dict[str, LLMFamily] = {
    f.name: f
    for f in (
        LLMFamily("opt", OPTConfig, OPTForCausalLM, newline_index=0),
        LLMFamily("llama", LlamaConfig, LlamaForCausalLM, newline_index=-1),
    )
}


def family(name: str) -> LLMFamily:
    """The family called ``name``; a ValueError lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown LLM family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(cfg: Any) -> LLMFamily:
    """The family of an LLM config object."""
    for f in FAMILIES.values():
        if type(cfg) is f.config_cls:
            return f
    raise ValueError(f"{type(cfg).__name__} is not the config of a registered LLM family")


__all__ = ["LLMConfig", "LLMFamily", "FAMILIES", "family", "family_of"]
