"""LLaMA-family decoder-only causal LM (LLaMA 1/2/3, Vicuna, Mistral without sliding window, Qwen2).

Pre-norm blocks: ``x + attn(rms(x))`` then ``x + swiglu(rms(x))``, a final RMSNorm and an LM head
(tied to the token embedding or not). Rotary position embeddings use Hugging Face's "rotate_half"
layout, so q/k projection weights converted from HF checkpoints need no permutation.

Parameter tree (mirrors ``transformers.LlamaForCausalLM`` without the ``model.`` prefix):
``embed_tokens.embedding``, ``layers.{i}.self_attn.{q,k,v,o}_proj``, ``layers.{i}.mlp.{gate,up,
down}_proj``, ``layers.{i}.{input,post_attention}_layernorm.scale``, ``norm.scale`` and
``lm_head.kernel`` when the head is untied.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.models.decoder import CausalLM
from vpgtrans_jax.nn import attention, layers, stack
from vpgtrans_jax.nn import kv_cache as kv_cache_lib
from vpgtrans_jax.nn.kv_cache import KVCache

RopeScaling = tuple[tuple[str, Any], ...]

_ROPE_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _normalise_rope_scaling(
    scaling: Mapping[str, Any] | RopeScaling | list | None,
    max_position_embeddings: int,
    rope_theta: float,
) -> RopeScaling | None:
    """Dict / pairs / None -> sorted ``(key, value)`` pairs (hashable), or None for plain RoPE.

    Raises ValueError for RoPE variants other than "linear" and "llama3".
    """
    if scaling is None:
        return None
    items = dict(scaling.items() if isinstance(scaling, Mapping) else (tuple(p) for p in scaling))
    # Old configs spell the variant "type"; rope_theta may sit inside (transformers 5).
    rope_type = items.pop("rope_type", None) or items.pop("type", None) or "default"
    items.pop("type", None)
    inner_theta = items.pop("rope_theta", None)
    if inner_theta is not None and float(inner_theta) != float(rope_theta):
        raise ValueError(
            f"rope_scaling.rope_theta={inner_theta!r} disagrees with rope_theta={rope_theta!r}"
        )
    partial = items.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise ValueError(
            f"rope_scaling.partial_rotary_factor={partial!r} is not supported (need 1.0)"
        )
    if rope_type == "default":
        return None
    if rope_type not in _ROPE_KEYS:
        raise ValueError(
            f"rope_scaling rope_type {rope_type!r} is not supported; expected one of "
            f"{sorted(_ROPE_KEYS)} or None"
        )
    if rope_type == "llama3":
        items.setdefault("original_max_position_embeddings", max_position_embeddings)
    wanted = _ROPE_KEYS[rope_type]
    missing = [k for k in wanted if items.get(k) is None]
    if missing:
        raise ValueError(f"rope_scaling of type {rope_type!r} is missing {missing}")
    extra = sorted(set(items) - set(wanted))
    if extra:
        raise ValueError(f"rope_scaling of type {rope_type!r} has unsupported keys {extra}")
    out: dict[str, Any] = {k: float(items[k]) for k in wanted}
    if "original_max_position_embeddings" in out:
        out["original_max_position_embeddings"] = int(items["original_max_position_embeddings"])
    out["rope_type"] = rope_type
    return tuple(sorted(out.items()))


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """LLaMA-family decoder configuration (defaults: LLaMA-7B).

    ``rope_scaling`` may be given as a dict; it is stored as sorted ``(key, value)`` pairs so the
    config stays hashable, e.g. ``(("factor", 8.0), ..., ("rope_type", "llama3"))``.
    ``attention_bias`` puts biases on q, k, v and o (HF Llama); ``qkv_bias`` on q, k, v only
    (Qwen2).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 11008
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str | None = None
    # nn.attention implementation: einsum (reference), xla, cudnn, pallas or auto.
    attention_impl: str = "einsum"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}; give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a positive multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        object.__setattr__(
            self,
            "rope_scaling",
            _normalise_rope_scaling(
                self.rope_scaling, self.max_position_embeddings, self.rope_theta
            ),
        )
        layers.activation(self.hidden_act)  # raises on an unknown name
        stack.checkpoint_policy(self.remat_policy)  # raises on an unknown policy
        attention.check_implementation(self.attention_impl, "LlamaConfig.attention_impl")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ValueError(f"{name}={getattr(self, name)!r} is not a dtype name") from e

    @property
    def input_embed_dim(self) -> int:
        """Width of the embeddings ``hidden_states`` takes (the soft prompt's target width)."""
        return self.hidden_size

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def matmul_flops(self, seq: int, logit_positions: int) -> tuple[float, float]:
        """Forward matmul FLOPs of one sequence: (weight matmuls, attention score/value matmuls)."""
        d, hd = self.hidden_size, self.head_dim
        linear = self.num_layers * (
            2 * 2 * seq * d * self.num_heads * hd
            + 2 * 2 * seq * d * self.num_kv_heads * hd
            + 3 * 2 * seq * d * self.intermediate_size
        )
        linear += 2 * logit_positions * d * self.vocab_size
        return float(linear), float(self.num_layers * 2 * 2 * seq * seq * self.num_heads * hd)


@functools.lru_cache(maxsize=64)
def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """float32[head_dim // 2] inverse frequencies, computed in float32 as HF does (read-only)."""
    out = _inv_freq(head_dim, theta, scaling)
    out.setflags(write=False)  # cached and shared between callers
    return out


def _inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    if scaling is None:
        return inv_freq
    s = dict(scaling)
    factor = np.float32(s["factor"])
    if s["rope_type"] == "linear":
        return (inv_freq / factor).astype(np.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = np.float32(s["original_max_position_embeddings"])
    low, high = np.float32(s["low_freq_factor"]), np.float32(s["high_freq_factor"])
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """int[B, T] positions -> (cos, sin), each float32[B, T, D] (frequencies repeated twice)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates float[B, T, H, D] by float32[B, T, D] angles (HF rotate_half layout), in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class LlamaAttention(nnx.Module):
    """Causal self-attention with RoPE, GQA and an optional per-layer KV cache slice."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        common = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        e = cfg.hidden_size
        self.q_proj = layers.Dense(e, q_dim, axes=("embed", "heads"), use_bias=qkv_bias, **common)
        self.k_proj = layers.Dense(
            e, kv_dim, axes=("embed", "kv_heads"), use_bias=qkv_bias, **common
        )
        self.v_proj = layers.Dense(
            e, kv_dim, axes=("embed", "kv_heads"), use_bias=qkv_bias, **common
        )
        self.o_proj = layers.Dense(
            q_dim, e, axes=("heads", "embed"), use_bias=cfg.attention_bias, **common
        )

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attends ``x: float[B, T, E]`` under ``mask`` (bool[B, 1, T, T] without a cache).

        ``kv_cache``: this layer's (k, v) (``kv_cache.update_layer_cache`` layouts) and ``mask``
        from ``KVCache.attention_mask``; the new keys/values are written at ``index`` and the
        queries attend over the whole cache.
        Returns (float[B, T, E], new cache slice or None).
        """
        cfg = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        q = sharding.constrain(apply_rope(q, cos, sin), sharding.HEADS)
        k = sharding.constrain(apply_rope(k, cos, sin), sharding.HEADS)
        v = sharding.constrain(v, sharding.HEADS)
        scale, dtype = cfg.head_dim**-0.5, jnp.dtype(cfg.dtype)
        if kv_cache is None:
            out = attention.dot_product_attention(
                q, k, v, mask, scale=scale, dtype=dtype, implementation=cfg.attention_impl
            )
        else:
            out, kv_cache = kv_cache_lib.cached_attention(
                q,
                k,
                v,
                kv_cache,
                index,
                mask,
                scale=scale,
                dtype=dtype,
                implementation=cfg.attention_impl,
            )
        return self.o_proj(out.reshape(b, t, cfg.num_heads * cfg.head_dim)), kv_cache


class LlamaMLP(nnx.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        common = dict(
            use_bias=cfg.mlp_bias,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            rngs=rngs,
        )
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = layers.Dense(e, f, axes=("embed", "mlp"), **common)
        self.up_proj = layers.Dense(e, f, axes=("embed", "mlp"), **common)
        self.down_proj = layers.Dense(f, e, axes=("mlp", "embed"), **common)
        self.act = layers.activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, T, E] -> float[B, T, E]."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: self-attention then SwiGLU, each with a residual connection."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        norm = dict(
            eps=cfg.rms_norm_eps,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            rngs=rngs,
        )
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
        self.mlp = LlamaMLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, index=0):
        """float[B, T, E] -> (float[B, T, E], updated (k, v) cache slice or None)."""
        h, kv_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv_cache


class LlamaForCausalLM(CausalLM):
    """LLaMA-family causal LM with the interface shared by every LLM tower."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed_tokens = layers.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.layers = stack.build_layers(
            lambda r: LlamaDecoderLayer(cfg, rngs=r), cfg.num_layers, rngs, scan=cfg.scan_layers
        )
        self.norm = layers.RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else layers.Dense(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=dt,
                param_dtype=pdt,
                rngs=rngs,
            )
        )

    def init_cache(self, batch: int, max_length: int, dtype: Any = None) -> KVCache:
        """An empty cache of ``max_length`` slots (dtype defaults to the compute dtype)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
        return KVCache.init(
            cfg.num_layers, batch, max_length, cfg.num_kv_heads, cfg.head_dim, dtype
        )

    def hidden_states(
        self,
        inputs_embeds: jax.Array,
        attention_mask: jax.Array | None,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder stack and the final RMSNorm.

        Args:
          inputs_embeds: float[B, T, E].
          attention_mask: int/bool[B, S], 1 for real tokens; S == T without a cache and
            S == cache.max_length with one (covering every slot). None means all ones.
          positions: int[B, T] RoPE positions; default ``cache.index + arange(T)`` for every row
            (HF's default; left-padded generation should pass explicit positions).
          cache: written at ``cache.index``; queries sit at slots index .. index + T - 1.

        Returns:
          (float[B, T, E] after the final norm, the cache with index + T, or None).
        """
        cfg = self.config
        inp = self.check_inputs(inputs_embeds, attention_mask, positions, cache)
        b, t, attention_mask, index = inp.batch, inp.length, inp.attention_mask, inp.index
        if positions is None:
            positions = jnp.broadcast_to(index + jnp.arange(t, dtype=jnp.int32), (b, t))

        cos, sin = rope_cos_sin(
            positions, rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        )
        if cache is None:
            mask = attention.causal_padding_mask(attention_mask, index, t)
        else:
            mask = cache.attention_mask(attention_mask, t)
        x = sharding.constrain(inputs_embeds.astype(jnp.dtype(cfg.dtype)), sharding.HIDDEN)

        def body(block, h, kv_l):
            h, kv_l = block(h, cos, sin, mask, kv_l, index)
            return sharding.constrain(h, sharding.HIDDEN), kv_l

        xs = None if cache is None else cache.layer_inputs()
        x, new_kv = stack.apply_layers(
            self.layers, body, x, xs, scan=cfg.scan_layers, remat_policy=cfg.remat_policy
        )
        x = self.norm(x)
        if cache is None:
            return x, None
        return x, cache.advance(new_kv, t)


__all__ = [
    "LlamaConfig",
    "LlamaForCausalLM",
    "rope_inv_freq",
]
