"""Offline stand-ins for the transfer's inputs: two tiny pretrained LLMs and a source VL model.

A real transfer starts from a trained source VL-LLM (e.g. BLIP-2 OPT-2.7B) and two Hugging Face
LLM directories. The tiny transfer builds all three deterministically from the synthetic dataset:

- ``src_llm/``, ``tgt_llm/``: tiny causal LMs of different types / widths, pretrained on the
  synthetic captions (``train.tiny_lm``, cached next to the data) and written as HF directories
  (``config.json`` + ``model.safetensors`` + the synthetic tokenizer) that
  ``transformers.AutoModelForCausalLM.from_pretrained`` opens;
- ``source_vl/export``: a VL model on the source LLM, trained by one tiny stage whose config is
  given (VPG + projector from random init, frozen pretrained LLM).

Each piece appears atomically, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from vpgtrans_jax.convert import hf_out, model_dir, store
from vpgtrans_jax.convert.stream import export_tensors
from vpgtrans_jax.models.vl_model import LLMConfig, VLModel
from vpgtrans_jax.train.builder import random_model_config
from vpgtrans_jax.train.data_setup import ensure_synthetic


def write_hf_llm(llm: nnx.Module, cfg: LLMConfig, out: str, tokenizer_dir: str) -> str:
    """Writes ``llm`` (our OPT / LLaMA causal LM of config ``cfg``) as a HF LLM directory."""
    flat = {f"llm.{k}": v for k, v in model_dir.flat_params(nnx.state(llm, nnx.Param)).items()}
    tensors = dict(export_tensors(flat.items(), model_dir.llm_rules(cfg)))
    hf_config = {**hf_out.hf_llm_config(cfg), "torch_dtype": "float32"}
    with store.atomic_output(out, overwrite=True) as tmp:
        hf_out.write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
        for name in os.listdir(tokenizer_dir):
            src = os.path.join(tokenizer_dir, name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(tmp, name))
        import json

        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
    return out


def pretrained_tiny_llm(
    c: ml_collections.ConfigDict, synthetic: str, tokenizer: str
) -> tuple[nnx.Module, LLMConfig]:
    """The tiny LLM (and its config) that a random-init stage config ``c`` loads (cached)."""
    from vpgtrans_jax.train.tiny_lm import ensure_pretrained_tiny_llm

    model = VLModel(random_model_config(c), rngs=nnx.Rngs(params=jax.random.key(c.seed)))
    ensure_pretrained_tiny_llm(
        model, synthetic, tokenizer, steps=c.model.tiny_llm_steps, seed=c.seed
    )
    return model.llm, model.config.llm


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
    """Builds (or finds) the tiny transfer inputs under ``out_dir``.

    Args:
      source_stage: a random-init tiny stage config (``configs/tiny_*.py``): its LLM arch is the
        source LLM's, and running it trains the source VL model.
      target_llm_arch: the target LLM's architecture fields (OPTConfig / LlamaConfig names).
      target_llm_type: ``"opt"`` or ``"llama"``.

    Returns:
      ``{"source_checkpoint", "source_llm", "target_llm", "synthetic_dir", "tokenizer"}``.
    """
    if source_stage.model.init != "random" or source_stage.model.tiny_llm_steps <= 0:
        raise ValueError(
            "tiny.source_stage must be a random-init tiny stage config with "
            "model.tiny_llm_steps > 0 (e.g. configs/tiny_finetune.py)"
        )
    synthetic = ensure_synthetic(source_stage)
    if synthetic is None:
        raise ValueError("tiny.source_stage: data.synthetic_dir is empty")
    tokenizer = source_stage.data.tokenizer.replace("{synthetic_dir}", synthetic)
    paths = {
        "source_checkpoint": os.path.join(out_dir, "source_vl", "export"),
        "source_llm": os.path.join(out_dir, "src_llm"),
        "target_llm": os.path.join(out_dir, "tgt_llm"),
        "synthetic_dir": synthetic,
        "tokenizer": tokenizer,
    }
    tgt_stage = ml_collections.ConfigDict(source_stage.to_dict())
    tgt_stage.model.llm_type = target_llm_type
    tgt_stage.model.arch.llm = ml_collections.ConfigDict(target_llm_arch.to_dict())
    for key, stage in (("source_llm", source_stage), ("target_llm", tgt_stage)):
        if not os.path.isfile(os.path.join(paths[key], "config.json")):
            log(f"tiny transfer: pretraining the {key.replace('_', ' ')} ({stage.model.llm_type})")
            llm, llm_cfg = pretrained_tiny_llm(stage, synthetic, tokenizer)
            write_hf_llm(llm, llm_cfg, paths[key], tokenizer)
    if not model_dir.is_model_dir(paths["source_checkpoint"]):
        log("tiny transfer: training the source VL model")
        if train_fn is None:
            from vpgtrans_jax.train.loop import train as train_fn
        summary = train_fn(
            source_stage, os.path.dirname(paths["source_checkpoint"]), progress=progress
        )
        if summary.get("export") is None:
            raise RuntimeError(
                f"the source VL training stopped early ({summary.get('stopped_by')})"
            )
    return paths
