"""Whole-model parity: vpgtrans_jax.load(HF BLIP-2 dir) vs Blip2ForConditionalGeneration."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax.checkpoint.safetensors import CheckpointError
from vpgtrans_jax.models.vl_model import IGNORE_INDEX, cross_entropy


@pytest.fixture(scope="module", params=["opt", "llama"])
def saved(request, tmp_path_factory):
    model = F.tiny_blip2(request.param)
    path = tmp_path_factory.mktemp(f"blip2_{request.param}")
    model.save_pretrained(path)
    return request.param, model, str(path)


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_pytorch(saved, scan):
    _, pt_model, path = saved
    model = vpgtrans_jax.load(path, scan_layers=scan)
    pixels, ids, mask = F.inputs()
    ours = np.asarray(model(jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask)))
    ref = F.torch_logits(pt_model, pixels, ids, mask)[:, F.NUM_QUERY :]
    assert ours.shape == ref.shape == (2, ids.shape[1], pt_model.config.text_config.vocab_size)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_loss_is_lavis_next_token_ce(saved):
    """Text token t is predicted from position Q+t-1, padding/prompt labels are ignored."""
    _, pt_model, path = saved
    model = vpgtrans_jax.load(path)
    pixels, ids, mask = F.inputs()
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    prompt_lengths = np.array([2, 0], np.int32)
    loss, aux = model.loss(
        jnp.asarray(pixels),
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(labels),
        prompt_lengths=jnp.asarray(prompt_lengths),
    )
    full = torch.from_numpy(F.torch_logits(pt_model, pixels, ids, mask))
    q, t = F.NUM_QUERY, ids.shape[1]
    pred = full[:, q - 1 : q + t - 1]
    tgt = torch.from_numpy(labels).long().clone()
    tgt[0, :2] = IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1))
    assert int(aux["num_tokens"]) == int((tgt != IGNORE_INDEX).sum())
    np.testing.assert_allclose(float(loss), float(ref), atol=1e-5)


def test_cross_entropy_ignores_everything_masked():
    logits = jnp.zeros((1, 3, 5))
    loss, aux = cross_entropy(logits, jnp.full((1, 3), IGNORE_INDEX))
    assert float(loss) == 0.0 and int(aux["num_tokens"]) == 0


def test_sharded_safetensors_and_bf16(tmp_path):
    pt_model = F.tiny_blip2("opt", seed=3)
    pt_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    pixels, ids, mask = F.inputs(seed=5)
    ref = F.torch_logits(pt_model, pixels, ids, mask)[:, F.NUM_QUERY :]
    model = vpgtrans_jax.load(str(tmp_path))
    np.testing.assert_allclose(np.asarray(model(pixels, ids, mask)), ref, atol=1e-4, rtol=0)
    bf16 = vpgtrans_jax.load(str(tmp_path), dtype="bfloat16")
    out = np.asarray(bf16(pixels, ids, mask).astype(jnp.float32))
    # bf16 compute: same argmax almost everywhere and small relative error.
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        vpgtrans_jax.load(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        vpgtrans_jax.load(str(tmp_path))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    pt_model = F.tiny_blip2("opt")
    pt_model.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        vpgtrans_jax.load(str(tmp_path))


def test_jit_matches_eager(saved):
    _, _, path = saved
    model = vpgtrans_jax.load(path)
    pixels, ids, mask = F.inputs()
    from flax import nnx

    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, p, i, m: nnx.merge(graphdef, s)(p, i, m))
    np.testing.assert_allclose(
        np.asarray(fwd(state, pixels, ids, mask)), np.asarray(model(pixels, ids, mask)), atol=1e-5
    )


def test_soft_prompt_inside_the_text_matches_pytorch(saved):
    """Stage-3 template: image tokens after k text tokens (HF scatters them wherever they are)."""
    _, pt_model, path = saved
    model = vpgtrans_jax.load(path)
    pixels, ids, mask = F.inputs()
    offsets = np.array([2, 3], np.int32)
    q, t = F.NUM_QUERY, ids.shape[1]
    rows = []
    for b, k in enumerate(offsets):
        rows.append(np.concatenate([ids[b, :k], np.full(q, F.IMAGE_TOKEN), ids[b, k:]]))
    pt_ids = torch.from_numpy(np.stack(rows)).long()
    pt_mask = torch.from_numpy(
        np.stack(
            [np.concatenate([mask[b, :k], np.ones(q), mask[b, k:]]) for b, k in enumerate(offsets)]
        )
    ).long()
    with torch.no_grad():
        full = pt_model(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
            input_ids=pt_ids,
            attention_mask=pt_mask,
        ).logits.numpy()
    text_pos = [np.concatenate([np.arange(k), np.arange(k + q, q + t)]) for k in offsets]
    ref = np.stack([full[b, text_pos[b]] for b in range(2)])
    ours = np.asarray(model(pixels, ids, mask, image_offsets=jnp.asarray(offsets)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    loss, aux = model.loss(pixels, ids, mask, labels, image_offsets=jnp.asarray(offsets))
    preds, tgts = [], []
    for b in range(2):
        for i in range(t):
            src = text_pos[b][i] - 1
            if src >= 0 and labels[b, i] != IGNORE_INDEX:
                preds.append(full[b, src])
                tgts.append(labels[b, i])
    ref_loss = torch.nn.functional.cross_entropy(
        torch.tensor(np.stack(preds)), torch.tensor(np.array(tgts, np.int64))
    )
    assert int(aux["num_tokens"]) == len(tgts)
    np.testing.assert_allclose(float(loss), float(ref_loss), atol=1e-5)
    # Offsets of 0 are the ordinary prepended prompt.
    zero = np.asarray(model(pixels, ids, mask, image_offsets=jnp.zeros(2, jnp.int32)))
    np.testing.assert_allclose(zero, np.asarray(model(pixels, ids, mask)), atol=1e-6)


def test_int64_inputs_do_not_warn_and_ids_are_checked(saved):
    """An int64 attention_mask used to warn about truncation on every call."""
    _, _, path = saved
    model = vpgtrans_jax.load(path)
    pixels, ids, mask = F.inputs()
    ids64, mask64 = ids.astype(np.int64), mask.astype(np.int64)
    labels = np.where(mask64 == 1, ids64, IGNORE_INDEX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = model(pixels, ids64, mask64)
        loss, _ = model.loss(pixels, ids64, mask64, labels)
        offsets = model(pixels, ids64, mask64, image_offsets=np.zeros(len(ids), np.int64))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(pixels, ids, mask)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(offsets), np.asarray(logits), atol=1e-5)
    assert np.isfinite(float(loss))
    vocab = model.config.llm.vocab_size
    bad = ids.copy()
    bad[0, 1] = vocab
    with pytest.raises(ValueError, match=rf"input_ids holds token id {vocab} at \[0, 1\]"):
        model(pixels, bad, mask)
    with pytest.raises(ValueError, match="input_ids holds token id -3"):
        model.llm(np.full((1, 2), -3))
    bad_labels = labels.copy()
    bad_labels[1, 0] = vocab + 7
    with pytest.raises(ValueError, match=rf"labels holds token id {vocab + 7} at \[1, 0\]"):
        model.loss(pixels, ids, mask, bad_labels)
    # Inside jit the ids are traced: the check stays out of the way.
    jitted = jax.jit(lambda m, i: m(pixels, i, mask))
    np.testing.assert_allclose(np.asarray(jitted(model, ids)), np.asarray(logits), atol=1e-5)
