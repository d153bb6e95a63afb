"""What every LLM decoder (OPT, LLaMA family) shares: the public causal-LM interface.

A subclass sets ``config`` (with ``input_embed_dim``, ``num_layers``, ``num_kv_heads``,
``head_dim``), defines ``embed_tokens`` (``layers.Embed``), ``lm_head`` (``layers.Dense`` or None
when tied to the token embedding) and ``hidden_states``, which starts with ``check_inputs``. This
base turns those into ``embed``, ``logits`` and ``__call__``, and checks every input once for all
families. The VL model and generation rely only on this interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vpgtrans_jax.nn.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class DecoderInputs:
    """What ``check_inputs`` established about one ``hidden_states`` call.

    Attributes:
      batch, length: B and T of ``inputs_embeds``.
      slots: S, the key length: T without a cache, the cache length with one.
      attention_mask: int/bool[B, S] (all ones when the caller passed None).
      index: int32 scalar slot of the first query (0 without a cache).
    """

    batch: int
    length: int
    slots: int
    attention_mask: jax.Array
    index: jax.Array


def static_int(x: Any) -> int | None:
    """The Python int behind ``x`` when it is known at trace time, else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return int(x)


def check_token_ids(
    ids: Any, vocab_size: int, name: str = "input_ids", allowed: tuple[int, ...] = ()
) -> None:
    """Raises ValueError when ``ids`` holds an id outside ``[0, vocab_size)`` (``allowed`` values
    excepted, e.g. the -100 of labels): such an id has no embedding row and silently turns the
    logits into NaN. Checked on the host, and only for concrete arrays: inside ``jit`` the ids
    are traced and were checked where they entered (``generate``, the data pipeline).
    """
    if ids is None or isinstance(ids, jax.core.Tracer):
        return
    arr = np.asarray(ids)
    if arr.size == 0:
        return
    bad = (arr < 0) | (arr >= vocab_size)
    for value in allowed:
        bad &= arr != value
    if bad.any():
        where = [int(i) for i in np.argwhere(bad)[0]]
        raise ValueError(
            f"{name} holds token id {int(arr[tuple(where)])} at {where}, outside the LLM's "
            f"vocabulary [0, {vocab_size}): was it made by another model's tokenizer?"
        )


class CausalLM(nnx.Module):
    """Base of the decoders; see the module docstring for what subclasses provide."""

    # Longest sequence the architecture can represent (None: unbounded, e.g. RoPE).
    max_positions: int | None = None

    def check_inputs(
        self,
        inputs_embeds: jax.Array,
        attention_mask: jax.Array | None,
        positions: jax.Array | None,
        cache: KVCache | None,
    ) -> DecoderInputs:
        """Validates ``hidden_states``' arguments (shapes, cache layout, capacity) in one place.

        Args:
          inputs_embeds: float[B, T, E].
          attention_mask: int/bool[B, S] or None; S == T without a cache, the cache length with
            one (the mask covers every slot).
          positions: int[B, T] or None.
          cache: KVCache / BeamKVCache or None.
        """
        cfg = self.config
        e = cfg.input_embed_dim
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != e:
            raise ValueError(
                f"inputs_embeds must be float[B, T, {e}], got shape {tuple(inputs_embeds.shape)}"
            )
        b, t, _ = inputs_embeds.shape
        s = t if cache is None else cache.max_length
        if self.max_positions is not None and s > self.max_positions:
            raise ValueError(
                f"sequence/cache length {s} exceeds max_position_embeddings={self.max_positions}"
            )
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if cache is not None:
            want = (cfg.num_layers, b, cfg.num_kv_heads, cfg.head_dim)
            got = (cache.num_layers, cache.batch, cache.num_kv_heads, cache.head_dim)
            if got != want:
                raise ValueError(
                    f"cache (layers, rows, kv heads, head dim) must be {want}, got {got}"
                )
            start = static_int(index)
            if start is not None and start + t > s:
                raise ValueError(f"cache overflow: index {start} + {t} tokens > length {s}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), jnp.int32)
        if tuple(attention_mask.shape) != (b, s):
            what = "the sequence" if cache is None else "every cache slot"
            raise ValueError(
                f"attention_mask must have shape (B, S) = {(b, s)} covering {what}, got "
                f"{tuple(attention_mask.shape)}"
            )
        if positions is not None and tuple(positions.shape) != (b, t):
            raise ValueError(
                f"positions must have shape (B, T) = {(b, t)}, got {tuple(positions.shape)}"
            )
        return DecoderInputs(b, t, s, attention_mask, index)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Word embeddings only: int[B, T] -> float[B, T, E] (E = ``config.input_embed_dim``).

        Concrete ids are checked against the vocabulary (``check_token_ids``) before the cast
        to int32, so a large int64 id cannot wrap around into the vocabulary.
        """
        check_token_ids(input_ids, self.config.vocab_size)
        return self.embed_tokens(jnp.asarray(input_ids, jnp.int32))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float[B, T, E] -> float[B, T, V] in the compute dtype (no bias, as in HF)."""
        if self.lm_head is None:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Exactly one of ``input_ids`` (int[B, T]) / ``inputs_embeds`` (float[B, T, E]).

        Returns (logits float[B, T, V], updated cache or None).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        hidden, cache = self.hidden_states(
            inputs_embeds, attention_mask, positions=positions, cache=cache
        )
        return self.logits(hidden), cache
