"""Greedy decoding and multinomial sampling (HF ``_sample``) in one ``lax.while_loop``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vpgtrans_jax.generation import processors
from vpgtrans_jax.generation.config import GenerationConfig

# step_fn(tokens int32[N], cache, i) -> (float32[N, V] logits for the next token, cache); token
# ``tokens`` is new token number ``i`` (0-based) being fed back.
StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


def _seen(prompt_seen: jax.Array | None, tokens: jax.Array, step: jax.Array) -> jax.Array | None:
    if prompt_seen is None:
        return None
    written = jnp.arange(tokens.shape[1])[None, :] < step
    return prompt_seen | processors.token_presence(tokens, written, prompt_seen.shape[1])


def choose(
    logits: jax.Array,
    cfg: GenerationConfig,
    step: jax.Array,
    tokens: jax.Array,
    prompt_seen: jax.Array | None,
    key: jax.Array,
) -> jax.Array:
    """int32[N]: new token number ``step`` of each row (arg-max, or a draw from
    ``fold_in(key, step)`` when sampling), after the configured processors."""
    scores = processors.process(logits, cfg, step, _seen(prompt_seen, tokens, step))
    if cfg.do_sample:
        return jax.random.categorical(jax.random.fold_in(key, step), scores, axis=-1).astype(
            jnp.int32
        )
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)  # first maximum, as torch.argmax


def greedy_or_sample(
    first_logits: jax.Array,
    cache: Any,
    step_fn: StepFn,
    cfg: GenerationConfig,
    key: jax.Array,
    prompt_seen: jax.Array | None = None,
) -> jax.Array:
    """Decodes every row independently.

    Args:
      first_logits: float32[N, V] logits after the prompt.
      cache: what ``step_fn`` threads through (the LLM's KV cache).
      key: PRNG key (used only with ``do_sample``; step ``i`` uses ``fold_in(key, i)``).
      prompt_seen: bool[N, V] prompt tokens, for the repetition penalty.

    Returns:
      int32[N, max_new_tokens]; after a row's EOS (and after an early stop) ``pad_token_id``.
    """
    n = first_logits.shape[0]
    m = cfg.max_new_tokens
    eos = jnp.asarray(cfg.eos_token_ids, jnp.int32)
    tokens = jnp.full((n, m), cfg.pad_token_id, jnp.int32)

    tok = choose(first_logits, cfg, jnp.int32(0), tokens, prompt_seen, key)
    tokens = tokens.at[:, 0].set(tok)
    finished = jnp.isin(tok, eos)

    def cond(state):
        i, _, _, finished = state
        return (i < m) & ~jnp.all(finished)

    def body(state):
        i, tokens, cache, finished = state
        logits, cache = step_fn(tokens[:, i - 1], cache, i - 1)
        tok = choose(logits, cfg, i, tokens, prompt_seen, key)
        tok = jnp.where(finished, cfg.pad_token_id, tok)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], i, axis=1)
        return i + 1, tokens, cache, finished | jnp.isin(tok, eos)

    _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), tokens, cache, finished))
    return tokens
