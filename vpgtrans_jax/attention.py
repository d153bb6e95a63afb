"""Attention math, masks and the key/value cache shared by the ViT, Q-Former and LLM decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vpgtrans_jax import sharding

_NEG = float(jnp.finfo(jnp.float32).min)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    scale: float,
    dtype: jnp.dtype | type,
) -> jax.Array:
    """Multi-head attention with grouped-query support.

    Args:
      q: float[B, T, H, D] queries.
      k, v: float[B, S, K, D] keys and values; ``H`` must be a multiple of ``K`` (GQA/MQA).
      mask: bool[B or 1, 1, T, S]; True where a query may attend to a key. None means all.
      scale: multiplier applied to the scores (usually ``D ** -0.5``).
      dtype: compute dtype of the two matmuls; the softmax always runs in float32.

    Returns:
      float[B, T, H, D] in ``dtype``.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    groups = h // kv_heads
    q = q.astype(dtype).reshape(b, t, kv_heads, groups, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(dtype)).astype(jnp.float32) * scale
    if mask is not None:
        # mask: [B, 1, T, S] -> broadcast over (K, G).
        scores = jnp.where(mask[:, :, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype))
    return out.reshape(b, t, h, d)


def padding_mask(key_valid: jax.Array) -> jax.Array:
    """bool/int[B, S] (1 = real token) -> bool[B, 1, 1, S] for bidirectional attention."""
    return key_valid.astype(bool)[:, None, None, :]


def causal_padding_mask(
    key_valid: jax.Array, query_offset: jax.Array | int, num_queries: int
) -> jax.Array:
    """Causal mask combined with key padding.

    Query ``t`` sits at absolute slot ``query_offset + t`` and may attend to key slot ``s`` when
    ``s <= query_offset + t`` and ``key_valid[b, s]``. Without a cache ``query_offset`` is 0 and
    ``S == T``; with a cache ``S`` is the cache length.

    Args:
      key_valid: bool/int[B, S].
      query_offset: int scalar, the cache write index.
      num_queries: T.

    Returns:
      bool[B, 1, T, S].
    """
    s = key_valid.shape[1]
    q_slots = query_offset + jnp.arange(num_queries)
    causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
    return causal[None, None, :, :] & key_valid.astype(bool)[:, None, None, :]


@struct.dataclass
class KVCache:
    """Static-shape key/value cache for incremental decoding, stacked over layers.

    Attributes:
      k, v: float[L, B, S, K, D] (layers, batch, cache length, kv heads, head dim).
      index: int32 scalar, the slot the next token is written to (batches are left-padded, so one
        index serves every row).
    """

    k: jax.Array
    v: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[2]

    @classmethod
    def init(
        cls,
        num_layers: int,
        batch: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: jnp.dtype | type,
    ) -> KVCache:
        shape = (num_layers, batch, max_length, num_kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), index=jnp.zeros((), jnp.int32)
        )


CACHE_AXES = ("layers", "cache_batch", "cache_length", "cache_heads", "head_dim")


def update_layer_cache(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes float[B, T, K, D] keys/values into a layer cache float[B, S, K, D] at ``index``."""
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), index, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), index, axis=1)
    k_cache = sharding.constrain(k_cache, CACHE_AXES[1:])
    v_cache = sharding.constrain(v_cache, CACHE_AXES[1:])
    return k_cache, v_cache
