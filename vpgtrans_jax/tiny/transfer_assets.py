"""Offline stand-ins for the transfer's inputs: two tiny pretrained LLMs and a source VL model.

A real transfer starts from a trained source VL-LLM (e.g. BLIP-2 OPT-2.7B) and two Hugging Face
LLM directories. The tiny transfer builds all three deterministically from the synthetic dataset:

- ``src_llm/``, ``tgt_llm/``: tiny causal LMs of different types / widths, pretrained on the
  synthetic captions (``tiny.llm``, cached next to the data) and written as HF directories
  (``config.json`` + ``model.safetensors`` + the synthetic tokenizer) that
  ``transformers.AutoModelForCausalLM.from_pretrained`` opens;
- ``source_vl/export``: a VL model on the source LLM, trained by one tiny stage whose config is
  given (VPG + projector from random init, frozen pretrained LLM).

Each piece appears atomically, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from vpgtrans_jax import paths as path_lib
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.convert import llm_to_hf
from vpgtrans_jax.tiny.prepare import prepare
from vpgtrans_jax.train.loop import train


def ensure_tiny_assets(
    out_dir: str,
    source_stage: ml_collections.ConfigDict,
    target_llm_arch: ml_collections.ConfigDict,
    target_llm_type: str,
    *,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Builds (or finds) the tiny transfer inputs under ``out_dir`` (a directory or a URL; the
    synthetic data and the pretraining caches stay on local disk).

    Args:
      source_stage: a random-init tiny stage config (``configs/tiny_*.py``): its LLM arch is the
        source LLM's, and running it trains the source VL model.
      target_llm_arch: the target LLM's architecture fields (OPTConfig / LlamaConfig names).
      target_llm_type: the target LLM's family name (``models.registry``).

    Returns:
      ``{"source_checkpoint", "source_llm", "target_llm", "synthetic_dir", "tokenizer"}``.
    """
    if source_stage.model.init != "random" or source_stage.model.tiny_llm_steps <= 0:
        raise ValueError(
            "tiny.source_stage must be a random-init tiny stage config with "
            "model.tiny_llm_steps > 0 (e.g. configs/tiny_finetune.py)"
        )
    tgt_stage = ml_collections.ConfigDict(source_stage.to_dict())
    tgt_stage.model.llm_type = target_llm_type
    tgt_stage.model.arch.llm = ml_collections.ConfigDict(target_llm_arch.to_dict())
    tgt_stage.model.llm_init = ""
    prepare(source_stage)  # the synthetic data and the source LLM (cached)
    synthetic, tokenizer = source_stage.data.synthetic_dir, source_stage.data.tokenizer
    paths = {
        "source_checkpoint": path_lib.join(out_dir, "source_vl", "export"),
        "source_llm": path_lib.join(out_dir, "src_llm"),
        "target_llm": path_lib.join(out_dir, "tgt_llm"),
        "synthetic_dir": synthetic,
        "tokenizer": tokenizer,
    }
    for key, stage in (("source_llm", source_stage), ("target_llm", tgt_stage)):
        if not path_lib.isfile(path_lib.join(paths[key], "config.json")):
            log(f"tiny transfer: pretraining the {key.replace('_', ' ')} ({stage.model.llm_type})")
            prepare(stage)
            llm_to_hf(stage.model.llm_init, paths[key], tokenizer_dir=tokenizer, overwrite=True)
    if not model_dir.is_model_dir(paths["source_checkpoint"]):
        log("tiny transfer: training the source VL model")
        summary = (train_fn or train)(
            source_stage, path_lib.dirname(paths["source_checkpoint"]), progress=progress
        )
        if summary.get("export") is None:
            raise RuntimeError(
                f"the source VL training stopped early ({summary.get('stopped_by')})"
            )
    return paths
