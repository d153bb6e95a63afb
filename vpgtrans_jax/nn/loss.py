"""Token cross-entropy: from full logits, or chunk by chunk from the hidden states.

The chunked form never holds the whole float32 ``[B, T, V]`` logits: a scan over sequence chunks
computes each chunk's logits, its log-softmax and summed NLL, and ``jax.checkpoint`` makes the
backward pass recompute a chunk's logits instead of storing them. Only one chunk's
``[B, chunk, V]`` logits exist at a time, forward or backward. The sum is the same as the full
form's up to float32 rounding (tested, with the gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vpgtrans_jax import sharding

IGNORE_INDEX = -100


def _nll_sum(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32 summed NLL, int32 number of labelled tokens) of float[..., V] vs int[...]."""
    logits = sharding.constrain(logits, sharding.LOGITS)
    valid = labels != IGNORE_INDEX
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, nll, 0.0).sum(), valid.sum().astype(jnp.int32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of float[B, T, V] logits vs int[B, T] labels (-100 ignored), in fp32."""
    total, n = _nll_sum(logits, labels)
    return total / jnp.maximum(n, 1), {"num_tokens": n, "nll_sum": total}


def chunked_cross_entropy(
    hidden: jax.Array,
    labels: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    chunk: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``cross_entropy(logits_fn(hidden), labels)`` computed ``chunk`` positions at a time.

    Args:
      hidden: float[B, T, E], the hidden state that predicts each label.
      labels: int[B, T]; -100 is ignored.
      logits_fn: float[B, c, E] -> float[B, c, V] (the LM head).
      chunk: sequence positions per chunk (>= 1); T is padded up to a multiple of it.

    Returns:
      (scalar mean loss, {"num_tokens": int32 scalar, "nll_sum": float32 scalar}).
    """
    if chunk < 1:
        raise ValueError(f"loss chunk must be >= 1 sequence positions, got {chunk}")
    b, t, e = hidden.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels = jnp.pad(labels, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    # Chunks along the sequence keep the batch axis (and its sharding) in every chunk.
    hs = hidden.reshape(b, n, chunk, e).swapaxes(0, 1)
    ls = labels.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h: jax.Array, lab: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _nll_sum(logits_fn(h), lab)

    def body(carry, xs):
        total, count = carry
        s, c = one(*xs)
        return (total + s, count + c), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (total, count), _ = jax.lax.scan(body, init, (hs, ls))
    return total / jnp.maximum(count, 1), {"num_tokens": count, "nll_sum": total}
