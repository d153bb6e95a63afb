"""What every LLM decoder (OPT, LLaMA family) shares: the public causal-LM interface.

A subclass defines ``embed_tokens`` (``layers.Embed``), ``lm_head`` (``layers.Dense`` or None
when tied to the token embedding) and ``hidden_states``; this base turns those into ``embed``,
``logits`` and ``__call__``. The VL model and generation rely only on this interface.
"""

from __future__ import annotations

import jax
from flax import nnx

from vpgtrans_jax.kv_cache import KVCache


class CausalLM(nnx.Module):
    """Base of the decoders; see the module docstring for what subclasses provide."""

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Word embeddings only: int[B, T] -> float[B, T, E] (E = ``config.input_embed_dim``)."""
        return self.embed_tokens(input_ids)

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
