"""Next-token score processing with Hugging Face's semantics (``generation/logits_process.py``).

Order as in ``GenerationMixin._get_logits_processor``: repetition penalty, min-new-tokens (EOS
masked), then, only when sampling, temperature, top-k and top-p. Everything is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vpgtrans_jax.generation import topk
from vpgtrans_jax.generation.config import GenerationConfig

NEG_INF = -jnp.inf


def token_presence(ids: jax.Array, valid: jax.Array, vocab_size: int) -> jax.Array:
    """bool[N, V]: which ids occur among the valid entries of int[N, T] ``ids``."""
    n = ids.shape[0]
    safe = jnp.where(valid.astype(bool), ids, vocab_size)  # out of range -> dropped
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], ids.shape)
    return jnp.zeros((n, vocab_size), bool).at[rows, safe].set(True, mode="drop")


def repetition_penalty(scores: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """CTRL penalty: seen tokens' scores are divided by ``penalty`` (multiplied when < 0)."""
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalised, scores)


def forbid_eos(scores: jax.Array, eos_ids: tuple[int, ...], forbid: jax.Array) -> jax.Array:
    """Sets the EOS scores to -inf where the scalar/bool[N] ``forbid`` holds."""
    is_eos = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(eos_ids)].set(True)
    return jnp.where(jnp.asarray(forbid)[..., None] & is_eos, NEG_INF, scores)


def top_k_filter(scores: jax.Array, top_k: int, min_keep: int = 1) -> jax.Array:
    """Keeps scores >= the k-th largest (ties kept, as HF), k = max(top_k, min_keep)."""
    k = min(max(top_k, min_keep), scores.shape[-1])
    kth = topk.top_k(scores, k)[0][..., -1:]
    return jnp.where(scores < kth, NEG_INF, scores)


def top_p_filter(scores: jax.Array, top_p: float, min_keep: int = 1) -> jax.Array:
    """Nucleus filter: drops the low-probability tail whose mass is <= 1 - top_p."""
    order = jnp.argsort(scores, axis=-1)  # ascending, as HF sorts
    sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
    remove_sorted = cum <= 1.0 - top_p
    remove_sorted = remove_sorted.at[..., -min_keep:].set(False)
    rows = jnp.arange(scores.shape[0])[:, None]
    remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
    return jnp.where(remove, NEG_INF, scores)


def process(
    scores: jax.Array,
    cfg: GenerationConfig,
    step: jax.Array,
    seen: jax.Array | None,
) -> jax.Array:
    """Applies every configured processor to float32[N, V] scores for new token number ``step``.

    Args:
      scores: logits (greedy / sampling) or log-probabilities (beam search), float32[N, V].
      step: int32 scalar, tokens generated so far (0 for the first new token).
      seen: bool[N, V] tokens in each row's prompt + prefix (needed with a repetition penalty).
    """
    if cfg.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, seen, cfg.repetition_penalty)
    if cfg.min_new_tokens > 0:
        scores = forbid_eos(scores, cfg.eos_token_ids, step < cfg.min_new_tokens)
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k != 0:
            scores = top_k_filter(scores, cfg.top_k, cfg.min_tokens_to_keep)
        if cfg.top_p < 1.0:
            scores = top_p_filter(scores, cfg.top_p, cfg.min_tokens_to_keep)
    return scores
