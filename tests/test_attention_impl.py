"""Attention implementations by config: ``xla`` equals the ``einsum`` reference (fp32, 1e-5)
on every tower's masks and layouts; a kernel that cannot serve a call falls back, logged once."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vpgtrans_jax.models.llama import LlamaConfig, LlamaForCausalLM
from vpgtrans_jax.models.opt import OPTConfig, OPTForCausalLM
from vpgtrans_jax.models.qformer import QFormer, QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig, VisionTransformer
from vpgtrans_jax.nn import attention

TOL = dict(atol=1e-5, rtol=1e-5)


def _pair(cls, module, **fields):
    """The same module (same weights) built once per implementation."""
    out = {}
    for impl in ("einsum", "xla"):
        out[impl] = module(cls(**fields, attention_impl=impl), rngs=nnx.Rngs(0))
    return out


def _jit_call(model, *args, **kwargs):
    """``model(*args, **kwargs)`` compiled (far faster than op-by-op for these tests)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, a, kw: nnx.merge(graphdef, st)(*a, **kw))(state, args, kwargs)


def _rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("layout", ["bskd", "bksd"])
def test_function_parity_gqa_causal_padding(layout):
    n, t, s, h, k, d = 3, 5, 7, 6, 2, 8
    q, kk, v = _rand(0, n, t, h, d), _rand(1, n, s, k, d), _rand(2, n, s, k, d)
    valid = jnp.asarray([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    mask = attention.causal_padding_mask(valid, 2, t)  # row 2 has fully masked queries
    if layout == "bksd":
        kk, v = jnp.swapaxes(kk, 1, 2), jnp.swapaxes(v, 1, 2)
    kw = dict(scale=d**-0.5, dtype=jnp.float32, kv_layout=layout)
    want = attention.dot_product_attention(q, kk, v, mask, implementation="einsum", **kw)
    got = attention.dot_product_attention(q, kk, v, mask, implementation="xla", **kw)
    np.testing.assert_allclose(got, want, **TOL)

    def loss(impl, q, kk, v):
        out = attention.dot_product_attention(q, kk, v, mask, implementation=impl, **kw)
        return jnp.sum(out * jnp.cos(out))

    g_want = jax.jit(jax.grad(lambda *a: loss("einsum", *a), argnums=(0, 1, 2)))(q, kk, v)
    g_got = jax.jit(jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2)))(q, kk, v)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, **TOL)


def test_vit_parity():
    m = _pair(VisionConfig, VisionTransformer, image_size=32, patch_size=8, hidden_size=32,
              num_layers=2, num_heads=4, mlp_dim=64)  # fmt: skip
    x = _rand(3, 2, 32, 32, 3)
    np.testing.assert_allclose(_jit_call(m["xla"], x), _jit_call(m["einsum"], x), **TOL)


def test_qformer_cross_attention_parity_with_padding():
    fields = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  encoder_hidden_size=24, cross_attention_frequency=1)  # fmt: skip
    m = _pair(QFormerConfig, QFormer, **fields)
    queries, image = _rand(4, 2, 6, 32), _rand(5, 2, 9, 24)
    enc_mask = jnp.asarray([[1] * 9, [1] * 5 + [0] * 4])
    got = _jit_call(m["xla"], queries, image, enc_mask)
    np.testing.assert_allclose(got, _jit_call(m["einsum"], queries, image, enc_mask), **TOL)


def _opt_fields():
    return dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, ffn_dim=40)


def _llama_fields():
    return dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=40)  # fmt: skip


@pytest.mark.parametrize(
    "cls,module,fields",
    [(OPTConfig, OPTForCausalLM, _opt_fields()), (LlamaConfig, LlamaForCausalLM, _llama_fields())],
    ids=["opt", "llama_gqa"],
)
def test_decoder_parity_padding_and_kv_cache_decode(cls, module, fields):
    m = _pair(cls, module, **fields)
    ids = jnp.asarray(np.random.default_rng(6).integers(0, 50, size=(2, 6)))
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    logits = {impl: _jit_call(mm, ids, mask)[0] for impl, mm in m.items()}
    np.testing.assert_allclose(logits["xla"], logits["einsum"], **TOL)

    # Prefill into a cache, then two single-token steps over it.
    full = jnp.concatenate([mask, jnp.ones((2, 2), mask.dtype)], axis=1)
    pos = jnp.maximum(jnp.cumsum(full, axis=1) - 1, 0)
    steps = {}
    for impl, mm in m.items():
        cache = mm.init_cache(2, 8)
        out, cache = _jit_call(mm, ids, full, positions=pos[:, :6], cache=cache)
        outs = [out[:, -1]]
        for j in range(2):
            tok = jnp.argmax(outs[-1], axis=-1)[:, None]
            out, cache = _jit_call(mm, tok, full, positions=pos[:, 6 + j : 7 + j], cache=cache)
            outs.append(out[:, 0])
        steps[impl] = outs
    for a, b in zip(steps["xla"], steps["einsum"]):
        np.testing.assert_allclose(a, b, **TOL)


def test_resolution_and_logged_fallbacks(caplog):
    kw = dict(dtype=jnp.bfloat16, head_dim=64, q_len=256, kv_len=256, kv_layout="bskd")
    assert attention.resolve_implementation("auto", platform="cpu", **kw) == "einsum"
    assert attention.resolve_implementation("auto", platform="gpu", **kw) == "cudnn"
    assert attention.resolve_implementation("auto", platform="tpu", **kw) == "pallas"
    attention._reported.clear()
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        assert attention.resolve_implementation("cudnn", platform="cpu", **kw) == "xla"
        assert attention.resolve_implementation("cudnn", platform="cpu", **kw) == "xla"
        f32 = {**kw, "dtype": jnp.float32}
        assert attention.resolve_implementation("cudnn", platform="gpu", **f32) == "xla"
        odd = {**kw, "head_dim": 88 * 2}
        assert attention.resolve_implementation("cudnn", platform="gpu", **odd) == "xla"
        decode = {**kw, "q_len": 1, "kv_layout": "bksd"}
        assert attention.resolve_implementation("pallas", platform="tpu", **decode) == "xla"
        short = {**kw, "q_len": 40}
        assert attention.resolve_implementation("pallas", platform="tpu", **short) == "xla"
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 5, reasons  # the repeated CPU fallback is logged once
    assert "platform 'cpu'" in reasons[0] and "float32" in reasons[1] and "176" in reasons[2]
    with pytest.raises(ValueError, match="attention implementation"):
        attention.resolve_implementation("flash", platform="cpu", **kw)
    with pytest.raises(ValueError, match="LlamaConfig.attention_impl"):
        LlamaConfig(**_llama_fields(), attention_impl="flash")


def test_cudnn_request_on_cpu_runs_and_matches():
    """Asking for a GPU kernel on CPU still computes the same attention (through ``xla``)."""
    q, k, v = _rand(8, 2, 4, 4, 8), _rand(9, 2, 4, 4, 8), _rand(10, 2, 4, 4, 8)
    kw = dict(scale=0.3, dtype=jnp.float32)
    got = attention.dot_product_attention(q, k, v, None, implementation="cudnn", **kw)
    want = attention.dot_product_attention(q, k, v, None, implementation="einsum", **kw)
    np.testing.assert_allclose(got, want, **TOL)
