"""Exact top-k over long rows, faster than one ``lax.top_k`` pass on CPU.

Beam search picks ``2 * num_beams`` candidates out of ``num_beams * vocab`` scores per prompt
(40k for the benchmark model, 160k for LLaMA with 5 beams). XLA's CPU TopK costs about 1.5 ns per
element there; this two-stage version costs about a fifth of that (14x less at 160k) and returns
exactly the same values and indices, ties included:

1. split each row into chunks of ``chunk`` elements and take each chunk's maximum;
2. keep the ``k`` chunks with the largest maxima (ties: lower chunk first, as ``lax.top_k``);
3. run ``lax.top_k`` over those ``k * chunk`` candidates, gathered in ascending chunk order so
   that equal values still come out lowest index first.

Why nothing is lost: say element ``x`` is among the top ``k`` (value descending, index
ascending) but its chunk ``C`` was not kept. Then ``k`` kept chunks each rank before ``C``: their
maximum is larger than ``C``'s, or equal with a lower chunk index. Each such maximum ``y``
satisfies ``y >= max(C) >= x``, and when ``y == x`` its index is lower (its chunk lies wholly
before ``C``), so ``k`` distinct elements rank before ``x``: a contradiction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this row length a single lax.top_k is as fast (measured on CPU).
_MIN_LENGTH = 4096


def top_k(x: jax.Array, k: int, chunk: int = 128) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k(x, k)`` over the last axis of float[..., N], computed in two stages.

    Returns (values float[..., k], indices int32[..., k]), best first, identical to
    ``lax.top_k`` (including the order of ties) for rows without NaN. Short rows go straight to
    ``lax.top_k``.
    """
    n = x.shape[-1]
    if k < 1 or k > n:
        raise ValueError(f"top_k needs 1 <= k <= row length {n}, got k={k}")
    if n < _MIN_LENGTH or k * chunk >= n:
        return jax.lax.top_k(x, k)
    lead = x.shape[:-1]
    pad = (-n) % chunk
    if pad:  # -inf padding sits after every real element, so it never wins a tie
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, pad)], constant_values=-jnp.inf)
    chunks = x.reshape(*lead, -1, chunk)
    _, kept = jax.lax.top_k(jnp.max(chunks, axis=-1), k)
    kept = jnp.sort(kept, axis=-1)
    cand = jnp.take_along_axis(chunks, kept[..., None], axis=-2).reshape(*lead, k * chunk)
    values, pos = jax.lax.top_k(cand, k)
    index = jnp.take_along_axis(kept, pos // chunk, axis=-1) * chunk + pos % chunk
    return values, index.astype(jnp.int32)
