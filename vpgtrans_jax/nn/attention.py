"""Attention math and masks shared by the ViT, Q-Former and LLM decoders (cache: ``kv_cache``).

``dot_product_attention`` runs one of several implementations, chosen per tower by its config's
``attention_impl``:

- ``einsum``: two einsums and a float32 softmax, written out here (the reference path);
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``;
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, the fused cuDNN kernel
  (GPU, bf16/fp16, head dim a multiple of 8 up to 128);
- ``pallas``: the Pallas TPU flash-attention kernel that JAX ships (TPU only);
- ``auto``: ``cudnn`` on GPU, ``pallas`` on TPU, ``einsum`` elsewhere.

A kernel that cannot serve a call (platform, dtype, shape, layout) falls back to ``xla``, and the
reason is logged once per (kernel, reason). Every implementation takes the same boolean masks and
grouped-query layouts, so the choice changes speed, never what is computed.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

_NEG = float(jnp.finfo(jnp.float32).min)
IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn", "pallas")
_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_PALLAS_BLOCK = 128  # the Pallas TPU kernel tiles both sequence axes by this much
_reported: set[tuple[str, str]] = set()


def check_implementation(name: str, where: str = "attention_impl") -> str:
    """Returns ``name`` if it is one of ``IMPLEMENTATIONS``; raises ValueError naming ``where``."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{where}={name!r} is not an attention implementation; expected one of "
                         f"{list(IMPLEMENTATIONS)}")  # fmt: skip
    return name


def _fall_back(wanted: str, reason: str) -> str:
    """Logs (once per kernel and reason) why ``wanted`` cannot run; returns ``"xla"``."""
    if (wanted, reason) not in _reported:
        _reported.add((wanted, reason))
        log.warning("attention_impl=%r cannot serve this call (%s); using 'xla'", wanted, reason)
    return "xla"


def resolve_implementation(
    name: str,
    *,
    dtype: jnp.dtype,
    head_dim: int,
    q_len: int,
    kv_len: int,
    kv_layout: str,
    platform: str | None = None,
) -> str:
    """The implementation that will run a call: ``name``, or its fallback for this call.

    Args:
      name: one of ``IMPLEMENTATIONS``.
      dtype: the compute dtype; head_dim, q_len, kv_len: D, T and S.
      kv_layout: ``"bskd"`` or ``"bksd"`` (the cache layout, decoding).
      platform: ``jax.default_backend()`` unless given (tests pass one).
    """
    check_implementation(name)
    platform = platform or jax.default_backend()
    if name == "auto":
        name = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "pallas"}.get(platform, "einsum")
        if name == "einsum":
            return name
    if name in ("einsum", "xla"):
        return name
    if platform not in (("gpu", "cuda", "rocm") if name == "cudnn" else ("tpu",)):
        return _fall_back(name, f"platform {platform!r}")
    if jnp.dtype(dtype) not in _FUSED_DTYPES:
        return _fall_back(name, f"dtype {jnp.dtype(dtype).name}, the kernel needs bf16/fp16")
    if kv_layout != "bskd" or q_len == 1:
        return _fall_back(name, "decoding over the KV cache layout")
    if name == "cudnn" and (head_dim % 8 or head_dim > 128):
        return _fall_back(name, f"head dim {head_dim}, cuDNN needs a multiple of 8 <= 128")
    if name == "pallas" and (q_len % _PALLAS_BLOCK or kv_len % _PALLAS_BLOCK):
        return _fall_back(name, f"sequence lengths {q_len}x{kv_len}, not multiples of 128")
    return name


def _einsum_attention(q, k, v, mask, scale, dtype, kv_layout):
    """Today's reference path: float[N, T, H, D] (see ``dot_product_attention``)."""
    n, t, h, d = q.shape
    kv_heads = k.shape[kv_layout.index("k")]
    groups = h // kv_heads
    q = q.astype(dtype).reshape(n, t, kv_heads, groups, d)
    scores = jnp.einsum(f"btkgd,{kv_layout}->bkgts", q, k.astype(dtype)).astype(jnp.float32)
    scores = scores * scale
    if mask is not None:
        # mask: [N, 1, T, S] -> broadcast over (K, G).
        scores = jnp.where(mask[:, :, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum(f"bkgts,{kv_layout}->btkgd", probs, v.astype(dtype))
    return out.reshape(n, t, h, d)


def _pallas_attention(q, k, v, mask, scale, dtype):
    """The Pallas TPU flash kernel: heads-major layout, GQA by repeating k/v, the boolean mask
    as an additive bias (the kernel has no per-row key mask of its own)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa  # lazy: TPU-only kernel

    h, kv_heads = q.shape[2], k.shape[2]
    heads_major = lambda x: jnp.swapaxes(x.astype(dtype), 1, 2)  # [N, S, K, D] -> [N, K, S, D]
    qh = heads_major(q)
    kh = jnp.repeat(heads_major(k), h // kv_heads, axis=1)
    vh = jnp.repeat(heads_major(v), h // kv_heads, axis=1)
    bias = None
    if mask is not None:
        full = jnp.broadcast_to(mask, (q.shape[0], h, q.shape[1], k.shape[1]))
        bias = jnp.where(full, 0.0, 0.5 * _NEG).astype(jnp.float32)  # no -inf overflow
    out = fa.flash_attention(qh, kh, vh, bias, sm_scale=scale)
    return jnp.swapaxes(out, 1, 2)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    scale: float,
    dtype: jnp.dtype | type,
    kv_layout: str = "bskd",
    implementation: str = "einsum",
) -> jax.Array:
    """Multi-head attention with grouped-query support.

    Args:
      q: float[N, T, H, D] queries.
      k, v: keys and values, ``H`` a multiple of their ``K`` heads (GQA/MQA): float[N, S, K, D]
        for ``kv_layout="bskd"`` (projections of a sequence) or float[N, K, S, D] for ``"bksd"``
        (the KV cache layout).
      mask: bool[N or 1, 1, T, S]; True where a query may attend to a key. None means all.
      scale: multiplier applied to the scores (usually ``D ** -0.5``).
      dtype: compute dtype of the two matmuls; the softmax always runs in float32.
      implementation: one of ``IMPLEMENTATIONS`` (module docstring).

    Returns:
      float[N, T, H, D] in ``dtype``.
    """
    if kv_layout not in ("bskd", "bksd"):
        raise ValueError(f"kv_layout must be 'bskd' or 'bksd', got {kv_layout!r}")
    n, t, h, d = q.shape
    kv_heads = k.shape[kv_layout.index("k")]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    dtype = jnp.dtype(dtype)
    impl = resolve_implementation(
        implementation,
        dtype=dtype,
        head_dim=d,
        q_len=t,
        kv_len=k.shape[kv_layout.index("s")],
        kv_layout=kv_layout,
    )
    if impl == "einsum":
        return _einsum_attention(q, k, v, mask, scale, dtype, kv_layout)
    if kv_layout == "bksd":
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    if impl == "pallas":
        return _pallas_attention(q, k, v, mask, scale, dtype).astype(dtype)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (n, 1, t, k.shape[1])).astype(bool)
    out = jax.nn.dot_product_attention(
        q.astype(dtype),
        k.astype(dtype),
        v.astype(dtype),
        mask=mask,
        scale=scale,
        implementation=impl,
    )
    return out.astype(dtype)


def padding_mask(key_valid: jax.Array) -> jax.Array:
    """bool/int[B, S] (1 = real token) -> bool[B, 1, 1, S] for bidirectional attention."""
    return key_valid.astype(bool)[:, None, None, :]


def causal_padding_mask(
    key_valid: jax.Array, query_offset: jax.Array | int, num_queries: int
) -> jax.Array:
    """Causal mask combined with key padding.

    Query ``t`` sits at absolute slot ``query_offset + t`` and may attend to key slot ``s`` when
    ``s <= query_offset + t`` and ``key_valid[b, s]``. Without a cache ``query_offset`` is 0 and
    ``S == T``; with a cache ``S`` is the cache length.

    Args:
      key_valid: bool/int[B, S].
      query_offset: int scalar, the cache write index.
      num_queries: T.

    Returns:
      bool[B, 1, T, S].
    """
    s = key_valid.shape[1]
    q_slots = query_offset + jnp.arange(num_queries)
    causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
    return causal[None, None, :, :] & key_valid.astype(bool)[:, None, None, :]
