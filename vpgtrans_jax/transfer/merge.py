"""Projector merge: source VPG + word converter → the target's stage-1 initialisation.

With the source projector p_s(q) = W_s q + b_s (Q-Former width → source prompt space) and the word
converter g(x) = W_w x + b_w (source → target prompt space), the merged projector is g ∘ p_s:
``W_t = W_w @ W_s``, ``b_t = W_w @ b_s + b_w``. In our Dense layout (kernel = Wᵀ, [in, out]):
``kernel_t = kernel_s @ kernel_w`` and ``bias_t = bias_s @ kernel_w + bias_w``; computed in float64,
stored as float32.

The output (``--out DIR``) is a model directory (``checkpoint.model_dir``) of the whole target
VL model: it stores the source's VPG parts (ln_vision, query tokens, Q-Former) with the merged
projector, and references the source checkpoint's ViT and the target LLM. Stage 1 names it as
``model.path`` or ``model.vpg_init``; ``vpgtrans_jax.load`` opens it (that is the "init" point of a
transfer, evaluated before any training). The manifest's ``info`` records the source checkpoint,
the converter and its metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.convert import model_inputs
from vpgtrans_jax.checkpoint.hf import llms
from vpgtrans_jax.checkpoint.sources import read_json
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.outputs import check_separate
from vpgtrans_jax.transfer.word_converter import load_converter


def merge_linear(
    proj_kernel: np.ndarray, proj_bias: np.ndarray, conv_kernel: np.ndarray, conv_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(float[Dq, Es], float[Es]) ∘ (float[Es, Et], float[Et]) → (float32[Dq, Et], float32[Et])."""
    if proj_kernel.ndim != 2 or proj_bias.shape != (proj_kernel.shape[1],):
        raise ValueError(
            f"source projector kernel {proj_kernel.shape} / bias {proj_bias.shape} are not "
            "[Dq, Es] / [Es]"
        )
    if conv_kernel.shape[0] != proj_kernel.shape[1]:
        raise ValueError(
            f"word converter maps from width {conv_kernel.shape[0]} but the source projector "
            f"writes width {proj_kernel.shape[1]}: the converter was trained for another source LLM"
        )
    k_w = conv_kernel.astype(np.float64)
    kernel = proj_kernel.astype(np.float64) @ k_w
    bias = proj_bias.astype(np.float64) @ k_w + conv_bias.astype(np.float64)
    return kernel.astype(np.float32), bias.astype(np.float32)


def target_llm_config(target_llm: str) -> Any:
    """Our config of the target LLM directory (a HF LLM, a HF BLIP-2 or a model directory)."""
    if model_dir.is_model_dir(target_llm):
        return model_dir.read_spec(target_llm).llm
    path = paths.join(target_llm, "config.json")
    if not paths.isfile(path):
        raise CheckpointError(
            f"{target_llm}: the target LLM has no config.json (pass the HF LLM directory the "
            "word converter was trained for)"
        )
    return llms.config_from_hf(read_json(path), path)


def merge_projector(
    src_checkpoint: str,
    converter: str,
    out_dir: str,
    *,
    target_llm: str | None = None,
    qformer_scan_layers: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Writes the stage-1 initialisation (source VPG + merged projector) to ``out_dir``.

    Args:
      src_checkpoint: the source VL model (a model directory or a HF BLIP-2 directory).
      converter: the word converter directory (``scripts/word_converter.py --out``).
      target_llm: the target LLM directory; default: the one the converter records.
      qformer_scan_layers: store the Q-Former scanned (its layout for a scanned training run).
      overwrite: replace an existing ``out_dir``, only an earlier output of this project's tools
        (``vpgtrans_jax.outputs``); ``out_dir`` may never be, hold or lie inside an input.

    Returns:
      the manifest written.
    """
    conv = load_converter(converter)
    target_llm = target_llm or conv.meta.get("tgt_llm")
    if not target_llm:
        raise CheckpointError(f"{converter}: records no target LLM; pass target_llm (--tgt_llm)")
    inputs = {**model_inputs("--src_checkpoint", src_checkpoint), "--converter": converter,
              **model_inputs("--tgt_llm", target_llm)}  # fmt: skip
    check_separate(out_dir, inputs)
    tgt_cfg = target_llm_config(target_llm)
    if tgt_cfg.input_embed_dim != conv.tgt_dim:
        raise CheckpointError(
            f"the word converter writes width {conv.tgt_dim} but the target LLM {target_llm} has "
            f"input embedding width {tgt_cfg.input_embed_dim}"
        )
    spec, flat = model_dir.read_parts(
        src_checkpoint, VPG_PARTS, qformer={"scan_layers": qformer_scan_layers}
    )
    if spec.vl is None:
        raise CheckpointError(f"{src_checkpoint}: holds only an LLM; there is no VPG to transfer")
    kernel_s, bias_s = flat["projector.kernel"], flat["projector.bias"]
    kernel, bias = merge_linear(kernel_s, bias_s, conv.kernel, conv.bias)
    params = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    params.update({"projector.kernel": kernel, "projector.bias": bias})
    cfg = spec.vl.replace(llm=tgt_cfg)
    info = {
        "stage": "merge",
        "source_checkpoint": paths.abspath(src_checkpoint),
        "converter": paths.abspath(converter),
        "converter_meta": conv.meta,
        "projector_shape": list(kernel.shape),
    }
    manifest = model_dir.save_model_dir(
        params, out_dir, cfg,
        sources={"vision": paths.abspath(src_checkpoint), "llm": paths.abspath(target_llm)},
        origins={"projector": "merge: source projector ∘ word converter",
                 **{p: paths.abspath(src_checkpoint) for p in VPG_PARTS if p != "projector"}},
        info=info, overwrite=overwrite, created_by="vpgtrans_jax.transfer.merge",
    )  # fmt: skip
    if log:
        log(
            f"merged projector {kernel_s.shape} ∘ converter {conv.kernel.shape} → "
            f"{kernel.shape}; wrote {out_dir}"
        )
    return manifest
