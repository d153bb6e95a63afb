"""Generation parity: our jitted decoding vs ``Blip2ForConditionalGeneration.generate``.

Tiny random OPT / LLaMA BLIP-2 models are saved with ``save_pretrained`` and loaded with
``vpgtrans_jax.load``. Prompts are left-padded to different lengths. The EOS ids are taken from
the reference's own greedy output, so rows really do end early (and beams really finish).
"""

from __future__ import annotations

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax.generation import generate

PAD = 1
MAX_NEW = 8
# Seeds whose tiny random model produces varied greedy continuations (not one token repeated).
MODEL_SEED = {"opt": 0, "llama": 1}


def _prompts():
    pixels, ids, _ = F.inputs(batch=3, text_len=5, seed=2)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding of different lengths
    mask[2, :1] = 0
    return pixels, np.where(mask == 1, ids, PAD).astype(np.int32), mask


def hf_generate(pt_model, pixels, ids, mask, offsets=None, **kw) -> np.ndarray:
    """New tokens from HF, its image tokens after ``offsets[b]`` columns of the left-padded
    ``ids``; by default after the padding (``[pads, Q image tokens, text]``, HF's layout)."""
    q = pt_model.config.num_query_tokens
    if offsets is None:
        offsets = (mask == 0).sum(axis=1)
    rows_ids = [list(i[:k]) + [F.IMAGE_TOKEN] * q + list(i[k:]) for i, k in zip(ids, offsets)]
    rows_mask = [list(m[:k]) + [1] * q + list(m[k:]) for m, k in zip(mask, offsets)]
    pt_ids = torch.tensor(rows_ids)
    with torch.no_grad():
        out = pt_model.generate(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
            input_ids=pt_ids,
            attention_mask=torch.tensor(rows_mask),
            pad_token_id=PAD,
            **kw,
        )
    return out[:, pt_ids.shape[1] :].numpy()


@pytest.fixture(scope="module", params=["opt", "llama"])
def setup(request, tmp_path_factory):
    text = request.param
    pt_model = F.tiny_blip2(text, seed=MODEL_SEED[text])
    path = tmp_path_factory.mktemp(f"gen_{text}")
    pt_model.save_pretrained(path)
    pixels, ids, mask = _prompts()
    greedy = hf_generate(pt_model, pixels, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=0)
    # EOS ids the reference generates early in some rows (third token of row 0, ...).
    eos = [int(greedy[0, 2]), int(greedy[1, 4]), int(greedy[2, 1])]
    return dict(
        pt=pt_model,
        path=str(path),
        model=vpgtrans_jax.load(str(path)),
        eos=eos,
        greedy=greedy,
        inputs=(pixels, ids, mask),
    )


def _assert_same(ours, ref):
    ours = np.asarray(ours)
    assert ours.shape[1] == MAX_NEW and ours.shape[0] == ref.shape[0]
    n = ref.shape[1]
    np.testing.assert_array_equal(ours[:, :n], ref)
    assert (ours[:, n:] == PAD).all()


SETTINGS = {
    "greedy": dict(),
    "greedy_min_new": dict(min_new_tokens=4),
    "beam5": dict(num_beams=5),
    "beam5_lp_neg_min_new": dict(num_beams=5, length_penalty=-1.0, min_new_tokens=3),
    "beam5_lp_pos_min_new": dict(num_beams=5, length_penalty=1.0, min_new_tokens=3),
    "beam5_return3_early": dict(num_beams=5, num_return_sequences=3, early_stopping=True),
    "beam4_never_lp2": dict(num_beams=4, early_stopping="never", length_penalty=2.0),
}


CASES = [(name, "one") for name in SETTINGS] + [
    ("greedy", "list"),
    ("beam5_lp_neg_min_new", "list"),
]


@pytest.mark.parametrize("name,eos_kind", CASES)
def test_token_ids_match_hf(setup, name, eos_kind):
    kw = dict(SETTINGS[name], max_new_tokens=MAX_NEW)
    eos = setup["eos"][0] if eos_kind == "one" else setup["eos"]
    pixels, ids, mask = setup["inputs"]
    ref = hf_generate(setup["pt"], pixels, ids, mask, eos_token_id=eos, **kw)
    if name == "greedy":  # EOS really occurs, so finishing / padding logic is exercised
        assert np.isin(ref, np.atleast_1d(eos)).any()
    if kw.get("min_new_tokens"):  # ... and the reference emits it before min_new_tokens
        assert np.isin(setup["greedy"][:, : kw["min_new_tokens"]], np.atleast_1d(eos)).any()
    ours = generate(setup["model"], pixels, ids, mask, eos_token_id=eos, pad_token_id=PAD, **kw)
    _assert_same(ours, ref)


def test_scanned_layers_and_repetition_penalty(setup):
    model = vpgtrans_jax.load(setup["path"], scan_layers=True)
    pixels, ids, mask = setup["inputs"]
    for kw in (dict(num_beams=5, length_penalty=-1.0), dict(repetition_penalty=1.3)):
        kw = dict(kw, max_new_tokens=MAX_NEW, eos_token_id=setup["eos"])
        ref = hf_generate(setup["pt"], pixels, ids, mask, **kw)
        _assert_same(generate(model, pixels, ids, mask, pad_token_id=PAD, **kw), ref)


def test_prefill_and_steps_match_full_forward(setup):
    """Cached decoding reproduces the logits of one full forward over prompt + new tokens."""
    model = setup["model"]
    pixels, ids, mask = setup["inputs"]
    new = np.array([[5, 6, 7], [8, 9, 10], [11, 12, 13]], np.int32)
    logits, cache, full_mask, pos = model.prefill(pixels, ids, mask, max_new_tokens=3)
    got = [np.asarray(logits)]
    for i in range(2):
        logits, cache = model.decode_step(new[:, i], cache, full_mask, pos + i)
        got.append(np.asarray(logits))
    all_ids = jnp.asarray(np.concatenate([ids, new], 1))
    embeds, all_mask = model.prepend_prompt(
        model.soft_prompt(jnp.asarray(pixels)),
        all_ids,
        jnp.asarray(np.concatenate([mask, np.ones_like(new)], 1)),
    )
    positions = jnp.maximum(jnp.cumsum(all_mask, axis=1) - 1, 0)  # HF generate's positions
    hidden, _ = model.llm.hidden_states(embeds, all_mask, positions=positions)
    full = np.asarray(model.llm.logits(hidden))
    np.testing.assert_allclose(np.stack(got, 1), full[:, -4:-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["greedy", "beam5_lp_neg_min_new"])
def test_soft_prompt_inside_the_prompt_matches_hf(setup, name):
    """Stage-3 ``<ImageHere>`` prompts: the image after some text tokens of each row."""
    pixels, ids, mask = setup["inputs"]
    offsets = np.array([2, 3, 5], np.int32)  # row 1 has 2 pads, row 2 one; 5 = after all text
    kw = dict(SETTINGS[name], max_new_tokens=MAX_NEW, eos_token_id=setup["eos"])
    ref = hf_generate(setup["pt"], pixels, ids, mask, offsets, **kw)
    ours = generate(
        setup["model"], pixels, ids, mask, pad_token_id=PAD, image_offsets=offsets, **kw
    )
    _assert_same(ours, ref)
    # Offsets of 0 are the ordinary prompt-first layout.
    first = generate(
        setup["model"],
        pixels,
        ids,
        mask,
        pad_token_id=PAD,
        image_offsets=np.zeros(3, np.int32),
        **kw,
    )
    _assert_same(first, hf_generate(setup["pt"], pixels, ids, mask, **kw))


def test_input_errors(setup):
    model = setup["model"]
    pixels, ids, mask = setup["inputs"]
    right = np.ones_like(mask)
    right[0, -1] = 0
    with pytest.raises(ValueError, match="not left-padded"):
        generate(model, pixels, ids, right, max_new_tokens=2, eos_token_id=0, pad_token_id=PAD)
    kw = dict(max_new_tokens=2, eos_token_id=0, pad_token_id=PAD)
    with pytest.raises(ValueError, match="num_return_sequences=2 needs beam search"):
        generate(model, pixels, ids, mask, num_return_sequences=2, **kw)
    for bad in (np.array([0, 6, 1]), np.array([1, 2])):
        with pytest.raises(ValueError, match="image_offsets"):
            generate(model, pixels, ids, mask, image_offsets=bad, **kw)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, pixels, ids, mask, max_new_tokens=2, eos_token_id=10**6, pad_token_id=PAD)
    with pytest.raises(ValueError, match="pixel_values must be"):
        generate(model, pixels[:2], ids, mask, max_new_tokens=2, eos_token_id=0, pad_token_id=PAD)


def test_token_ids_outside_the_vocabulary_are_refused(setup):
    """They used to give NaN logits and an all-zero 'answer', exit 0."""
    model = setup["model"]
    pixels, ids, mask = setup["inputs"]
    vocab = model.config.llm.vocab_size
    kw = dict(max_new_tokens=2, eos_token_id=0, pad_token_id=PAD)
    for bad_id, where in ((vocab, [1, 3]), (-1, [2, 4])):
        bad = ids.copy()
        bad[tuple(where)] = bad_id
        want = f"token id {bad_id} at {where}, outside the LLM's vocabulary [0, {vocab})"
        with pytest.raises(ValueError, match=re.escape(want)):
            generate(model, pixels, bad, mask, **kw)
    wide = ids.astype(np.int64)
    wide[0, 4] = 2**32 + 5  # would wrap to 5 when cast to int32
    with pytest.raises(ValueError, match="token id 4294967301"):
        generate(model, pixels, wide, mask, **kw)


def test_int64_inputs_do_not_warn(setup):
    model = setup["model"]
    pixels, ids, mask = setup["inputs"]
    ids64, mask64 = ids.astype(np.int64), mask.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = generate(
            model, pixels, ids64, mask64, max_new_tokens=2, eos_token_id=0, pad_token_id=PAD
        )
        offsets = generate(
            model, pixels, ids64, mask64, image_offsets=np.zeros(3, np.int64), max_new_tokens=2,
            eos_token_id=0, pad_token_id=PAD,
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out), np.asarray(offsets))
