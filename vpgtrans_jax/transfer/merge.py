"""Projector merge: source VPG + word converter → the target's stage-1 initialisation.

With the source projector p_s(q) = W_s q + b_s (Q-Former width → source prompt space) and the word
converter g(x) = W_w x + b_w (source → target prompt space), the merged projector is g ∘ p_s:
``W_t = W_w @ W_s``, ``b_t = W_w @ b_s + b_w``. In our Dense layout (kernel = Wᵀ, [in, out]):
``kernel_t = kernel_s @ kernel_w`` and ``bias_t = bias_s @ kernel_w + bias_w``; computed in float64,
stored as float32.

Output directory (``--out DIR``): the trained-parts export format of ``vpgtrans_jax.train.export``,
so a stage-1 config names it as ``model.vpg_init``:
  ``params/``: Orbax checkpoint of ``{"ln_vision": {"scale", "bias"}, "query_tokens":
    float32[1, Q, Dq], "qformer": {...}, "projector": {"kernel": float32[Dq, E_tgt], "bias"}}``
    (``nnx`` pure dicts; the Q-Former in the layout given by ``qformer_scan_layers``, unscanned
    ``layers.{i}`` by default);
  ``export.json``: ``{"format", "version", "modules", "stage": "merge", "qformer_scan_layers",
    "vl_config" (source vision/Q-Former + target LLM, ``VLConfig.to_dict``; null when the target
    LLM directory is unreadable), "model_source": {"vision": source checkpoint, "llm": target LLM},
    "source_checkpoint", "converter", "converter_meta"}``.
``load_vpg_init(path)`` reads it back as ``{module: pure dict}``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vpgtrans_jax import weights
from vpgtrans_jax.checkpoint_io import CheckpointError, ShardedCheckpoint, read_json
from vpgtrans_jax.models import qformer as qformer_mod
from vpgtrans_jax.models.vl_model import VLConfig
from vpgtrans_jax.transfer.llm_embeddings import llm_config_of
from vpgtrans_jax.transfer.word_converter import WordConverter, load_converter

VPG_MODULES = ("ln_vision", "query_tokens", "qformer", "projector")


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


def _is_hf_blip2(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    return os.path.isfile(cfg) and read_json(cfg).get("model_type") in ("blip-2", "blip_2")


def _hf_blip2_vpg(path: str) -> tuple[dict[str, Any], VLConfig]:
    """Reads only the VPG tensors of a HF BLIP-2 directory (no ViT / LLM weights are loaded)."""
    from vpgtrans_jax.loading import hf_blip2_rules

    try:
        cfg = VLConfig.from_hf(read_json(os.path.join(path, "config.json")))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    ckpt = ShardedCheckpoint(path)

    def get(key: str) -> np.ndarray:
        if key not in ckpt:
            raise CheckpointError(f"{path}: missing tensor {key!r}")
        return np.asarray(ckpt[key], dtype=np.float32)

    rules = [r for r in hf_blip2_rules(cfg) if r.ours.split(".")[0] in VPG_MODULES]
    pure, _ = weights.hf_to_pure_dict(rules, get)
    return pure, cfg


def _model_dir_vpg(path: str) -> tuple[dict[str, Any], VLConfig]:
    """Reads only the VPG parts of a vpgtrans-jax model directory (``convert/``)."""
    from vpgtrans_jax.convert import model_dir

    return model_dir.load_params(path, parts=VPG_MODULES), model_dir.read_config(path)


def _loaded_vpg(path: str) -> tuple[dict[str, Any], VLConfig]:
    """Any other checkpoint ``vpgtrans_jax.load`` accepts: load it and take the VPG state."""
    from flax import nnx

    import vpgtrans_jax

    model = vpgtrans_jax.load(path)
    pure = nnx.to_pure_dict(nnx.state(model))
    return {k: jax.tree.map(np.asarray, pure[k]) for k in VPG_MODULES}, model.config


def read_source_vpg(path: str) -> tuple[dict[str, Any], VLConfig]:
    """``({module: pure dict} for ln_vision/query_tokens/qformer/projector, VLConfig)``."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: --src_checkpoint must be a checkpoint directory")
    from vpgtrans_jax.convert.model_dir import is_model_dir

    if is_model_dir(path):
        return _model_dir_vpg(path)
    return _hf_blip2_vpg(path) if _is_hf_blip2(path) else _loaded_vpg(path)


def relayout_qformer(pure: dict, cfg: qformer_mod.QFormerConfig, scan_layers: bool) -> dict:
    """Q-Former pure dict in ``cfg``'s layout → the ``scan_layers`` layout (via HF tensor names)."""
    if cfg.scan_layers == scan_layers:
        return pure
    flat = {".".join(map(str, p)): v for p, v in _flatten(pure)}
    hf: dict[str, np.ndarray] = {}
    for rule in qformer_mod.hf_weight_map(cfg):
        for ours, key, i in weights.expand(rule):
            arr = flat[weights.stacked_path(rule)][i] if rule.stacked else flat[ours]
            hf[key] = weights.from_ours(rule.kind, np.asarray(arr))
    target = dataclasses.replace(cfg, scan_layers=scan_layers)
    out, _ = weights.hf_to_pure_dict(qformer_mod.hf_weight_map(target), hf.__getitem__)
    return out


def _int_keys(tree: Any) -> Any:
    """Digit-string keys (as Orbax restores them) back to the ints of ``nnx`` layer lists."""
    if not isinstance(tree, dict):
        return tree
    return {
        (int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()
    }


def _flatten(tree: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    if not isinstance(tree, dict):
        return [(prefix, tree)]
    return [item for k, v in tree.items() for item in _flatten(v, (*prefix, k))]


def _target_vl_config(src_cfg: VLConfig, conv: WordConverter) -> VLConfig | None:
    """Source vision/Q-Former with the converter's target LLM (None if that LLM is unreadable)."""
    tgt = conv.meta.get("tgt_llm")
    cfg_path = os.path.join(tgt, "config.json") if tgt else None
    if not cfg_path or not os.path.isfile(cfg_path):
        return None
    _, llm_cfg, _ = llm_config_of(read_json(cfg_path), cfg_path)
    if llm_cfg.input_embed_dim != conv.tgt_dim:
        raise ValueError(
            f"converter writes width {conv.tgt_dim} but its target LLM {tgt} has input embedding "
            f"width {llm_cfg.input_embed_dim}"
        )
    return src_cfg.replace(llm=llm_cfg)


def merge_projector(
    src_checkpoint: str,
    converter: str,
    out_dir: str,
    *,
    qformer_scan_layers: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Writes the stage-1 initialisation (source VPG + merged projector) to ``out_dir``.

    Returns the ``export.json`` contents.
    """
    from flax import nnx

    from vpgtrans_jax.train.export import export_trained_parts

    conv = load_converter(converter)
    parts, src_cfg = read_source_vpg(src_checkpoint)
    proj = parts["projector"]
    kernel, bias = merge_linear(
        np.asarray(proj["kernel"]), np.asarray(proj["bias"]), conv.kernel, conv.bias
    )
    parts["projector"] = {"kernel": kernel, "bias": bias}
    parts["qformer"] = relayout_qformer(parts["qformer"], src_cfg.qformer, qformer_scan_layers)
    parts = jax.tree.map(lambda a: np.asarray(a, np.float32), parts)
    vl_cfg = _target_vl_config(src_cfg, conv)
    meta = {
        "stage": "merge",
        "qformer_scan_layers": qformer_scan_layers,
        "vl_config": None if vl_cfg is None else vl_cfg.to_dict(),
        "model_source": {
            "vision": os.path.abspath(src_checkpoint),
            "llm": conv.meta.get("tgt_llm"),
        },
        "source_checkpoint": os.path.abspath(src_checkpoint),
        "converter": os.path.abspath(converter),
        "converter_meta": conv.meta,
        "projector_shape": list(kernel.shape),
    }
    state = nnx.State(jax.tree.map(nnx.Param, parts))
    export_trained_parts(state, out_dir, meta)
    if log:
        log(
            f"merged projector {proj['kernel'].shape} ∘ converter {conv.kernel.shape} → "
            f"{kernel.shape}; wrote {out_dir}"
        )
    return read_json(os.path.join(out_dir, "export.json"))


def load_vpg_init(path: str, *, qformer_scan_layers: bool | None = None) -> dict[str, Any]:
    """``{module: nnx pure dict}`` of a merge (or training export) directory.

    ``qformer_scan_layers`` converts the Q-Former to that layout (None: as stored). Use the
    result with ``nnx.replace_by_pure_dict(nnx.state(model.<module>), value)`` or, for
    ``query_tokens`` (a bare parameter), ``model.query_tokens.set_value(value)``.
    """
    from vpgtrans_jax.train.export import read_export

    info, parts = read_export(path)
    parts = _int_keys(parts)
    if qformer_scan_layers is not None and "qformer" in parts:
        stored = bool(info.get("qformer_scan_layers", False))
        vl = info.get("vl_config")
        if stored != qformer_scan_layers:
            if not vl:
                raise ValueError(
                    f"{path}: export.json has no vl_config, so the Q-Former layout cannot be "
                    "converted; load it with qformer_scan_layers=None"
                )
            qcfg = VLConfig.from_dict(vl).qformer
            qcfg = dataclasses.replace(qcfg, scan_layers=stored)
            parts["qformer"] = relayout_qformer(parts["qformer"], qcfg, qformer_scan_layers)
    return parts
