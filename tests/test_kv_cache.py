"""KV cache: stacked and per-layer forms agree; row selection; the cache attention layout."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vpgtrans_jax.models.llama import LlamaConfig, LlamaForCausalLM
from vpgtrans_jax.models.opt import OPTConfig, OPTForCausalLM
from vpgtrans_jax.nn import attention, stack
from vpgtrans_jax.nn.kv_cache import KVCache, update_layer_cache

L, N, K, S, D = 3, 4, 2, 6, 8


def _random_cache(seed: int = 0) -> KVCache:
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.standard_normal((L, N, K, S, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((L, N, K, S, D)), jnp.float32)
    return KVCache(k=k, v=v, index=jnp.int32(2))


def test_forms_round_trip_and_describe_the_same_shape():
    cache = _random_cache()
    layered = cache.per_layer()
    assert cache.stacked and not layered.stacked
    assert len(layered.k) == L and layered.k[1].shape == (N, K, S, D)
    for c in (cache, layered):
        assert (c.num_layers, c.batch, c.num_kv_heads, c.max_length, c.head_dim) == (
            L,
            N,
            K,
            S,
            D,
        )
    back = layered.stack()
    np.testing.assert_array_equal(back.k, cache.k)
    np.testing.assert_array_equal(back.v, cache.v)


@pytest.mark.parametrize("per_layer", [False, True])
def test_select_and_repeat_rows(per_layer):
    cache = _random_cache(1)
    c = cache.per_layer() if per_layer else cache
    rows = jnp.asarray([2, 2, 0, 3])
    picked = c.select_rows(rows).stack()
    np.testing.assert_array_equal(picked.k, np.asarray(cache.k)[:, [2, 2, 0, 3]])
    np.testing.assert_array_equal(picked.v, np.asarray(cache.v)[:, [2, 2, 0, 3]])
    rep = c.repeat_rows(3).stack()
    np.testing.assert_array_equal(rep.k, np.repeat(np.asarray(cache.k), 3, axis=1))
    assert int(rep.index) == 2


def test_update_layer_cache_writes_heads_major_at_index():
    rng = np.random.default_rng(2)
    k_cache = jnp.zeros((N, K, S, D))
    k_new = jnp.asarray(rng.standard_normal((N, 2, K, D)), jnp.float32)  # [N, T, K, D]
    k_out, v_out = update_layer_cache(k_cache, k_cache, k_new, 2 * k_new, jnp.int32(3))
    want = np.zeros((N, K, S, D), np.float32)
    want[:, :, 3:5] = np.swapaxes(np.asarray(k_new), 1, 2)
    np.testing.assert_array_equal(k_out, want)
    np.testing.assert_array_equal(v_out, 2 * want)


def test_cache_layout_attention_equals_sequence_layout():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((N, 2, 4, D)), jnp.float32)  # 4 heads over 2 kv heads
    k = jnp.asarray(rng.standard_normal((N, S, K, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((N, S, K, D)), jnp.float32)
    mask = attention.causal_padding_mask(jnp.ones((N, S)), 3, 2)
    kw = dict(scale=D**-0.5, dtype=jnp.float32)
    seq = attention.dot_product_attention(q, k, v, mask, **kw)
    cached = attention.dot_product_attention(
        q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, kv_layout="bksd", **kw
    )
    np.testing.assert_allclose(cached, seq, atol=1e-6)
    with pytest.raises(ValueError, match="kv_layout"):
        attention.dot_product_attention(q, k, v, mask, kv_layout="bsdk", **kw)


def _opt(scan: bool) -> OPTForCausalLM:
    cfg = OPTConfig(
        vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, ffn_dim=40, scan_layers=scan
    )
    return OPTForCausalLM(cfg, rngs=nnx.Rngs(0))


def _llama(scan: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=40,
        scan_layers=scan,
    )
    return LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make", [_opt, _llama], ids=["opt", "llama"])
def test_per_layer_cache_decodes_like_stacked(make):
    """Prefill then two single-token steps: same logits and cache with either form."""
    model = make(False)
    ids = np.random.default_rng(4).integers(0, 50, size=(2, 7))
    mask = jnp.ones((2, 9), jnp.int32)

    def run(cache):
        out = []
        logits, cache = model(jnp.asarray(ids[:, :5]), mask, cache=cache)
        out.append(logits[:, -1])
        for t in (5, 6):
            logits, cache = model(jnp.asarray(ids[:, t : t + 1]), mask, cache=cache)
            out.append(logits[:, -1])
        return np.stack(out), cache

    stacked_logits, stacked = run(model.init_cache(2, 9))
    layered_logits, layered = run(model.init_cache(2, 9).per_layer())
    assert not layered.stacked and int(layered.index) == 7
    np.testing.assert_array_equal(layered_logits, stacked_logits)
    np.testing.assert_array_equal(layered.stack().k, stacked.k)


def test_scanned_model_rejects_a_per_layer_cache():
    model = _opt(True)
    cache = model.init_cache(2, 9).per_layer()
    with pytest.raises(ValueError, match="scan"):
        model(jnp.ones((2, 3), jnp.int32), jnp.ones((2, 9), jnp.int32), cache=cache)


def test_apply_layers_list_inputs_need_one_per_layer():
    layers = stack.build_layers(
        lambda rngs: nnx.Linear(4, 4, rngs=rngs), 2, nnx.Rngs(0), scan=False
    )

    def body(block, carry, x):
        return block(carry) + x, x * 2

    x = jnp.ones((1, 4))
    carry, ys = stack.apply_layers(layers, body, x, [x, 2 * x], scan=False)
    assert isinstance(ys, list) and len(ys) == 2
    np.testing.assert_array_equal(ys[1], 4 * x)
    with pytest.raises(ValueError, match="one entry per layer"):
        stack.apply_layers(layers, body, x, [x], scan=False)
