"""What a stage hands to the next one (``config.model.vpg_init``) and to evaluation.

``<workdir>/export`` is a model directory (``checkpoint.model_dir``) storing the VPG parts
(ln_vision, query tokens, Q-Former, projector) and referencing the frozen ViT and LLM to
``config.model.path`` (random-init tiny runs store them too). ``vpgtrans_jax.load`` opens it as a
whole model; ``train.builder.apply_vpg_init`` takes its VPG parts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from flax import nnx

from vpgtrans_jax.checkpoint.model_dir import save_model_dir
from vpgtrans_jax.models.parts import VPG_PARTS


def export_info(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """What an export records about its stage for later users (the manifest's ``info``):
    ``stage``, ``tokenizer`` (the LLM's tokenizer directory, as an absolute path when local) and,
    for chat models, ``chat_template`` (``config.chat_template``)."""
    tok = str(c.data.tokenizer)
    if "://" not in tok:
        tok = os.path.abspath(os.path.expanduser(tok))
    info: dict[str, Any] = {"stage": c.stage, "tokenizer": tok}
    if c.chat_template:
        info["chat_template"] = c.chat_template
    return info


def export_model_dir(
    model: nnx.Module,
    out_dir: str,
    *,
    pretrained_path: str | None,
    created_by: str,
    info: Mapping[str, Any] | None = None,
) -> str:
    """Writes ``model`` as a model directory: VPG parts stored, ViT/LLM referenced when possible."""
    stored = list(VPG_PARTS) + ([] if pretrained_path else ["vision", "llm"])
    params = {part: getattr(model, part) for part in stored}
    sources = {"vision": pretrained_path, "llm": pretrained_path} if pretrained_path else None
    save_model_dir(params, out_dir, model.config, sources, info=info, overwrite=True,
                   created_by=created_by)  # fmt: skip
    return out_dir
