"""A beam-search KV cache that is never reordered: the prompt is stored once, beams share slots.

With the plain ``KVCache`` every beam owns a full copy of the cache, and after each step the
rows are gathered to follow the surviving beams. That gather (plus the copy XLA needs to keep
the loop buffers apart) moves the whole cache through memory twice per step, more than the
attention itself reads. Here instead:

- the prompt's keys/values are stored once per prompt, in slots ``0 .. P - 1``: every beam of a
  prompt starts from the same prompt, so the ``num_beams`` copies were identical;
- T * NB slots follow for the generated tokens: step ``j`` writes the NB beams' entries at slots
  ``P + j * NB .. P + j * NB + NB - 1`` (one contiguous, in-place update), and nothing ever moves;
- ``ancestry`` int32[B, NB, T] says which beam's entry at step ``j`` lies on beam ``n``'s path
  (−1: not written yet). Following the beams reorders this small table only, and attention masks
  out every generated slot that is not on the query beam's path.

Each query attends over exactly the keys it attends over with a reordered cache, so the output
equals the plain cache's up to float summation order. Keys are stored d-major (float[B, K, D, S],
values float[B, K, S, D], S = P + T * NB), so both attention matmuls are plain [rows, D] x [D, S]
and [rows, S] x [S, D] products; with slot-major keys the CPU matmul kernel re-packed the keys on
every step. ``T`` is the number of new tokens, ``NB`` the number of beams; rows are
``n = b * NB + beam`` as in ``generation.beam``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from vpgtrans_jax import sharding
from vpgtrans_jax.nn.attention import _NEG
from vpgtrans_jax.nn.kv_cache import KVCache, LayerForms

_VALUE_AXES = ("cache_batch", "cache_heads", "cache_length", "head_dim")
_KEY_AXES = ("cache_batch", "cache_heads", "head_dim", "cache_length")


@struct.dataclass
class BeamLayerKV:
    """One layer of a ``BeamKVCache``: keys float[B, K, D, S] (d-major), values [B, K, S, D]."""

    k: jax.Array
    v: jax.Array

    def attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        index: jax.Array,
        mask: BeamMask,
        *,
        scale: float,
        dtype: jnp.dtype | type,
    ) -> tuple[jax.Array, BeamLayerKV]:
        """``kv_cache.cached_attention`` for this layout: ``beam_cached_attention``."""
        return beam_cached_attention(q, k, v, self, index, mask, scale=scale, dtype=dtype)


@struct.dataclass
class BeamMask:
    """What a decoding step's layers share: ``mask`` bool[B, NB, S], the slots query beam ``n``
    of prompt ``b`` may see, and ``slot``, the int32 slot of this step's first beam entry."""

    mask: jax.Array
    slot: jax.Array


@struct.dataclass
class BeamKVCache(LayerForms):
    """The beam-search cache (module docstring). ``k``/``v`` are stacked float[L, ...] arrays or
    tuples of L per-layer arrays, as ``KVCache``'s are.

    Attributes:
      k: per layer float[B, K, D, P + T * NB] (d-major keys).
      v: per layer float[B, K, P + T * NB, D].
      ancestry: int32[B, NB, T]; ``ancestry[b, n, j]`` is the beam whose step-``j`` entry is on
        beam ``n``'s path, −1 for steps not written yet.
      index: int32 scalar, the absolute slot of the next token in a plain cache (``P`` + tokens
        generated); positions and masks from ``VLModel.prefill`` keep using it.
      num_beams: NB (static).
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    ancestry: jax.Array
    index: jax.Array
    num_beams: int = struct.field(pytree_node=False)

    # -- shape ----------------------------------------------------------------------------------

    @property
    def _value_shape(self) -> tuple[int, int, int, int]:
        """(B, K, P + T * NB, D)."""
        return tuple(self.v.shape[1:] if self.stacked else self.v[0].shape)

    @property
    def batch(self) -> int:
        """Rows the decoder sees: prompts x beams."""
        return self._value_shape[0] * self.num_beams

    @property
    def num_kv_heads(self) -> int:
        return self._value_shape[1]

    @property
    def max_new_tokens(self) -> int:
        return self.ancestry.shape[-1]

    @property
    def prompt_length(self) -> int:
        return self._value_shape[2] - self.max_new_tokens * self.num_beams

    @property
    def max_length(self) -> int:
        """Absolute slots of a plain cache with the same capacity: P + T."""
        return self.prompt_length + self.max_new_tokens

    @property
    def head_dim(self) -> int:
        return self._value_shape[3]

    # -- construction and forms -----------------------------------------------------------------

    @classmethod
    def from_prefill(cls, cache: KVCache, num_beams: int, prompt_length: int) -> BeamKVCache:
        """The beam cache after a prefill of B prompts of ``prompt_length`` (P) slots into
        ``cache`` (capacity P + T, index P); the T free slots become T * NB shared ones."""
        p = prompt_length
        t = cache.max_length - p
        if t < 1:
            raise ValueError(f"the prefilled cache has no free slots (P = {p}, length {p + t})")
        stacked = cache.stacked
        ks = tuple(cache.k)  # per-layer arrays in both forms
        vs = tuple(cache.v)
        b, kh, _, d = ks[0].shape
        free = ((0, 0), (0, 0))

        def keys(x: jax.Array) -> jax.Array:
            x = jnp.swapaxes(x[:, :, :p], 2, 3)
            return sharding.constrain(jnp.pad(x, free + ((0, 0), (0, t * num_beams))), _KEY_AXES)

        def values(x: jax.Array) -> jax.Array:
            x = jnp.pad(x[:, :, :p], free + ((0, t * num_beams), (0, 0)))
            return sharding.constrain(x, _VALUE_AXES)

        out = cls(
            k=tuple(map(keys, ks)),
            v=tuple(map(values, vs)),
            ancestry=jnp.full((b, num_beams, t), -1, jnp.int32),
            index=jnp.asarray(cache.index, jnp.int32),
            num_beams=num_beams,
        )
        return out.stack() if stacked else out

    def select_rows(self, rows: jax.Array) -> BeamKVCache:
        """Row ``n`` continues row ``rows[n]`` (int[N], within the same prompt): only the
        ancestry table moves."""
        b, nb, t = self.ancestry.shape
        flat = jnp.take(self.ancestry.reshape(b * nb, t), rows, axis=0)
        return self.replace(ancestry=flat.reshape(b, nb, t))

    def repeat_rows(self, times: int) -> BeamKVCache:
        raise NotImplementedError("a BeamKVCache is made per prompt by from_prefill")

    # -- use by the decoders --------------------------------------------------------------------

    def _step(self) -> jax.Array:
        return self.index - self.prompt_length

    def _ancestry_now(self) -> jax.Array:
        """The table once this step's entries are written (each beam owns its own)."""
        own = jnp.broadcast_to(jnp.arange(self.num_beams, dtype=jnp.int32), self.ancestry.shape[:2])
        return jax.lax.dynamic_update_slice_in_dim(self.ancestry, own[:, :, None], self._step(), 2)

    def attention_mask(self, key_valid: jax.Array, num_queries: int) -> BeamMask:
        """The mask for one new token per row (computed once per step, shared by the layers).

        Args:
          key_valid: int/bool[N, P + T] (1 on real slots), rows repeated per beam.
          num_queries: must be 1 (prompts are prefilled into a plain ``KVCache``).
        """
        if num_queries != 1:
            raise ValueError(f"a BeamKVCache decodes one token per row, got {num_queries}")
        b, nb, t = self.ancestry.shape
        p = self.prompt_length
        valid = key_valid.astype(bool).reshape(b, nb, p + t)
        # Shared slot P + j * NB + m holds beam m's entry of step j.
        on_path = self._ancestry_now()[:, :, :, None] == jnp.arange(nb, dtype=jnp.int32)
        gen_valid = jnp.swapaxes(valid[:, :, p:], 1, 2)  # [B, T, NB(m)]
        gen = (on_path & gen_valid[:, None, :, :]).reshape(b, nb, t * nb)
        prompt = jnp.broadcast_to(valid[:, :1, :p], (b, nb, p))
        slot = p + self._step() * nb
        return BeamMask(mask=jnp.concatenate([prompt, gen], axis=-1), slot=slot)

    def layer_inputs(self) -> BeamLayerKV | list[BeamLayerKV]:
        """``xs`` for ``stack.apply_layers``."""
        if self.stacked:
            return BeamLayerKV(self.k, self.v)
        return [BeamLayerKV(k, v) for k, v in zip(self.k, self.v)]

    def advance(self, layer_outputs: Any, num_tokens: int) -> BeamKVCache:
        """The cache after ``apply_layers`` returned ``layer_outputs`` (``BeamLayerKV``s)."""
        if self.stacked:
            k, v = layer_outputs.k, layer_outputs.v
        else:
            k = tuple(o.k for o in layer_outputs)
            v = tuple(o.v for o in layer_outputs)
        return self.replace(k=k, v=v, ancestry=self._ancestry_now(), index=self.index + num_tokens)


def beam_cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv: BeamLayerKV,
    index: jax.Array,
    mask: BeamMask,
    *,
    scale: float,
    dtype: jnp.dtype | type,
) -> tuple[jax.Array, BeamLayerKV]:
    """Writes one token per beam into a ``BeamLayerKV`` and attends over prompt + beam path.

    Args:
      q: float[N, 1, H, D]; k, v: float[N, 1, K, D] (N = B * NB rows, H a multiple of K).
      index: unused (the plain cache's slot; ``mask.slot`` is where the entries go).
      mask: ``BeamKVCache.attention_mask``.

    Returns:
      (float[N, 1, H, D] in ``dtype``, the layer's updated ``BeamLayerKV``).
    """
    n, t, h, d = q.shape
    b, kh = kv.v.shape[:2]
    nb, g = n // b, h // kh
    if t != 1:
        raise ValueError(f"beam-cache attention takes one query per row, got {t}")

    def heads_major(x: jax.Array) -> jax.Array:  # [N, 1, K, D] -> [B, K, NB, D]
        return jnp.swapaxes(x.reshape(b, nb, kh, d), 1, 2).astype(kv.v.dtype)

    new_k = jnp.swapaxes(heads_major(k), 2, 3)  # keys are stored d-major
    k_cache = jax.lax.dynamic_update_slice_in_dim(kv.k, new_k, mask.slot, axis=3)
    v_cache = jax.lax.dynamic_update_slice_in_dim(kv.v, heads_major(v), mask.slot, axis=2)
    k_cache = sharding.constrain(k_cache, _KEY_AXES)
    v_cache = sharding.constrain(v_cache, _VALUE_AXES)

    # Queries grouped per kv head, (group, beam)-major: float[B, K, G * NB, D].
    qs = q.astype(dtype).reshape(b, nb, kh, g, d).transpose(0, 2, 3, 1, 4)
    qs = qs.reshape(b, kh, g * nb, d)
    scores = jnp.einsum("bkqd,bkds->bkqs", qs, k_cache.astype(dtype)).astype(jnp.float32)
    scores = scores * scale
    seen = jnp.broadcast_to(mask.mask[:, None, None], (b, 1, g) + mask.mask.shape[1:])
    scores = jnp.where(seen.reshape(b, 1, g * nb, -1), scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v_cache.astype(dtype))
    out = out.reshape(b, kh, g, nb, d).transpose(0, 3, 1, 2, 4).reshape(n, 1, h, d)
    return out, BeamLayerKV(k_cache, v_cache)
