"""Sampling: processors equal HF's logits processors; samples follow the filtered distribution;
model-level sampling is deterministic per seed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax.generation import GenerationConfig, generate, processors
from vpgtrans_jax.generation.greedy import greedy_or_sample


def _scores(seed: int, n: int = 3, v: int = 40) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, v)) * 3).astype(np.float32)


def _same_filter(ours, ref):
    ours, ref = np.asarray(ours), ref.numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    keep = ~np.isneginf(ref)
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 45), min_keep=st.integers(1, 3))
def test_top_k_matches_hf(seed, k, min_keep):
    s = _scores(seed)
    ref = hf.TopKLogitsWarper(k, min_tokens_to_keep=min_keep)(None, torch.from_numpy(s))
    _same_filter(processors.top_k_filter(jnp.asarray(s), k, min_keep), ref)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), p=st.floats(0.01, 0.99), min_keep=st.integers(1, 3))
def test_top_p_matches_hf(seed, p, min_keep):
    s = _scores(seed)
    ref = hf.TopPLogitsWarper(p, min_tokens_to_keep=min_keep)(None, torch.from_numpy(s))
    _same_filter(processors.top_p_filter(jnp.asarray(s), p, min_keep), ref)


def test_process_chain_matches_hf():
    """Repetition penalty, min-new-tokens, temperature, top-k, top-p, in HF's order."""
    s = _scores(7)
    prompt = np.array([[5, 6, 7], [1, 2, 2], [39, 0, 0]])
    valid = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    cfg = GenerationConfig(
        max_new_tokens=5,
        eos_token_ids=(3, 9),
        pad_token_id=0,
        min_new_tokens=2,
        do_sample=True,
        temperature=0.7,
        top_k=20,
        top_p=0.8,
        repetition_penalty=1.4,
    )
    seen = processors.token_presence(jnp.asarray(prompt), jnp.asarray(valid), s.shape[1])
    ours = processors.process(jnp.asarray(s), cfg, jnp.int32(1), seen)
    x = torch.from_numpy(s)
    ids = torch.from_numpy(np.where(valid == 1, prompt, prompt[:, :1]))  # pads repeat a real id
    chain = [
        hf.RepetitionPenaltyLogitsProcessor(1.4),
        hf.MinNewTokensLengthLogitsProcessor(2, 2, [3, 9]),  # 3 ids seen, prompt length 2
        hf.TemperatureLogitsWarper(0.7),
        hf.TopKLogitsWarper(20),
        hf.TopPLogitsWarper(0.8),
    ]
    for proc in chain:
        x = proc(ids, x)
    _same_filter(ours, x)
    assert np.isneginf(np.asarray(ours)[:, [3, 9]]).all()


def test_samples_follow_filtered_distribution():
    """Constant logits: every sample lies in the top-k and frequencies match softmax(top-k / T)."""
    v, n, steps = 12, 2000, 3
    logits = jnp.asarray(np.linspace(-1.0, 1.5, v, dtype=np.float32))[None].repeat(n, 0)
    cfg = GenerationConfig(
        max_new_tokens=steps,
        eos_token_ids=(0,),
        pad_token_id=0,
        do_sample=True,
        top_k=3,
        temperature=0.8,
    )
    step_fn = lambda tok, cache, i: (logits, cache)
    toks = np.asarray(
        jax.jit(lambda k: greedy_or_sample(logits, 0, step_fn, cfg, k))(jax.random.key(3))
    )
    assert set(np.unique(toks)) <= {v - 1, v - 2, v - 3}
    top = np.asarray(logits[0, -3:]) / 0.8
    want = np.exp(top - top.max()) / np.exp(top - top.max()).sum()
    freq = np.array([(toks == t).mean() for t in (v - 3, v - 2, v - 1)])
    np.testing.assert_allclose(freq, want, atol=0.03)
    # Each step draws fresh randomness: columns are not copies of each other.
    assert (toks[:, 0] != toks[:, 1]).any()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling_opt")
    F.tiny_blip2("opt").save_pretrained(path)
    pixels, ids, _ = F.inputs(batch=2, text_len=4, seed=4)
    return vpgtrans_jax.load(str(path)), (pixels, ids, np.ones_like(ids))


def test_sampling_is_deterministic_per_seed(model):
    m, (pixels, ids, mask) = model
    kw = dict(
        max_new_tokens=6,
        eos_token_id=0,
        pad_token_id=1,
        do_sample=True,
        temperature=3.0,
        num_return_sequences=2,
    )
    a = np.asarray(generate(m, pixels, ids, mask, seed=11, **kw))
    b = np.asarray(generate(m, pixels, ids, mask, seed=11, **kw))
    c = np.asarray(generate(m, pixels, ids, mask, seed=12, **kw))
    assert a.shape == (4, 6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a[0] != a[1]).any()  # the two samples of one prompt are independent


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    m, (pixels, ids, mask) = model
    kw = dict(max_new_tokens=6, eos_token_id=0, pad_token_id=1)
    greedy = np.asarray(generate(m, pixels, ids, mask, **kw))
    for extra in (dict(top_k=1), dict(top_p=1e-6)):
        sampled = generate(
            m, pixels, ids, mask, do_sample=True, temperature=5.0, seed=1, **extra, **kw
        )
        np.testing.assert_array_equal(np.asarray(sampled), greedy)


def test_beam_sampling_runs_deterministically(model):
    m, (pixels, ids, mask) = model
    kw = dict(
        max_new_tokens=5,
        eos_token_id=[0, 7],
        pad_token_id=1,
        num_beams=3,
        do_sample=True,
        top_k=10,
        num_return_sequences=2,
    )
    a = np.asarray(generate(m, pixels, ids, mask, seed=5, **kw))
    b = np.asarray(generate(m, pixels, ids, mask, seed=5, **kw))
    assert a.shape == (4, 5) and a.min() >= 0 and a.max() < 96
    np.testing.assert_array_equal(a, b)


def test_config_errors():
    with pytest.raises(ValueError, match="top_p=1.5"):
        GenerationConfig(max_new_tokens=2, eos_token_ids=(0,), pad_token_id=0, top_p=1.5)
    with pytest.raises(ValueError, match="early_stopping='sometimes'"):
        GenerationConfig(
            max_new_tokens=2, eos_token_ids=(0,), pad_token_id=0, early_stopping="sometimes"
        )
    with pytest.raises(ValueError, match="num_return_sequences=6 must be <= num_beams=5"):
        GenerationConfig(
            max_new_tokens=2,
            eos_token_ids=(0,),
            pad_token_id=0,
            num_beams=5,
            num_return_sequences=6,
        )
    with pytest.raises(ValueError, match="eos_token_id: expected at least one"):
        GenerationConfig(max_new_tokens=2, eos_token_ids=(), pad_token_id=0)
