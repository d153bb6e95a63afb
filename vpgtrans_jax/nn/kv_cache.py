"""The key/value cache of the LLM decoders: layouts, in-place writes, attention over it.

A ``KVCache`` comes in two forms that hold the same numbers:

- *stacked* (what ``init`` makes, and what scanned layers need): ``k``/``v`` are arrays with a
  leading layer axis, float[L, ...];
- *per-layer* (``per_layer()``): tuples of L arrays. Unscanned models decode faster with it:
  each layer's buffer is updated in place instead of being sliced out of, and restacked into,
  one array on every step.

One layer holds float[N, K, S, D] (rows, kv heads, slots, head dim). Heads come before slots so
that decoding attends with plain batched matmuls over (N, K); the [N, S, K, D] order made XLA
transpose every layer's cache on every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import struct

from vpgtrans_jax import sharding
from vpgtrans_jax.nn.attention import causal_padding_mask, dot_product_attention

CACHE_AXES = ("layers", "cache_batch", "cache_heads", "cache_length", "head_dim")


class LayerForms:
    """The stacked / per-layer forms shared by ``KVCache`` and ``beam_cache.BeamKVCache``: a
    dataclass with ``k`` and ``v`` fields, each float[L, ...] or a tuple of L arrays."""

    @property
    def stacked(self) -> bool:
        return not isinstance(self.k, (tuple, list))

    @property
    def num_layers(self) -> int:
        return self.k.shape[0] if self.stacked else len(self.k)

    def per_layer(self) -> Self:
        """The same cache as tuples of per-layer arrays."""
        if not self.stacked:
            return self
        return self.replace(k=tuple(self.k), v=tuple(self.v))

    def stack(self) -> Self:
        """The same cache as stacked arrays with a leading layer axis."""
        if self.stacked:
            return self
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))


@struct.dataclass
class KVCache(LayerForms):
    """Static-shape key/value cache for incremental decoding (see the module docstring).

    Attributes:
      k, v: per layer float[N, K, S, D]; stacked into one array float[L, N, K, S, D] or kept as a
        tuple of per-layer arrays.
      index: int32 scalar, the slot the next token is written to (batches are left-padded, so one
        index serves every row).
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    index: jax.Array

    # -- shape ----------------------------------------------------------------------------------

    @property
    def layer_shape(self) -> tuple[int, int, int, int]:
        """One layer's key shape (N, K, S, D)."""
        return tuple(self.k.shape[1:] if self.stacked else self.k[0].shape)

    @property
    def batch(self) -> int:
        return self.layer_shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.layer_shape[1]

    @property
    def max_length(self) -> int:
        return self.layer_shape[-2]

    @property
    def head_dim(self) -> int:
        return self.layer_shape[-1]

    # -- construction and forms -----------------------------------------------------------------

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
        """An empty stacked cache, k/v float[L, batch, num_kv_heads, max_length, head_dim]."""
        shape = (num_layers, batch, num_kv_heads, max_length, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), index=jnp.zeros((), jnp.int32)
        )

    def _map_layers(self, fn: Callable[[jax.Array], jax.Array]) -> KVCache:
        if self.stacked:
            return self.replace(k=jax.vmap(fn)(self.k), v=jax.vmap(fn)(self.v))
        return self.replace(k=tuple(map(fn, self.k)), v=tuple(map(fn, self.v)))

    def repeat_rows(self, times: int) -> KVCache:
        """Each row repeated ``times`` times (row-major: r0, r0, ..., r1, r1, ...)."""
        return self._map_layers(lambda x: jnp.repeat(x, times, axis=0))

    def select_rows(self, rows: jax.Array) -> KVCache:
        """The cache whose row ``n`` is old row ``rows[n]`` (int[N]), e.g. to follow beams."""
        return self._map_layers(lambda x: jnp.take(x, rows, axis=0))

    # -- use by the decoders --------------------------------------------------------------------

    def attention_mask(self, key_valid: jax.Array, num_queries: int) -> jax.Array:
        """Mask for T new queries written at ``index``: causal and key padding.

        Args:
          key_valid: bool/int[N, S] (1 on real slots).
          num_queries: T.

        Returns:
          bool[N, 1, T, S].
        """
        return causal_padding_mask(key_valid, self.index, num_queries)

    def layer_inputs(self) -> tuple[jax.Array, jax.Array] | list[tuple[jax.Array, jax.Array]]:
        """``xs`` for ``stack.apply_layers``: stacked (k, v), or a list of per-layer (k, v)."""
        return (self.k, self.v) if self.stacked else list(zip(self.k, self.v))

    def advance(self, layer_outputs: Any, num_tokens: int) -> KVCache:
        """The cache after ``apply_layers`` returned ``layer_outputs`` for ``num_tokens`` tokens."""
        if self.stacked:
            k, v = layer_outputs
        else:
            k, v = (tuple(a) for a in zip(*layer_outputs))
        return KVCache(k=k, v=v, index=self.index + num_tokens)


def update_layer_cache(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes float[N, T, K, D] keys/values into a layer cache float[N, K, S, D] at ``index``."""
    k = jnp.swapaxes(k, 1, 2).astype(k_cache.dtype)
    v = jnp.swapaxes(v, 1, 2).astype(v_cache.dtype)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, index, axis=2)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, index, axis=2)
    axes = CACHE_AXES[1:]
    return sharding.constrain(k_cache, axes), sharding.constrain(v_cache, axes)


def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv: tuple[jax.Array, jax.Array],
    index: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    dtype: jnp.dtype | type,
    implementation: str = "einsum",
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Writes the new keys/values into one layer's cache and attends over it.

    Args:
      q: float[N, T, H, D]; k, v: float[N, T, K, D] for the T new tokens.
      kv: the layer's (k, v) cache, each float[N, K, S, D].
      index: int32 scalar slot of the first new token.
      mask: ``KVCache.attention_mask`` for these queries.
      implementation: ``attention.dot_product_attention``'s (the beam layout has its own math).

    Returns:
      (float[N, T, H, D] attention output, the updated (k, v) layer cache).

    A layer cache of another layout (``beam_cache.BeamLayerKV``) brings its own ``attend``.
    """
    if not isinstance(kv, tuple):
        return kv.attend(q, k, v, index, mask, scale=scale, dtype=dtype)
    k_cache, v_cache = update_layer_cache(kv[0], kv[1], k, v, index)
    out = dot_product_attention(
        q,
        k_cache,
        v_cache,
        mask,
        scale=scale,
        dtype=dtype,
        kv_layout="bksd",
        implementation=implementation,
    )
    return out, (k_cache, v_cache)
