"""Next-token choice with settings that differ per row (a server batches unrelated requests).

``GenerationConfig`` fixes temperature and top-p for the whole batch (they are static in the
compiled program); here they are arrays, so one compiled step serves any mix of greedy and
sampled rows. The processing is Hugging Face's sampling order, as in ``processors.process``:
temperature, then the nucleus (top-p) filter; a row with temperature 0 takes the arg-max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vpgtrans_jax.generation import processors


def row_keys(seeds: jax.Array, streams: jax.Array) -> jax.Array:
    """Typed PRNG keys [N]: ``fold_in(key(seeds[n]), streams[n])`` (uint32[N] seeds, int32[N]
    stream numbers: the choices of one request share a seed and differ by stream)."""
    return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(seeds, streams)


def choose_rows(
    logits: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    keys: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """int32[N]: new token number ``step`` of each row.

    Args:
      logits: float32[N, V] next-token logits.
      temperature: float32[N]; 0 means greedy (the first maximum, as ``torch.argmax``).
      top_p: float32[N] in (0, 1]; 1 keeps the whole distribution.
      keys: typed PRNG keys [N] (``row_keys``); step ``i`` draws with ``fold_in(key, i)``.
      step: int32 scalar, tokens generated so far.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(_) -> jax.Array:
        scores = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        scores = jnp.where(
            (top_p < 1.0)[:, None], processors.top_p_filter(scores, top_p[:, None]), scores
        )
        draw = lambda k, s: jax.random.categorical(jax.random.fold_in(k, step), s)
        return jnp.where(temperature > 0, jax.vmap(draw)(keys, scores), greedy).astype(jnp.int32)

    # An all-greedy batch (the common case) skips the sort of the nucleus filter.
    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda _: greedy, None)
