"""A beam-search KV cache that is never reordered: the prompt is stored once, beams share slots.

With the plain ``KVCache`` every beam owns a full copy of the cache, and after each step the
rows are gathered to follow the surviving beams. That gather (plus the copy XLA needs to keep
the loop buffers apart) moves the whole cache through memory twice per step, more than the
attention itself reads. Here instead:

- the prompt's keys/values are stored once per prompt: every beam of a prompt starts from the
  same prompt, so the ``num_beams`` copies were identical;
- generated keys/values have T * NB slots: step ``j`` writes the NB beams' entries at slots
  ``j * NB .. j * NB + NB - 1`` (one contiguous, in-place update) and nothing ever moves;
- ``ancestry`` int32[B, NB, T] says which beam's entry at step ``j`` lies on beam ``n``'s path
  (−1: not written yet). Following the beams reorders this small table only, and attention masks
  out every generated slot that is not on the query beam's path.

Each query attends over exactly the keys it attends over with a reordered cache, so the output
equals the plain cache's up to float summation order. Keys are stored d-major (float[B, K, D, S],
values float[B, K, S, D]), so both attention matmuls are plain [rows, D] x [D, S] and
[rows, S] x [S, D] products; with slot-major keys the CPU matmul kernel re-packed the keys on
every step. ``T`` is the number of new tokens, ``NB`` the number of beams; rows are
``n = b * NB + beam`` as in ``generation.beam``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import struct

from vpgtrans_jax import sharding
from vpgtrans_jax.attention import _NEG

if TYPE_CHECKING:
    from vpgtrans_jax.kv_cache import KVCache

_LAYER_AXES = ("cache_batch", "cache_heads", "cache_length", "head_dim")
_KEY_AXES = ("cache_batch", "cache_heads", "head_dim", "cache_length")


@struct.dataclass
class BeamLayerKV:
    """One layer's part of a ``BeamKVCache`` (what the attention layers receive and return).

    ``prompt_k`` float[B, K, D, P], ``prompt_v`` float[B, K, P, D]; ``gen_k``
    float[B, K, D, T * NB], ``gen_v`` float[B, K, T * NB, D].
    Layers return it with the prompt parts set to None: they never change, and a scanned stack
    would otherwise copy them into its outputs on every step.
    """

    prompt_k: jax.Array | None
    prompt_v: jax.Array | None
    gen_k: jax.Array
    gen_v: jax.Array


@struct.dataclass
class BeamMask:
    """Keys each query may see: ``prompt`` bool[B, P] (shared by a prompt's beams) and ``gen``
    bool[B, NB, T * NB] (query beam, generated slot)."""

    prompt: jax.Array
    gen: jax.Array


@struct.dataclass
class BeamKVCache:
    """The beam-search cache (module docstring). ``k``-like fields are stacked float[L, ...]
    arrays or tuples of L per-layer arrays, as ``KVCache``'s are.

    Attributes:
      prompt_k, prompt_v: per layer float[B, K, D, P] and float[B, K, P, D].
      gen_k, gen_v: per layer float[B, K, D, T * NB] and float[B, K, T * NB, D].
      ancestry: int32[B, NB, T]; ``ancestry[b, n, j]`` is the beam whose step-``j`` entry is on
        beam ``n``'s path, −1 for steps not written yet.
      index: int32 scalar, the absolute slot of the next token (``P`` + tokens generated).
      num_beams: NB (static).
    """

    prompt_k: jax.Array | tuple[jax.Array, ...]
    prompt_v: jax.Array | tuple[jax.Array, ...]
    gen_k: jax.Array | tuple[jax.Array, ...]
    gen_v: jax.Array | tuple[jax.Array, ...]
    ancestry: jax.Array
    index: jax.Array
    num_beams: int = struct.field(pytree_node=False)

    # -- shape ----------------------------------------------------------------------------------

    @property
    def stacked(self) -> bool:
        return not isinstance(self.prompt_k, (tuple, list))

    @property
    def num_layers(self) -> int:
        return self.prompt_k.shape[0] if self.stacked else len(self.prompt_k)

    @property
    def _prompt_shape(self) -> tuple[int, int, int, int]:
        """(B, K, P, D), from the prompt values."""
        return tuple(self.prompt_v.shape[1:] if self.stacked else self.prompt_v[0].shape)

    @property
    def batch(self) -> int:
        """Rows the decoder sees: prompts x beams."""
        return self._prompt_shape[0] * self.num_beams

    @property
    def num_kv_heads(self) -> int:
        return self._prompt_shape[1]

    @property
    def prompt_length(self) -> int:
        return self._prompt_shape[2]

    @property
    def max_new_tokens(self) -> int:
        return self.ancestry.shape[-1]

    @property
    def max_length(self) -> int:
        """Absolute slots, as a plain cache of the same capacity has: P + T."""
        return self.prompt_length + self.max_new_tokens

    @property
    def head_dim(self) -> int:
        return self._prompt_shape[3]

    # -- construction and forms -----------------------------------------------------------------

    @classmethod
    def from_prefill(cls, cache: KVCache, num_beams: int, prompt_length: int) -> BeamKVCache:
        """The beam cache after a prefill of B prompts of ``prompt_length`` (P) slots into
        ``cache`` (capacity P + T, index P); the T free slots become T * NB generated ones."""
        p = prompt_length
        t = cache.max_length - p
        if t < 1:
            raise ValueError(f"the prefilled cache has no free slots (P = {p}, length {p + t})")
        stacked = cache.stacked
        ks = cache.k if not stacked else tuple(cache.k)
        vs = cache.v if not stacked else tuple(cache.v)
        b, kh, _, d = ks[0].shape

        def prompt_keys(x: jax.Array) -> jax.Array:
            return sharding.constrain(jnp.swapaxes(x[:, :, :p], 2, 3), _KEY_AXES)

        def prompt_values(x: jax.Array) -> jax.Array:
            return sharding.constrain(x[:, :, :p], _LAYER_AXES)

        def empty(shape: tuple[int, ...], axes: tuple[str, ...]) -> jax.Array:
            return sharding.constrain(jnp.zeros(shape, ks[0].dtype), axes)

        pk, pv = tuple(map(prompt_keys, ks)), tuple(map(prompt_values, vs))
        gk = tuple(empty((b, kh, d, t * num_beams), _KEY_AXES) for _ in ks)
        gv = tuple(empty((b, kh, t * num_beams, d), _LAYER_AXES) for _ in vs)
        out = cls(
            prompt_k=pk,
            prompt_v=pv,
            gen_k=gk,
            gen_v=gv,
            ancestry=jnp.full((b, num_beams, t), -1, jnp.int32),
            index=jnp.asarray(cache.index, jnp.int32),
            num_beams=num_beams,
        )
        return out.stack() if stacked else out

    def per_layer(self) -> BeamKVCache:
        if not self.stacked:
            return self
        return self.replace(
            prompt_k=tuple(self.prompt_k),
            prompt_v=tuple(self.prompt_v),
            gen_k=tuple(self.gen_k),
            gen_v=tuple(self.gen_v),
        )

    def stack(self) -> BeamKVCache:
        if self.stacked:
            return self
        return self.replace(
            prompt_k=jnp.stack(self.prompt_k),
            prompt_v=jnp.stack(self.prompt_v),
            gen_k=jnp.stack(self.gen_k),
            gen_v=jnp.stack(self.gen_v),
        )

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
        """The mask for one new token per row.

        Args:
          key_valid: int/bool[N, P + T] (1 on real slots), rows repeated per beam.
          num_queries: must be 1 (prompts are prefilled into a plain ``KVCache``).
        """
        if num_queries != 1:
            raise ValueError(f"a BeamKVCache decodes one token per row, got {num_queries}")
        b, nb, t = self.ancestry.shape
        p = self.prompt_length
        valid = key_valid.astype(bool).reshape(b, nb, p + t)
        # Generated slot (j, m) = beam m's entry of step j, at j * NB + m.
        on_path = self._ancestry_now()[:, :, :, None] == jnp.arange(nb, dtype=jnp.int32)
        gen_valid = jnp.swapaxes(valid[:, :, p:], 1, 2)  # [B, T, NB(m)]
        gen = on_path & gen_valid[:, None, :, :]
        return BeamMask(prompt=valid[:, 0, :p], gen=gen.reshape(b, nb, t * nb))

    def layer_inputs(self) -> BeamLayerKV | list[BeamLayerKV]:
        """``xs`` for ``stack.apply_layers``."""
        if self.stacked:
            return BeamLayerKV(self.prompt_k, self.prompt_v, self.gen_k, self.gen_v)
        return [
            BeamLayerKV(*kv) for kv in zip(self.prompt_k, self.prompt_v, self.gen_k, self.gen_v)
        ]

    def advance(self, layer_outputs: Any, num_tokens: int) -> BeamKVCache:
        """The cache after ``apply_layers`` returned ``layer_outputs`` (``BeamLayerKV``s)."""
        if self.stacked:
            gen_k, gen_v = layer_outputs.gen_k, layer_outputs.gen_v
        else:
            gen_k = tuple(o.gen_k for o in layer_outputs)
            gen_v = tuple(o.gen_v for o in layer_outputs)
        return self.replace(
            gen_k=gen_k,
            gen_v=gen_v,
            ancestry=self._ancestry_now(),
            index=self.index + num_tokens,
        )


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
      index: int32 scalar absolute slot of the new token (P + step).
      mask: ``BeamKVCache.attention_mask``.

    Returns:
      (float[N, 1, H, D] in ``dtype``, the layer's new ``BeamLayerKV`` without its prompt parts).
    """
    n, t, h, d = q.shape
    b, kh, _, p = kv.prompt_k.shape
    nb, g = n // b, h // kv.prompt_k.shape[1]
    if t != 1:
        raise ValueError(f"beam-cache attention takes one query per row, got {t}")
    step = index - p

    def heads_major(x: jax.Array) -> jax.Array:  # [N, 1, K, D] -> [B, K, NB, D]
        return jnp.swapaxes(x.reshape(b, nb, kh, d), 1, 2).astype(kv.gen_k.dtype)

    new_k = jnp.swapaxes(heads_major(k), 2, 3)  # keys are stored d-major
    gen_k = jax.lax.dynamic_update_slice_in_dim(kv.gen_k, new_k, step * nb, axis=3)
    gen_v = jax.lax.dynamic_update_slice_in_dim(kv.gen_v, heads_major(v), step * nb, axis=2)
    gen_k = sharding.constrain(gen_k, _KEY_AXES)
    gen_v = sharding.constrain(gen_v, _LAYER_AXES)

    # Queries grouped per kv head, (group, beam)-major: float[B, K, G * NB, D].
    qs = q.astype(dtype).reshape(b, nb, kh, g, d).transpose(0, 2, 3, 1, 4)
    qs = qs.reshape(b, kh, g * nb, d)
    s_prompt = jnp.einsum("bkqd,bkdp->bkqp", qs, kv.prompt_k.astype(dtype))
    s_gen = jnp.einsum("bkqd,bkds->bkqs", qs, gen_k.astype(dtype))
    s_prompt = s_prompt.astype(jnp.float32) * scale
    s_gen = s_gen.astype(jnp.float32) * scale
    s_prompt = jnp.where(mask.prompt[:, None, None, :], s_prompt, _NEG)
    gen_mask = jnp.broadcast_to(mask.gen[:, None, None], (b, 1, g, nb, mask.gen.shape[-1]))
    s_gen = jnp.where(gen_mask.reshape(b, 1, g * nb, -1), s_gen, _NEG)
    probs = jax.nn.softmax(jnp.concatenate([s_prompt, s_gen], axis=-1), axis=-1).astype(dtype)
    out = jnp.einsum("bkqp,bkpd->bkqd", probs[..., :p], kv.prompt_v.astype(dtype))
    out = out + jnp.einsum("bkqs,bksd->bkqd", probs[..., p:], gen_v.astype(dtype))
    out = out.reshape(b, kh, g, nb, d).transpose(0, 3, 1, 2, 4).reshape(n, 1, h, d)
    return out, BeamLayerKV(None, None, gen_k, gen_v)
