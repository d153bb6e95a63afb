"""OPT causal LM: parity with transformers.OPTForCausalLM, KV-cache decoding, scan/remat/bf16."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.checkpoint.engine import load_state_dict
from vpgtrans_jax.checkpoint.fill import abstract
from vpgtrans_jax.checkpoint.hf import opt as hf_opt
from vpgtrans_jax.models.opt import OPTConfig, OPTForCausalLM

TOL = 1e-4
VOCAB, T = 64, 7

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    ffn_dim=48,
    max_position_embeddings=40,
)
# OPT-350m style: embeddings in a narrower space, post-LN blocks, no final LayerNorm.
VARIANT_350M = dict(BASE, word_embed_proj_dim=24, do_layer_norm_before=False)


def make_hf(seed: int = 0, **kw) -> transformers.OPTForCausalLM:
    """A tiny HF OPT with every parameter (biases and LayerNorms too) randomised."""
    torch.manual_seed(seed)
    hf_cfg = transformers.OPTConfig(**kw)
    hf_cfg._attn_implementation = "eager"
    model = transformers.OPTForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def load(cfg: OPTConfig, hf: transformers.OPTForCausalLM) -> OPTForCausalLM:
    abstract_model = abstract(lambda: OPTForCausalLM(cfg, rngs=nnx.Rngs(0)))
    return load_state_dict(
        abstract_model, hf_opt.weight_rules(cfg), hf.state_dict(), optional=hf_opt.is_unused_key
    )


def hf_logits(hf, ids=None, mask=None, embeds=None, position_ids=None) -> np.ndarray:
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a))
    with torch.no_grad():
        out = hf(
            input_ids=t(ids),
            attention_mask=t(mask),
            inputs_embeds=t(embeds),
            position_ids=t(position_ids),
        )
    return out.logits.numpy()


def random_ids(batch: int = 2, length: int = T, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, VOCAB, (batch, length)).astype(np.int64)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("variant", [BASE, VARIANT_350M], ids=["pre_ln", "opt350m"])
@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
def test_full_mask_logits_match_torch(variant, scan):
    hf = make_hf(**variant)
    cfg = hf_opt.config_from_hf(hf.config, scan_layers=scan)
    if variant is VARIANT_350M:
        assert cfg.has_projection and not cfg.has_final_layer_norm and cfg.input_embed_dim == 24
    model = load(cfg, hf)
    ids = random_ids()
    mask = np.ones_like(ids)
    logits, cache = model(jnp.asarray(ids), jnp.asarray(mask))
    assert cache is None
    assert logits.shape == (2, T, VOCAB)
    assert max_diff(logits, hf_logits(hf, ids, mask)) <= TOL


@pytest.mark.parametrize("variant", [BASE, VARIANT_350M], ids=["pre_ln", "opt350m"])
def test_padded_batches_match_torch(variant):
    # Fully padded query rows (left padding's leading pads) softmax over an all-masked row in
    # both implementations (uniform weights), so every position is compared, pads included.
    hf = make_hf(**variant)
    model = load(hf_opt.config_from_hf(hf.config), hf)
    ids = random_ids(batch=3)
    right = np.ones_like(ids)
    right[0, 5:] = 0
    right[1, 2:] = 0
    left = np.ones_like(ids)
    left[0, :2] = 0
    left[1, :5] = 0
    for mask in (right, left):
        ours, _ = model(jnp.asarray(ids), jnp.asarray(mask))
        assert max_diff(ours, hf_logits(hf, ids, mask)) <= TOL


def test_inputs_embeds_and_explicit_positions_match_torch():
    hf = make_hf(**VARIANT_350M)
    model = load(hf_opt.config_from_hf(hf.config), hf)
    embeds = np.random.default_rng(1).normal(size=(2, T, 24)).astype(np.float32)
    mask = np.ones((2, T), np.int64)
    mask[1, :3] = 0
    ours, _ = model(inputs_embeds=jnp.asarray(embeds), attention_mask=jnp.asarray(mask))
    assert max_diff(ours, hf_logits(hf, embeds=embeds, mask=mask)) <= TOL

    positions = np.tile(np.arange(5, 5 + T), (2, 1)).astype(np.int64)
    ours, _ = model(jnp.asarray(random_ids()), positions=jnp.asarray(positions))
    ref = hf_logits(hf, random_ids(), np.ones((2, T), np.int64), position_ids=positions)
    assert max_diff(ours, ref) <= TOL


def test_embed_is_word_embeddings_only():
    hf = make_hf(**VARIANT_350M)
    model = load(hf_opt.config_from_hf(hf.config), hf)
    ids = random_ids()
    ref = hf.model.decoder.embed_tokens(torch.from_numpy(ids)).detach().numpy()
    assert model.embed(jnp.asarray(ids)).shape == (2, T, 24)
    assert max_diff(model.embed(jnp.asarray(ids)), ref) <= TOL


def test_untied_lm_head_matches_torch():
    hf = make_hf(**BASE, tie_word_embeddings=False)
    cfg = hf_opt.config_from_hf(hf.config)
    assert not cfg.tie_word_embeddings
    sd = hf.state_dict()
    assert not torch.equal(sd["lm_head.weight"], sd["model.decoder.embed_tokens.weight"])
    model = load(cfg, hf)
    ids = random_ids()
    ours, _ = model(jnp.asarray(ids))
    assert max_diff(ours, hf_logits(hf, ids, np.ones_like(ids))) <= TOL


def test_no_bias_no_affine_no_final_norm_matches_torch():
    hf = make_hf(
        **BASE,
        enable_bias=False,
        layer_norm_elementwise_affine=False,
        _remove_final_layer_norm=True,
    )
    cfg = hf_opt.config_from_hf(hf.config)
    assert cfg.remove_final_layer_norm and not cfg.has_final_layer_norm
    model = load(cfg, hf)
    ids = random_ids()
    ours, _ = model(jnp.asarray(ids))
    assert max_diff(ours, hf_logits(hf, ids, np.ones_like(ids))) <= TOL


@pytest.mark.parametrize("variant", [BASE, VARIANT_350M], ids=["pre_ln", "opt350m"])
@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
def test_incremental_decoding_matches_full_forward(variant, scan):
    hf = make_hf(**variant)
    model = load(hf_opt.config_from_hf(hf.config, scan_layers=scan), hf)
    total, prefill = 9, 4
    ids = random_ids(batch=2, length=total, seed=3)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left-padded row
    full = hf_logits(hf, ids, mask)
    ours_full, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(ours_full, full) <= TOL

    max_len = 12
    # Slots past the tokens seen so far are zero in the mask; the real tokens grow into them.
    cache_mask = np.zeros((2, max_len), np.int32)

    @nnx.jit
    def step(m, tok, cm, cache):
        return m(tok, cm, cache=cache)

    cache = model.init_cache(2, max_len)
    cache_mask[:, :prefill] = mask[:, :prefill]
    logits, cache = step(model, jnp.asarray(ids[:, :prefill]), jnp.asarray(cache_mask), cache)
    assert int(cache.index) == prefill
    # A pad query attends to nothing; its all-masked softmax is uniform over however many key
    # slots exist (S = 12 here vs 9 in the full pass), so pad positions are compared out.
    real = mask[:, :prefill, None].astype(bool)
    assert max_diff(np.where(real, logits, 0), np.where(real, full[:, :prefill], 0)) <= TOL
    for pos in range(prefill, total):
        cache_mask[:, pos] = mask[:, pos]
        logits, cache = step(
            model, jnp.asarray(ids[:, pos : pos + 1]), jnp.asarray(cache_mask), cache
        )
        assert int(cache.index) == pos + 1
        assert max_diff(logits[:, 0], full[:, pos]) <= TOL, pos


def test_scanned_equals_unscanned():
    hf = make_hf(**VARIANT_350M)
    cfg = hf_opt.config_from_hf(hf.config)
    listed = load(cfg, hf)
    scanned = load(dataclasses.replace(cfg, scan_layers=True), hf)
    assert nnx.state(scanned)["layers"]["fc1"]["kernel"].shape == (2, 32, 48)
    ids = jnp.asarray(random_ids())
    mask = jnp.asarray(np.array([[1] * T, [0, 0] + [1] * (T - 2)]))
    a, _ = listed(ids, mask)
    b, _ = scanned(ids, mask)
    assert max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
def test_remat_gradients_match_plain(scan):
    hf = make_hf(**BASE)
    cfg = hf_opt.config_from_hf(hf.config, scan_layers=scan)
    plain = load(cfg, hf)
    remat = load(dataclasses.replace(cfg, remat_policy="nothing_saveable"), hf)
    ids = jnp.asarray(random_ids())
    embeds = plain.embed(ids)

    def loss(x, m):
        logits, _ = m(inputs_embeds=x)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

    g_plain = jax.grad(loss)(embeds, plain)
    g_remat = jax.grad(loss)(embeds, remat)
    assert float(jnp.max(jnp.abs(g_plain))) > 0
    assert max_diff(g_plain, g_remat) <= 1e-6


def test_bf16_close_to_fp32():
    hf = make_hf(**VARIANT_350M)
    cfg = hf_opt.config_from_hf(hf.config)
    f32 = load(cfg, hf)
    bf16 = load(dataclasses.replace(cfg, dtype="bfloat16"), hf)
    ids = jnp.asarray(random_ids())
    a, _ = f32(ids)
    b, _ = bf16(ids)
    assert b.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(a)))
    assert max_diff(a, b) <= 0.05 * scale
    assert bf16.init_cache(2, 8).k.dtype == jnp.bfloat16


def test_from_hf_dict_and_errors():
    hf_dict = transformers.OPTConfig(**VARIANT_350M).to_dict()
    cfg = hf_opt.config_from_hf(hf_dict, dtype="bfloat16")
    assert (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.num_kv_heads) == (2, 4, 8, 4)
    assert cfg.input_embed_dim == 24 and cfg.dtype == "bfloat16" and not cfg.do_layer_norm_before
    minimal = {k: hf_dict[k] for k in BASE}
    assert hf_opt.config_from_hf(minimal).input_embed_dim == 32

    with pytest.raises(ValueError, match="model_type"):
        hf_opt.config_from_hf(dict(hf_dict, model_type="llama"))
    with pytest.raises(ValueError, match="ffn_dim"):
        hf_opt.config_from_hf({k: v for k, v in hf_dict.items() if k != "ffn_dim"})
    with pytest.raises(ValueError, match="not_a_field"):
        hf_opt.config_from_hf(hf_dict, not_a_field=1)
    with pytest.raises(ValueError, match="divisible"):
        hf_opt.config_from_hf(dict(hf_dict, num_attention_heads=5))
    with pytest.raises(ValueError, match="activation"):
        hf_opt.config_from_hf(dict(hf_dict, activation_function="nope"))
    with pytest.raises(ValueError, match="remat_policy"):
        hf_opt.config_from_hf(hf_dict, remat_policy="bogus")


def test_bad_inputs_and_weights_raise_clearly():
    hf = make_hf(**BASE)
    cfg = hf_opt.config_from_hf(hf.config)
    model = load(cfg, hf)
    ids = jnp.asarray(random_ids())
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, jnp.ones((2, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="every cache slot"):
        model(ids, jnp.ones((2, T), jnp.int32), cache=model.init_cache(2, 10))
    with pytest.raises(ValueError, match="cache overflow"):
        model(ids, jnp.ones((2, 5), jnp.int32), cache=model.init_cache(2, 5))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init_cache(2, 41)

    # The tied lm_head.weight is redundant only because hf_opt.is_unused_key says so.
    abstract_model = abstract(lambda: OPTForCausalLM(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_state_dict(abstract_model, hf_opt.weight_rules(cfg), hf.state_dict())
    assert hf_opt.is_unused_key("lm_head.weight")
    assert not hf_opt.is_unused_key("model.decoder.embed_tokens.weight")


def test_sharded_run_matches_unsharded():
    cfg = hf_opt.config_from_hf(transformers.OPTConfig(**VARIANT_350M), scan_layers=True)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(random_ids(batch=4))
    ref, _ = model(ids)
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.shard_model(model, mesh)

    @nnx.jit
    def run(m, ids, cache):
        return m(ids, jnp.ones((4, 10), jnp.int32), cache=cache)

    with sharding.use_mesh(mesh):
        out, cache = run(model, ids, model.init_cache(4, 10))
    assert int(cache.index) == T
    assert max_diff(out, ref) <= 1e-5
