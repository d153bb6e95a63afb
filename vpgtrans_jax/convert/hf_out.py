"""Writing HF BLIP-2 directories: ``config.json`` from our configs, safetensors shards."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from vpgtrans_jax.checkpoint_io import CheckpointError
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.vl_model import VLConfig

_ST_NAMES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
}  # fmt: skip


def hf_blip2_config(cfg: VLConfig, image_token_index: int) -> dict[str, Any]:
    """``config.json`` of a ``Blip2ForConditionalGeneration`` equal to ``cfg``.

    Raises CheckpointError for settings HF's classes cannot express.
    """
    v, q = cfg.vision, cfg.qformer
    if v.pre_layernorm or v.num_channels != 3:
        raise CheckpointError("Blip2VisionModel has no pre-LayerNorm and takes 3 channels")
    vision = dict(
        model_type="blip_2_vision_model", hidden_size=v.hidden_size,
        intermediate_size=v.mlp_dim, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
        hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps, qkv_bias=v.qkv_bias,
    )  # fmt: skip
    qformer = dict(
        model_type="blip_2_qformer", hidden_size=q.hidden_size, num_hidden_layers=q.num_layers,
        num_attention_heads=q.num_heads, intermediate_size=q.intermediate_size,
        hidden_act=q.hidden_act, layer_norm_eps=q.layer_norm_eps,
        cross_attention_frequency=q.cross_attention_frequency,
        encoder_hidden_size=q.encoder_hidden_size, use_qformer_text_input=False,
    )  # fmt: skip
    return {
        "architectures": ["Blip2ForConditionalGeneration"],
        "model_type": "blip-2",
        "vision_config": vision,
        "qformer_config": qformer,
        "text_config": hf_llm_config(cfg.llm),
        "num_query_tokens": cfg.num_query_tokens,
        "image_token_index": int(image_token_index),
        "use_decoder_only_language_model": True,
        "dtype": "float32",
    }


def hf_llm_config(llm) -> dict[str, Any]:
    """The ``text_config`` (an OPT or LLaMA / Qwen2 ``config.json``) equal to ``llm``."""
    if isinstance(llm, OPTConfig):
        if llm.layer_norm_eps != 1e-5:
            raise CheckpointError(
                f"OPT layer_norm_eps={llm.layer_norm_eps} cannot be expressed (HF OPT uses 1e-5)"
            )
        return dict(
            model_type="opt", architectures=["OPTForCausalLM"], vocab_size=llm.vocab_size,
            hidden_size=llm.hidden_size, num_hidden_layers=llm.num_layers,
            num_attention_heads=llm.num_heads, ffn_dim=llm.ffn_dim,
            max_position_embeddings=llm.max_position_embeddings,
            word_embed_proj_dim=llm.input_embed_dim, do_layer_norm_before=llm.do_layer_norm_before,
            enable_bias=llm.enable_bias,
            layer_norm_elementwise_affine=llm.layer_norm_elementwise_affine,
            activation_function=llm.activation_function,
            _remove_final_layer_norm=llm.remove_final_layer_norm,
            tie_word_embeddings=llm.tie_word_embeddings,
        )  # fmt: skip
    if llm.attention_bias and llm.qkv_bias:
        raise CheckpointError("attention_bias and qkv_bias together have no HF counterpart")
    if llm.mlp_bias and llm.qkv_bias:
        raise CheckpointError("a Qwen2-style LLM (qkv_bias) with mlp_bias has no HF counterpart")
    rope = {"rope_type": "default", "rope_theta": llm.rope_theta}
    if llm.rope_scaling is not None:
        rope = {**llm.rope_scaling_dict, "rope_theta": llm.rope_theta}
    qwen = llm.qkv_bias
    return dict(
        model_type="qwen2" if qwen else "llama",
        architectures=["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        head_dim=llm.head_dim, rms_norm_eps=llm.rms_norm_eps, rope_parameters=rope,
        attention_bias=llm.attention_bias, mlp_bias=llm.mlp_bias,
        tie_word_embeddings=llm.tie_word_embeddings, hidden_act=llm.hidden_act,
        max_position_embeddings=llm.max_position_embeddings,
    )  # fmt: skip


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """One safetensors file (header JSON + raw little-endian bytes, in insertion order)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, a in tensors.items():
        if a.dtype not in _ST_NAMES:
            raise CheckpointError(f"{k}: dtype {a.dtype} cannot be written to safetensors")
        header[k] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}  # fmt: skip
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).data)


class ShardedSafetensorsWriter:
    """Buffers tensors and writes a shard when ``max_bytes`` would be exceeded.

    ``close()`` names the shards ``model-0000i-of-0000N.safetensors`` with an index, or
    ``model.safetensors`` when one shard is enough (as ``save_pretrained`` does).
    """

    def __init__(self, directory: str, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self._buf: dict[str, np.ndarray] = {}
        self._bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0

    def add(self, key: str, a: np.ndarray) -> None:
        if key in self._buf or any(key in s for s in self._shards):
            raise CheckpointError(f"tensor {key!r} written twice")
        if self._buf and self._bytes + a.nbytes > self.max_bytes:
            self._flush()
        self._buf[key] = a
        self._bytes += a.nbytes
        self._total += a.nbytes

    def _flush(self) -> None:
        write_safetensors(self._tmp_name(len(self._shards)), self._buf)
        self._shards.append(list(self._buf))
        self._buf, self._bytes = {}, 0

    def _tmp_name(self, i: int) -> str:
        return os.path.join(self.directory, f"shard-{i:05d}.tmp")

    def close(self) -> list[str]:
        if self._buf or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.rename(self._tmp_name(0), os.path.join(self.directory, "model.safetensors"))
            return ["model.safetensors"]
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, (name, keys) in enumerate(zip(names, self._shards)):
            os.rename(self._tmp_name(i), os.path.join(self.directory, name))
            weight_map.update({k: name for k in keys})
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self._total}, "weight_map": weight_map}, f,
                      indent=2)  # fmt: skip
        return names


__all__ = ["hf_blip2_config", "hf_llm_config", "write_safetensors", "ShardedSafetensorsWriter"]
