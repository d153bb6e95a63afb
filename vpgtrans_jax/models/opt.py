"""OPT decoder-only causal LM (Meta's OPT, Hugging Face ``OPTForCausalLM`` semantics).

The frozen LLM of the BLIP-2 / VPGTrans OPT variants. Two block flavours exist:

- pre-LN (125m, 1.3b, 2.7b, 6.7b, ...): LayerNorm before attention and FFN plus a final LayerNorm;
- post-LN (350m): LayerNorm after each residual add, no final LayerNorm, and token embeddings that
  live in a smaller space (``word_embed_proj_dim``) mapped in/out by ``project_in``/``project_out``.

Token embeddings and soft prompts live in ``input_embed_dim`` (= ``word_embed_proj_dim``) space.
Learned positions use the OPT offset of 2 and are derived from the attention mask, so left-padded
batches get the same positions as unpadded rows. Dropout is not implemented: the LLM is frozen and
always run deterministically.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.models.decoder import CausalLM
from vpgtrans_jax.nn import attention, kv_cache, stack
from vpgtrans_jax.nn.kv_cache import KVCache
from vpgtrans_jax.nn.layers import Dense, Embed, LayerNorm, activation

# OPT's learned position table has 2 extra leading rows (a fairseq padding_idx artefact).
POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """Architecture of an OPT decoder (field names follow ours; ``from_hf`` maps HF names)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None  # None: same as hidden_size
    do_layer_norm_before: bool = True
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    activation_function: str = "relu"
    remove_final_layer_norm: bool = False
    tie_word_embeddings: bool = True
    layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default; HF OPT never changes it
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str | None = None
    # nn.attention implementation: einsum (reference), xla, cudnn, pallas or auto.
    attention_impl: str = "einsum"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"OPTConfig.{name} must be a positive int, got {value!r}")
        if self.max_position_embeddings <= 0:
            raise ValueError(
                f"OPTConfig.max_position_embeddings must be positive, got "
                f"{self.max_position_embeddings!r}"
            )
        if self.word_embed_proj_dim is not None and self.word_embed_proj_dim <= 0:
            raise ValueError(
                f"OPTConfig.word_embed_proj_dim must be positive or None, got "
                f"{self.word_embed_proj_dim!r}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"OPTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        activation(self.activation_function)  # raises on an unknown name
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ValueError(
                    f"OPTConfig.{name}={getattr(self, name)!r} is not a dtype name"
                ) from e
        stack.checkpoint_policy(self.remat_policy)  # raises on an unknown policy
        attention.check_implementation(self.attention_impl, "OPTConfig.attention_impl")

    @property
    def input_embed_dim(self) -> int:
        """Width E of token embeddings / soft prompts (``word_embed_proj_dim``)."""
        return self.hidden_size if self.word_embed_proj_dim is None else self.word_embed_proj_dim

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_projection(self) -> bool:
        """True for OPT-350m style models (``project_in``/``project_out`` exist)."""
        return self.input_embed_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    def matmul_flops(self, seq: int, logit_positions: int) -> tuple[float, float]:
        """Forward matmul FLOPs of one sequence: (weight matmuls, attention score/value matmuls)."""
        d, e = self.hidden_size, self.input_embed_dim
        linear = self.num_layers * (4 * 2 * seq * d * d + 2 * 2 * seq * d * self.ffn_dim)
        if e != d:  # project_in / project_out
            linear += 2 * 2 * seq * e * d
        linear += 2 * logit_positions * e * self.vocab_size
        return float(linear), float(self.num_layers * 2 * 2 * seq * seq * d)


class _AffineFreeLayerNorm(nnx.Module):
    """LayerNorm without scale/bias (``layer_norm_elementwise_affine=False``), in float32."""

    def __init__(self, *, eps: float, dtype: jnp.dtype):
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        return (centred * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)


def _layer_norm(cfg: OPTConfig, dim: int, rngs: nnx.Rngs) -> nnx.Module:
    dtype = jnp.dtype(cfg.dtype)
    if not cfg.layer_norm_elementwise_affine:
        return _AffineFreeLayerNorm(eps=cfg.layer_norm_eps, dtype=dtype)
    return LayerNorm(
        dim,
        eps=cfg.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.dtype(cfg.param_dtype),
        rngs=rngs,
    )


def _dense_kw(cfg: OPTConfig, rngs: nnx.Rngs) -> dict[str, Any]:
    """Keyword arguments every OPT projection shares."""
    return dict(
        use_bias=cfg.enable_bias,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        rngs=rngs,
    )


class OPTAttention(nnx.Module):
    """Multi-head causal self-attention with biased q/k/v/out projections."""

    def __init__(self, cfg: OPTConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.hidden_size
        kw = _dense_kw(cfg, rngs)
        self.q_proj = Dense(d, d, axes=("embed", "heads"), **kw)
        self.k_proj = Dense(d, d, axes=("embed", "kv_heads"), **kw)
        self.v_proj = Dense(d, d, axes=("embed", "kv_heads"), **kw)
        self.out_proj = Dense(d, d, axes=("heads", "embed"), **kw)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Self-attention over the sequence (or over the cache when ``kv`` is given).

        Args:
          x: float[B, T, D] hidden states.
          mask: bool[B, 1, T, S] (S == T) without a cache, ``KVCache.attention_mask`` with one.
          kv: this layer's (k, v) cache (``kv_cache.update_layer_cache`` layouts), or None.
          index: int32 scalar cache slot of the first query (with ``kv``).

        Returns:
          (float[B, T, D], updated (k, v) cache or None).
        """
        cfg = self.config
        b, t, _ = x.shape
        shape = (b, t, cfg.num_heads, cfg.head_dim)
        # HF scales the projected queries (bias included) before the matmul; same rounding order.
        q = (self.q_proj(x) * cfg.head_dim**-0.5).reshape(shape)
        k = self.k_proj(x).reshape(shape)
        v = self.v_proj(x).reshape(shape)
        q = sharding.constrain(q, sharding.HEADS)
        k = sharding.constrain(k, sharding.HEADS)
        v = sharding.constrain(v, sharding.HEADS)
        impl = cfg.attention_impl
        if kv is None:
            out = attention.dot_product_attention(
                q, k, v, mask, scale=1.0, dtype=jnp.dtype(cfg.dtype), implementation=impl
            )
        else:
            out, kv = kv_cache.cached_attention(
                q, k, v, kv, index, mask, scale=1.0, dtype=jnp.dtype(cfg.dtype), implementation=impl
            )
        return self.out_proj(out.reshape(b, t, cfg.hidden_size)), kv


class OPTDecoderLayer(nnx.Module):
    """One OPT block: attention + ReLU FFN, pre-LN or post-LN per ``do_layer_norm_before``."""

    def __init__(self, cfg: OPTConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.hidden_size
        kw = _dense_kw(cfg, rngs)
        self.self_attn = OPTAttention(cfg, rngs=rngs)
        self.self_attn_layer_norm = _layer_norm(cfg, d, rngs)
        self.fc1 = Dense(d, cfg.ffn_dim, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.ffn_dim, d, axes=("mlp", "embed"), **kw)
        self.final_layer_norm = _layer_norm(cfg, d, rngs)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """float[B, T, D] -> (float[B, T, D], updated layer cache or None)."""
        pre = self.config.do_layer_norm_before
        h = self.self_attn_layer_norm(x) if pre else x
        h, new_kv = self.self_attn(h, mask, kv, index)
        x = x + h
        if not pre:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if pre else x
        x = x + self.fc2(activation(self.config.activation_function)(self.fc1(h)))
        if not pre:
            x = self.final_layer_norm(x)
        return x, new_kv


class OPTForCausalLM(CausalLM):
    """OPT decoder with its LM head; the interface the VL model drives (shared with LLaMA)."""

    def __init__(self, cfg: OPTConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        e, d = cfg.input_embed_dim, cfg.hidden_size
        self.embed_tokens = Embed(
            cfg.vocab_size,
            e,
            axes=("vocab", "embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.embed_positions = Embed(
            cfg.max_position_embeddings + POSITION_OFFSET,
            d,
            axes=(None, "embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # The two widths cannot both use the "embed" mesh axis; shard the model-width side.
        self.project_in = Dense(e, d, axes=(None, "embed"), **kw) if cfg.has_projection else None
        self.project_out = Dense(d, e, axes=("embed", None), **kw) if cfg.has_projection else None
        self.final_layer_norm = _layer_norm(cfg, d, rngs) if cfg.has_final_layer_norm else None
        self.layers = stack.build_layers(
            lambda r: OPTDecoderLayer(cfg, rngs=r), cfg.num_layers, rngs, scan=cfg.scan_layers
        )
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Dense(e, cfg.vocab_size, axes=("embed", "vocab"), **kw)
        )

    @property
    def max_positions(self) -> int:
        """The learned position table's length bounds every sequence."""
        return self.config.max_position_embeddings

    def init_cache(self, batch: int, max_length: int, dtype: Any = None) -> KVCache:
        """An empty cache float[L, batch, H, max_length, Dh] (compute dtype unless ``dtype``)."""
        cfg = self.config
        if max_length > cfg.max_position_embeddings:
            raise ValueError(
                f"cache max_length={max_length} exceeds max_position_embeddings="
                f"{cfg.max_position_embeddings}"
            )
        return KVCache.init(
            cfg.num_layers,
            batch,
            max_length,
            cfg.num_kv_heads,
            cfg.head_dim,
            jnp.dtype(cfg.dtype if dtype is None else dtype),
        )

    def hidden_states(
        self,
        inputs_embeds: jax.Array,
        attention_mask: jax.Array | None,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder stack on embeddings.

        Args:
          inputs_embeds: float[B, T, E] token embeddings and/or soft prompts.
          attention_mask: int/bool[B, S], 1 for real tokens. Without a cache S == T; with one S is
            the cache length and the mask covers every slot. None means all ones.
          positions: int[B, T] HF ``position_ids`` (without the offset 2). By default they are
            ``cumsum(mask) * mask - 1`` over the whole mask, taken at the query slots.
          cache: KVCache; the T new keys/values are written at ``cache.index``.

        Returns:
          (float[B, T, E] final hidden states for ``logits``, the cache advanced by T or None).
        """
        cfg = self.config
        inp = self.check_inputs(inputs_embeds, attention_mask, positions, cache)
        t, attention_mask, index = inp.length, inp.attention_mask, inp.index
        mask_int = attention_mask.astype(jnp.int32)
        if positions is None:
            full = jnp.cumsum(mask_int, axis=1) * mask_int - 1
            positions = jax.lax.dynamic_slice_in_dim(full, index, t, axis=1)

        h = inputs_embeds.astype(jnp.dtype(cfg.dtype))
        if self.project_in is not None:
            h = self.project_in(h)
        h = h + self.embed_positions(positions + POSITION_OFFSET)
        h = sharding.constrain(h, sharding.HIDDEN)
        if cache is None:
            mask = attention.causal_padding_mask(attention_mask, index, t)
        else:
            mask = cache.attention_mask(attention_mask, t)

        def body(block, carry, kv_l):
            out, new_kv = block(carry, mask, kv_l, index)
            return sharding.constrain(out, sharding.HIDDEN), new_kv

        xs = None if cache is None else cache.layer_inputs()
        h, ys = stack.apply_layers(
            self.layers, body, h, xs, scan=cfg.scan_layers, remat_policy=cfg.remat_policy
        )
        if self.final_layer_norm is not None:
            h = self.final_layer_norm(h)
        if self.project_out is not None:
            h = self.project_out(h)
        new_cache = None if cache is None else cache.advance(ys, t)
        return h, new_cache


__all__ = [
    "OPTConfig",
    "OPTAttention",
    "OPTDecoderLayer",
    "OPTForCausalLM",
    "POSITION_OFFSET",
]
