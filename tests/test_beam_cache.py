"""Beam-search KV cache: attending along beam paths equals attending over a reordered cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax import sharding
from vpgtrans_jax.generation import decode, generate
from vpgtrans_jax.generation.config import GenerationConfig
from vpgtrans_jax.nn.beam_cache import BeamKVCache, BeamLayerKV
from vpgtrans_jax.nn.kv_cache import KVCache, cached_attention

B, NB, H, K, P, T, D = 2, 3, 4, 2, 5, 6, 8  # GQA: 4 query heads over 2 kv heads
N = B * NB


def _prefilled(rng: np.random.Generator, layers: int = 2) -> KVCache:
    """A plain stacked cache of B prompts: P prompt slots filled, T free."""
    shape = (layers, B, K, P + T, D)
    k = np.zeros(shape, np.float32)
    v = np.zeros(shape, np.float32)
    k[..., :P, :] = rng.standard_normal(shape[:3] + (P, D))
    v[..., :P, :] = rng.standard_normal(shape[:3] + (P, D))
    return KVCache(k=jnp.asarray(k), v=jnp.asarray(v), index=jnp.int32(P))


def _key_valid() -> np.ndarray:
    """Left-padded prompts (row b has b padding slots), repeated per beam; new slots valid."""
    valid = np.ones((B, P + T), np.int32)
    for b in range(B):
        valid[b, :b] = 0
    return np.repeat(valid, NB, axis=0)


def test_attention_along_beam_paths_equals_a_reordered_cache():
    rng = np.random.default_rng(0)
    prefilled = _prefilled(rng, layers=1)
    plain = prefilled.repeat_rows(NB).per_layer()
    beam = BeamKVCache.from_prefill(prefilled, NB, P).per_layer()
    key_valid = jnp.asarray(_key_valid())
    kw = dict(scale=D**-0.5, dtype=jnp.float32)
    for step in range(T):
        q = jnp.asarray(rng.standard_normal((N, 1, H, D)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((N, 1, K, D)), jnp.float32)
        v = jnp.asarray(rng.standard_normal((N, 1, K, D)), jnp.float32)
        want, plain_kv = cached_attention(
            q, k, v, (plain.k[0], plain.v[0]), plain.index, plain.attention_mask(key_valid, 1), **kw
        )
        got, beam_kv = cached_attention(
            q, k, v, beam.layer_inputs()[0], beam.index, beam.attention_mask(key_valid, 1), **kw
        )
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)
        assert isinstance(beam_kv, BeamLayerKV)
        plain = plain.advance([plain_kv], 1)
        beam = beam.advance([beam_kv], 1)
        # Beams follow random parents within their prompt (as beam search does).
        parents = rng.integers(0, NB, size=(B, NB))
        rows = jnp.asarray((np.arange(B)[:, None] * NB + parents).reshape(N))
        plain, beam = plain.select_rows(rows), beam.select_rows(rows)
        assert int(beam.index) == int(plain.index) == P + step + 1


def test_ancestry_follows_the_selected_rows():
    beam = BeamKVCache.from_prefill(_prefilled(np.random.default_rng(1)), NB, P)
    mask = beam.attention_mask(jnp.asarray(_key_valid()), 1)
    assert mask.mask.shape == (B, NB, P + T * NB) and int(mask.slot) == P
    prompt = np.repeat(_key_valid()[::NB, None, :P], NB, axis=1).astype(bool)
    np.testing.assert_array_equal(mask.mask[:, :, :P], prompt)
    for n in range(NB):  # step 0: each beam sees only the entry it writes now
        assert (np.flatnonzero(mask.mask[0, n, P:]) == [n]).all()
    beam = beam.advance(beam.layer_inputs(), 1)  # step 0 written: beam n owns its entry
    np.testing.assert_array_equal(beam.ancestry[:, :, 0], np.tile(np.arange(NB), (B, 1)))
    assert (np.asarray(beam.ancestry[:, :, 1:]) == -1).all()
    rows = jnp.asarray([2, 2, 0, 4, 3, 3])  # prompt 0: beams 2, 2, 0; prompt 1: 1, 0, 0
    moved = beam.select_rows(rows)
    np.testing.assert_array_equal(moved.ancestry[:, :, 0], [[2, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(moved.k, beam.k)  # keys and values never move
    # Step 1: beam n sees its own new entry (1, n) and its parent's entry of step 0.
    mask = moved.attention_mask(jnp.asarray(_key_valid()), 1)
    assert int(mask.slot) == P + NB
    gen = np.asarray(mask.mask[:, :, P:])
    for b, parents in enumerate([[2, 2, 0], [1, 0, 0]]):
        for n, parent in enumerate(parents):
            seen = np.flatnonzero(gen[b, n])
            np.testing.assert_array_equal(seen, [0 * NB + parent, 1 * NB + n])


def test_forms_shapes_and_errors():
    beam = BeamKVCache.from_prefill(_prefilled(np.random.default_rng(2), layers=3), NB, P)
    layered = beam.per_layer()
    assert beam.stacked and not layered.stacked
    for c in (beam, layered):
        assert (c.num_layers, c.batch, c.num_kv_heads, c.head_dim) == (3, N, K, D)
        assert (c.prompt_length, c.max_new_tokens, c.max_length) == (P, T, P + T)
    back = layered.stack()
    np.testing.assert_array_equal(back.k, beam.k)
    np.testing.assert_array_equal(back.v, beam.v)
    # Keys are stored d-major, values slot-major; the prompt once per prompt, then T * NB slots.
    assert beam.k.shape == (3, B, K, D, P + T * NB) and beam.v.shape == (3, B, K, P + T * NB, D)
    prefilled = _prefilled(np.random.default_rng(2), layers=3)
    np.testing.assert_array_equal(beam.v[:, :, :, :P], prefilled.v[:, :, :, :P])
    np.testing.assert_array_equal(beam.k[..., :P], np.swapaxes(prefilled.k[:, :, :, :P], 3, 4))
    with pytest.raises(ValueError, match="one token per row"):
        beam.attention_mask(jnp.ones((N, P + T)), 2)
    with pytest.raises(NotImplementedError):
        beam.repeat_rows(2)
    with pytest.raises(ValueError, match="no free slots"):
        BeamKVCache.from_prefill(_prefilled(np.random.default_rng(2)), NB, P + T)


@pytest.mark.parametrize("scan", [False, True])
def test_beam_search_under_a_mesh_matches_unsharded(tmp_path, scan):
    """Generation inside ``sharding.use_mesh`` (cache constraints active) gives the same ids."""
    F.tiny_blip2("llama", seed=1).save_pretrained(tmp_path)
    model = vpgtrans_jax.load(str(tmp_path), scan_layers=scan)
    pixels, ids, _ = F.inputs(batch=4, text_len=5, seed=3)
    kw = dict(max_new_tokens=5, num_beams=3, eos_token_id=0, pad_token_id=1)
    want = np.asarray(generate(model, pixels, ids, **kw))
    cfg = GenerationConfig.make(**kw)
    # A fresh jit of the traced body, so it is traced inside the mesh context.
    fn = jax.jit(decode, static_argnames=("cfg",))
    inputs = (jnp.asarray(pixels), jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape, jnp.int32))
    with sharding.use_mesh(sharding.make_mesh((2, 2, 2))):
        lowered = fn.lower(model, *inputs, jax.random.key(0), cfg=cfg)
        got = np.asarray(fn(model, *inputs, jax.random.key(0), cfg=cfg))
    assert "sharding_constraint" in lowered.as_text()
    np.testing.assert_array_equal(got, want)
