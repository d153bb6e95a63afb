"""LLaMA-family decoder: parity with transformers, KV cache, scan/remat/bf16, config parsing."""

from __future__ import annotations

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
from vpgtrans_jax.checkpoint.hf import llama as hf_llama
from vpgtrans_jax.models.llama import LlamaConfig, LlamaForCausalLM, rope_inv_freq

TOL = 1e-4
VOCAB, HIDDEN, LAYERS, FFN = 64, 32, 2, 48
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# name -> (model_type, extra HF config kwargs)
CASES: dict[str, tuple[str, dict]] = {
    "mha": ("llama", {}),
    "gqa": ("llama", {"num_key_value_heads": 2}),
    "mqa": ("llama", {"num_key_value_heads": 1}),
    "llama3_rope": ("llama", {"num_key_value_heads": 2, "rope_parameters": dict(LLAMA3)}),
    "linear_rope": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.5}}),
    "theta_500k": ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}),
    "attention_bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "tied": ("llama", {"tie_word_embeddings": True}),
    "explicit_head_dim": ("llama", {"head_dim": 16, "num_key_value_heads": 2}),
    "mistral": ("mistral", {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": ("qwen2", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
}

_HF_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}


def make_torch(model_type: str = "llama", seed: int = 0, **kw):
    """A tiny random HF causal LM with weights large enough that mistakes show up."""
    cfg_cls, model_cls = _HF_CLASSES[model_type]
    args = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=FFN,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    args.update(kw)
    hf_cfg = cfg_cls(**args)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model, hf_cfg


def load_ours(tm, hf_cfg, **overrides) -> LlamaForCausalLM:
    cfg = hf_llama.config_from_hf(hf_cfg, **overrides)
    abstract_model = abstract(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    return load_state_dict(
        abstract_model, hf_llama.weight_rules(cfg), tm.state_dict(), optional=hf_llama.is_unused_key
    )


def torch_logits(tm, ids=None, mask=None, embeds=None, positions=None) -> np.ndarray:
    with torch.no_grad():
        out = tm(
            input_ids=None if ids is None else torch.tensor(np.asarray(ids), dtype=torch.long),
            inputs_embeds=None if embeds is None else torch.tensor(np.asarray(embeds)),
            attention_mask=None if mask is None else torch.tensor(np.asarray(mask)),
            position_ids=None if positions is None else torch.tensor(np.asarray(positions)),
        )
    return out.logits.float().numpy()


def random_batch(b: int = 2, t: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and a right-padded mask (row 1 has 3 padding tokens)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, VOCAB, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, t - 3 :] = 0
    return ids, mask


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ---- parity with transformers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "case,scan",
    [(name, False) for name in CASES] + [("gqa", True), ("llama3_rope", True), ("qwen2", True)],
)
def test_forward_parity(case, scan):
    model_type, kw = CASES[case]
    tm, hf_cfg = make_torch(model_type, **kw)
    model = load_ours(tm, hf_cfg, scan_layers=scan)
    ids, mask = random_batch()
    logits, cache = model(jnp.asarray(ids), jnp.asarray(mask))
    assert cache is None
    assert logits.shape == (2, 8, VOCAB)
    assert max_diff(logits, torch_logits(tm, ids, mask)) <= TOL


def test_from_hf_reads_config():
    _, hf_cfg = make_torch("llama", num_key_value_heads=2, rope_parameters=dict(LLAMA3))
    cfg = hf_llama.config_from_hf(hf_cfg, dtype="bfloat16")
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (LAYERS, 4, 2, 8)
    assert cfg.rope_scaling_dict == LLAMA3
    assert cfg.dtype == "bfloat16" and cfg.input_embed_dim == HIDDEN
    _, qwen = make_torch("qwen2", num_key_value_heads=2, tie_word_embeddings=True)
    qcfg = hf_llama.config_from_hf(qwen)
    assert qcfg.qkv_bias and not qcfg.attention_bias and qcfg.tie_word_embeddings


def test_from_hf_accepts_legacy_config_json_keys():
    """Old config.json files keep rope_theta and rope_scaling at the top level."""
    base = dict(
        model_type="llama",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=FFN,
        max_position_embeddings=64,
    )
    legacy = hf_llama.config_from_hf(
        {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    new = hf_llama.config_from_hf(
        {**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
    )
    assert legacy == new
    assert legacy.rope_theta == 5e5 and legacy.rope_scaling_dict["factor"] == 2.0
    # llama3 without original_max_position_embeddings falls back to max_position_embeddings (HF).
    l3 = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    cfg = hf_llama.config_from_hf({**base, "rope_scaling": l3})
    assert cfg.rope_scaling_dict["original_max_position_embeddings"] == 64
    # Missing num_key_value_heads and a Vicuna-style plain llama dict: MHA, theta 10000.
    plain = hf_llama.config_from_hf(base)
    assert plain.num_kv_heads == 4 and plain.rope_theta == 10000.0 and plain.rope_scaling is None


def test_rope_inv_freq_matches_transformers():
    for kw in (
        {"rope_parameters": dict(LLAMA3)},
        {"rope_parameters": {"rope_type": "linear", "factor": 3.0}},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    ):
        tm, hf_cfg = make_torch("llama", **kw)
        cfg = hf_llama.config_from_hf(hf_cfg)
        ours = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        np.testing.assert_allclose(ours, tm.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


def test_inputs_embeds_path():
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2)
    model = load_ours(tm, hf_cfg)
    _, mask = random_batch()
    embeds = np.random.RandomState(1).normal(size=(2, 8, HIDDEN)).astype(np.float32)
    logits, _ = model(inputs_embeds=jnp.asarray(embeds), attention_mask=jnp.asarray(mask))
    assert max_diff(logits, torch_logits(tm, mask=mask, embeds=embeds)) <= TOL
    # embed() + hidden_states() + logits() is the same computation as __call__.
    ids, _ = random_batch()
    hidden, _ = model.hidden_states(model.embed(jnp.asarray(ids)), jnp.asarray(mask))
    assert max_diff(model.logits(hidden), torch_logits(tm, ids, mask)) <= TOL


# ---- KV cache ------------------------------------------------------------------------------


@nnx.jit
def _step(model, ids, mask, positions, cache):
    return model(ids, mask, positions=positions, cache=cache)


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_matches_full_forward(scan):
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2, rope_parameters=dict(LLAMA3))
    model = load_ours(tm, hf_cfg, scan_layers=scan)
    b, t, max_len = 2, 8, 11
    ids = np.random.RandomState(2).randint(0, VOCAB, (b, t))
    # Left padding (row 1 has 2 pads) with per-row positions, as batched generation uses.
    slot_mask = np.ones((b, max_len), np.int32)
    slot_mask[1, :2] = 0
    positions = np.clip(np.cumsum(slot_mask[:, :t], axis=1) - 1, 0, None)

    full, _ = model(
        jnp.asarray(ids), jnp.asarray(slot_mask[:, :t]), positions=jnp.asarray(positions)
    )
    ref = torch_logits(tm, ids, slot_mask[:, :t], positions=positions)
    valid = slot_mask[:, :t].astype(bool)
    assert max_diff(np.asarray(full)[valid], ref[valid]) <= TOL

    cache = model.init_cache(b, max_len)
    assert cache.k.shape == (LAYERS, b, 2, max_len, 8) and int(cache.index) == 0
    pieces = []
    for start, stop in [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]:  # prefill, a chunk, then 1 by 1
        logits, cache = _step(
            model,
            jnp.asarray(ids[:, start:stop]),
            jnp.asarray(slot_mask),
            jnp.asarray(positions[:, start:stop]),
            cache,
        )
        assert int(cache.index) == stop
        pieces.append(np.asarray(logits))
    cached = np.concatenate(pieces, axis=1)
    assert max_diff(cached[valid], np.asarray(full)[valid]) <= TOL
    assert max_diff(cached[valid], ref[valid]) <= TOL


def test_cache_default_positions_follow_index():
    """Without explicit positions a cached step uses index + arange(T), as HF does."""
    tm, hf_cfg = make_torch("llama")
    model = load_ours(tm, hf_cfg)
    ids = np.random.RandomState(3).randint(0, VOCAB, (1, 6))
    full, _ = model(jnp.asarray(ids))
    cache = model.init_cache(1, 6)
    mask = jnp.ones((1, 6), jnp.int32)
    first, cache = model(jnp.asarray(ids[:, :4]), mask, cache=cache)
    second, cache = model(jnp.asarray(ids[:, 4:]), mask, cache=cache)
    assert max_diff(np.concatenate([first, second], axis=1), full) <= TOL
    assert max_diff(full, torch_logits(tm, ids)) <= TOL


# ---- scan / remat / dtype / sharding ------------------------------------------------------


def test_scanned_equals_unscanned():
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2, attention_bias=True)
    plain = load_ours(tm, hf_cfg)
    scanned = load_ours(tm, hf_cfg, scan_layers=True)
    kernel = scanned.layers.self_attn.q_proj.kernel
    assert kernel.shape == (LAYERS, HIDDEN, HIDDEN)
    assert kernel.get_metadata()["axes"] == ("layers", "embed", "heads")
    ids, mask = random_batch()
    a, _ = plain(jnp.asarray(ids), jnp.asarray(mask))
    b, _ = scanned(jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gradients(scan):
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2)
    ids, mask = random_batch()
    embeds = np.random.RandomState(4).normal(size=(2, 8, HIDDEN)).astype(np.float32)
    weight = np.random.RandomState(5).normal(size=(2, 8, VOCAB)).astype(np.float32)
    weight *= mask[:, :, None]

    def loss(model, x):
        logits, _ = model(inputs_embeds=x, attention_mask=jnp.asarray(mask))
        return jnp.sum(logits * weight)

    grads = {}
    for policy in (None, "nothing_saveable"):
        model = load_ours(tm, hf_cfg, scan_layers=scan, remat_policy=policy)
        grads[policy] = nnx.grad(loss, argnums=(0, 1))(model, jnp.asarray(embeds))
        jaxpr = str(jax.make_jaxpr(lambda x, m=model: loss(m, x))(jnp.asarray(embeds)))
        assert ("remat" in jaxpr) == (policy is not None)  # remat really wraps the blocks
    (p_plain, x_plain), (p_remat, x_remat) = grads[None], grads["nothing_saveable"]
    for a, b in zip(jax.tree.leaves(p_plain), jax.tree.leaves(p_remat), strict=True):
        assert max_diff(a, b) <= 1e-6 * max(1.0, float(jnp.max(jnp.abs(a))))
    assert max_diff(x_plain, x_remat) <= 1e-6 * max(1.0, float(jnp.max(jnp.abs(x_plain))))

    x = torch.tensor(embeds, requires_grad=True)
    out = tm(inputs_embeds=x, attention_mask=torch.tensor(mask)).logits
    (out * torch.tensor(weight)).sum().backward()
    assert max_diff(x_remat, x.grad.numpy()) <= TOL


def test_bf16_close_to_fp32():
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2)
    ids, mask = random_batch()
    ref, _ = load_ours(tm, hf_cfg)(jnp.asarray(ids), jnp.asarray(mask))
    for param_dtype in ("float32", "bfloat16"):
        model = load_ours(tm, hf_cfg, dtype="bfloat16", param_dtype=param_dtype)
        assert model.embed_tokens.embedding.dtype == jnp.dtype(param_dtype)
        out, _ = model(jnp.asarray(ids), jnp.asarray(mask))
        assert out.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(ref)))
        assert max_diff(out, ref) <= 0.05 * scale
        cache = model.init_cache(2, 8)
        assert cache.k.dtype == jnp.bfloat16


def test_sharded_forward_matches_unsharded():
    tm, hf_cfg = make_torch("llama", num_key_value_heads=2)
    model = load_ours(tm, hf_cfg, scan_layers=True)
    ids = np.random.RandomState(6).randint(0, VOCAB, (4, 8))
    mask = np.ones((4, 8), np.int32)
    mask[2, 6:] = 0
    ref, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.shard_model(model, mesh)
    spec = model.layers.mlp.gate_proj.kernel.get_value().sharding.spec
    assert tuple(spec) == (None, "fsdp", "tensor")

    @nnx.jit
    def fwd(m, i, k):
        return m(i, k)[0]

    with sharding.use_mesh(mesh):
        out = fwd(model, jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(out, ref) <= 1e-5


# ---- weights ------------------------------------------------------------------------------


def test_weight_map_tied_and_legacy_buffers():
    tm, hf_cfg = make_torch("llama", tie_word_embeddings=True)
    cfg = hf_llama.config_from_hf(hf_cfg)
    rules = hf_llama.weight_rules(cfg)
    assert not any(r.hf == "lm_head.weight" for r in rules)
    sd = dict(tm.state_dict())
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old checkpoints
    abstract_model = abstract(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    model = load_state_dict(abstract_model, rules, sd, optional=hf_llama.is_unused_key)
    assert model.lm_head is None
    with pytest.raises(ValueError, match="inv_freq"):
        load_state_dict(abstract_model, rules, sd)
    assert hf_llama.is_unused_key("lm_head.weight") and not hf_llama.is_unused_key(
        "model.norm.weight"
    )


def test_untied_head_is_loaded():
    tm, hf_cfg = make_torch("llama")
    model = load_ours(tm, hf_cfg)
    np.testing.assert_array_equal(
        np.asarray(model.lm_head.kernel.get_value()), tm.lm_head.weight.detach().numpy().T
    )


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "update,match",
    [
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "yarn"),
        ({"rope_scaling": {"rope_type": "linear"}}, "missing"),
        ({"model_type": "opt"}, "model_type"),
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "sliding"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "flat"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"hidden_act": "tanh"}, "activation"),
    ],
)
def test_from_hf_rejects_unsupported(update, match):
    d = dict(
        model_type="llama",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=FFN,
    )
    d.update(update)
    with pytest.raises(ValueError, match=match):
        hf_llama.config_from_hf(d)


def test_config_errors():
    with pytest.raises(ValueError, match="override"):
        hf_llama.config_from_hf(make_torch("llama")[1], not_a_field=1)
    with pytest.raises(ValueError, match="remat_policy"):
        LlamaConfig(hidden_size=32, num_heads=4, remat_policy="bogus")
    cfg = LlamaConfig(rope_scaling={"type": "linear", "factor": 2})
    assert cfg.rope_scaling == (("factor", 2.0), ("rope_type", "linear"))
    assert hash(cfg) == hash(LlamaConfig(rope_scaling=[["factor", 2.0], ["rope_type", "linear"]]))


def test_call_input_errors():
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, num_heads=4, intermediate_size=FFN
    )
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed(ids))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="every cache slot"):
        model(ids, jnp.ones((2, 5), jnp.int32), cache=model.init_cache(2, 9))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=jnp.zeros((2, 5, HIDDEN + 1)))
    with pytest.raises(ValueError, match="positions"):
        model(ids, positions=jnp.zeros((5,), jnp.int32))
