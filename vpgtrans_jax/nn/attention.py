"""Attention math and masks shared by the ViT, Q-Former and LLM decoders (cache: ``kv_cache``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    scale: float,
    dtype: jnp.dtype | type,
    kv_layout: str = "bskd",
) -> jax.Array:
    """Multi-head attention with grouped-query support.

    Args:
      q: float[N, T, H, D] queries.
      k, v: keys and values, ``H`` a multiple of their ``K`` heads (GQA/MQA): float[N, S, K, D]
        for ``kv_layout="bskd"`` (projections of a sequence) or float[N, K, S, D] for ``"bksd"``
        (the KV cache layout).
      mask: bool[N or 1, 1, T, S]; True where a query may attend to a key. None means all.
      scale: multiplier applied to the scores (usually ``D ** -0.5``).
      dtype: compute dtype of the two matmuls; the softmax always runs in float32.

    Returns:
      float[N, T, H, D] in ``dtype``.
    """
    if kv_layout not in ("bskd", "bksd"):
        raise ValueError(f"kv_layout must be 'bskd' or 'bksd', got {kv_layout!r}")
    n, t, h, d = q.shape
    kv_heads = k.shape[kv_layout.index("k")]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    groups = h // kv_heads
    q = q.astype(dtype).reshape(n, t, kv_heads, groups, d)
    scores = jnp.einsum(f"btkgd,{kv_layout}->bkgts", q, k.astype(dtype)).astype(jnp.float32)
    scores = scores * scale
    if mask is not None:
        # mask: [N, 1, T, S] -> broadcast over (K, G).
        scores = jnp.where(mask[:, :, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum(f"bkgts,{kv_layout}->btkgd", probs, v.astype(dtype))
    return out.reshape(n, t, h, d)


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
