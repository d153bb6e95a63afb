"""BLIP-2 Q-Former (query path): PyTorch parity with transformers' Blip2QFormerModel."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Blip2Config, Blip2QFormerConfig, Blip2QFormerModel

from vpgtrans_jax import sharding
from vpgtrans_jax.checkpoint import rules as weights
from vpgtrans_jax.checkpoint.engine import load_state_dict
from vpgtrans_jax.checkpoint.fill import abstract
from vpgtrans_jax.checkpoint.hf import qformer as hf_qformer
from vpgtrans_jax.models.qformer import QFormer, QFormerConfig

HF_KW = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
    encoder_hidden_size=24, cross_attention_frequency=2, layer_norm_eps=1e-12,
    hidden_act="gelu", use_qformer_text_input=True,
)  # fmt: skip
B, Q, N = 2, 5, 9


def _hf_model(**overrides) -> Blip2QFormerModel:
    torch.manual_seed(0)
    model = Blip2QFormerModel(Blip2QFormerConfig(**{**HF_KW, **overrides})).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # HF initialises biases to 0 and norms to 1: perturb everything
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def hf_model() -> Blip2QFormerModel:
    return _hf_model()


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _load(cfg: QFormerConfig, sd: dict[str, np.ndarray]) -> QFormer:
    return load_state_dict(
        abstract(lambda: QFormer(cfg, rngs=nnx.Rngs(0))),
        hf_qformer.weight_rules(cfg),
        sd,
        optional=hf_qformer.is_unused_key,
    )


def _inputs(seed: int = 0, mask: bool = False):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((B, Q, HF_KW["hidden_size"])).astype(np.float32)
    image = rng.standard_normal((B, N, HF_KW["encoder_hidden_size"])).astype(np.float32)
    image_mask = None
    if mask:
        image_mask = np.ones((B, N), np.int32)
        image_mask[1, 6:] = 0
        image_mask[0, 0] = 0
    return queries, image, image_mask


def _torch_forward(model, queries, image, image_mask=None) -> np.ndarray:
    kw = {}
    if image_mask is not None:
        kw["encoder_attention_mask"] = torch.from_numpy(image_mask).long()
    with torch.no_grad():
        out = model(
            query_embeds=torch.from_numpy(queries),
            encoder_hidden_states=torch.from_numpy(image),
            **kw,
        )
    return out.last_hidden_state.numpy()


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_hf_fp32(hf_model, scan, with_mask):
    cfg = hf_qformer.config_from_hf(hf_model.config, scan_layers=scan)
    model = _load(cfg, _state_dict(hf_model))
    queries, image, image_mask = _inputs(mask=with_mask)
    mask = None if image_mask is None else jnp.asarray(image_mask)
    ours = model(jnp.asarray(queries), jnp.asarray(image), mask)
    assert ours.shape == (B, Q, 32)
    assert _max_diff(ours, _torch_forward(hf_model, queries, image, image_mask)) <= 1e-4


def test_mask_changes_the_output(hf_model):
    cfg = hf_qformer.config_from_hf(hf_model.config)
    model = _load(cfg, _state_dict(hf_model))
    queries, image, image_mask = _inputs(mask=True)
    full = model(jnp.asarray(queries), jnp.asarray(image))
    masked = model(jnp.asarray(queries), jnp.asarray(image), jnp.asarray(image_mask))
    assert _max_diff(full, masked) > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_cross_attention_every_layer(scan):
    hf_model = _hf_model(cross_attention_frequency=1, num_hidden_layers=3)
    cfg = hf_qformer.config_from_hf(hf_model.config, scan_layers=scan)
    assert cfg.cross_layers == [0, 1, 2]
    model = _load(cfg, _state_dict(hf_model))
    queries, image, _ = _inputs(seed=1)
    ours = model(jnp.asarray(queries), jnp.asarray(image))
    assert _max_diff(ours, _torch_forward(hf_model, queries, image)) <= 1e-4


def test_frequency_three_unscanned_with_ragged_groups():
    # 5 layers, cross-attention on 0 and 3: fine unscanned, rejected when scanning.
    hf_model = _hf_model(cross_attention_frequency=3, num_hidden_layers=5)
    cfg = hf_qformer.config_from_hf(hf_model.config)
    assert cfg.cross_layers == [0, 3]
    model = _load(cfg, _state_dict(hf_model))
    queries, image, _ = _inputs(seed=2)
    ours = model(jnp.asarray(queries), jnp.asarray(image))
    assert _max_diff(ours, _torch_forward(hf_model, queries, image)) <= 1e-4
    with pytest.raises(ValueError, match="num_layers=5 must be a multiple of it"):
        dataclasses.replace(cfg, scan_layers=True)


def test_remat_grads_match_scanned_and_unscanned(hf_model):
    sd = _state_dict(hf_model)
    base = hf_qformer.config_from_hf(hf_model.config)
    queries, image, image_mask = _inputs(seed=3, mask=True)
    q, img, m = jnp.asarray(queries), jnp.asarray(image), jnp.asarray(image_mask)

    def grads(cfg):
        model = _load(cfg, sd)
        graphdef, state = nnx.split(model)

        def loss(state, q, img):
            return jnp.sum(jnp.tanh(nnx.merge(graphdef, state)(q, img, m)))

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        val, (g_state, g_q, g_img) = fn(state, q, img)
        flat = {
            ".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g_state)
        }
        return float(val), _unscanned_names(cfg, flat), np.asarray(g_q), np.asarray(g_img)

    ref_val, ref_g, ref_gq, ref_gimg = grads(base)

    # Input gradients against torch autograd for the same loss.
    tq = torch.from_numpy(queries.copy()).requires_grad_(True)
    timg = torch.from_numpy(image.copy()).requires_grad_(True)
    out = hf_model(
        query_embeds=tq,
        encoder_hidden_states=timg,
        encoder_attention_mask=torch.from_numpy(image_mask).long(),
    ).last_hidden_state
    torch.tanh(out).sum().backward()
    assert _max_diff(ref_gq, tq.grad.numpy()) <= 1e-4
    assert _max_diff(ref_gimg, timg.grad.numpy()) <= 1e-4

    # Scanned vs unscanned without remat is covered by the forward parity tests.
    for scan in (False, True):
        cfg = dataclasses.replace(base, scan_layers=scan, remat_policy="nothing_saveable")
        val, g, gq, gimg = grads(cfg)
        assert abs(val - ref_val) <= 1e-4 * max(1.0, abs(ref_val))
        assert set(g) == set(ref_g)
        for k in ref_g:
            assert _max_diff(g[k], ref_g[k]) <= 1e-5, k
        assert _max_diff(gq, ref_gq) <= 1e-5
        assert _max_diff(gimg, ref_gimg) <= 1e-5


def _unscanned_names(cfg: QFormerConfig, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a scanned gradient tree to the unscanned layout for comparison."""
    if not cfg.scan_layers:
        return flat
    out = {}
    for k, v in flat.items():
        if k.startswith("layers."):
            for i in range(cfg.num_layers):
                out[k.replace("layers.", f"layers.{i}.", 1)] = v[i]
        elif k.startswith("cross_attn."):
            _, g, rest = k.split(".", 2)
            out[f"layers.{cfg.cross_layers[int(g)]}.cross_attn.{rest}"] = v
        else:
            out[k] = v
    return out


def test_bf16_close_to_fp32(hf_model):
    sd = _state_dict(hf_model)
    cfg = hf_qformer.config_from_hf(hf_model.config)
    queries, image, _ = _inputs(seed=4)
    args = (jnp.asarray(queries), jnp.asarray(image))
    ref = _load(cfg, sd)(*args)
    for scan in (False, True):
        out = _load(dataclasses.replace(cfg, dtype="bfloat16", scan_layers=scan), sd)(*args)
        assert out.dtype == jnp.bfloat16
        # Post-LN outputs are O(1); bf16 rounding (~0.4% per op) stays within a few hundredths.
        assert _max_diff(out, ref) <= 0.06


def test_sharded_scanned_forward_matches(hf_model):
    cfg = hf_qformer.config_from_hf(hf_model.config, scan_layers=True)
    model = _load(cfg, _state_dict(hf_model))
    queries, image, image_mask = _inputs(seed=5, mask=True)
    args = (jnp.asarray(queries), jnp.asarray(image), jnp.asarray(image_mask))
    ref = model(*args)
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.shard_model(model, mesh)
    with sharding.use_mesh(mesh):
        out = nnx.jit(lambda m, *a: m(*a))(model, *args)
    assert _max_diff(out, ref) <= 1e-5


def test_default_shapes_and_param_count():
    model = abstract(lambda: QFormer(QFormerConfig(scan_layers=True), rngs=nnx.Rngs(0)))
    shapes = {
        ".".join(map(str, p)): tuple(v.get_value().shape)
        for p, v in nnx.to_flat_state(nnx.state(model))
    }
    assert shapes["layers.self_attn.query.kernel"] == (12, 768, 768)
    assert shapes["layers.ffn.fc1.kernel"] == (12, 768, 3072)
    assert shapes["cross_attn.5.key.kernel"] == (1408, 768)
    assert "cross_attn.6.key.kernel" not in shapes
    attn = lambda kv: 768 * 768 + 2 * kv * 768 + 768 * 768 + 4 * 768 + 2 * 768
    ffn = 2 * 768 * 3072 + 3072 + 768 + 2 * 768
    total = 2 * 768 + 12 * (attn(768) + ffn) + 6 * attn(1408)
    assert sum(int(np.prod(s)) for s in shapes.values()) == total


def test_weight_map_covers_every_used_hf_key(hf_model):
    sd = _state_dict(hf_model)
    for scan in (False, True):
        rules = hf_qformer.weight_rules(
            hf_qformer.config_from_hf(hf_model.config, scan_layers=scan)
        )
        used = {hf for r in rules for _, hf, _ in weights.expand(r)}
        assert used <= set(sd)
        assert sorted(k for k in sd if k not in used) == sorted(
            k for k in sd if hf_qformer.is_unused_key(k)
        )


def test_is_unused_hf_key():
    assert hf_qformer.is_unused_key("encoder.layer.3.intermediate.dense.weight")
    assert hf_qformer.is_unused_key("encoder.layer.0.output.dense.bias")
    assert hf_qformer.is_unused_key("encoder.layer.11.output.LayerNorm.weight")
    assert hf_qformer.is_unused_key("embeddings.word_embeddings.weight")
    assert hf_qformer.is_unused_key("embeddings.position_ids")
    assert not hf_qformer.is_unused_key("encoder.layer.0.output_query.dense.weight")
    assert not hf_qformer.is_unused_key("encoder.layer.0.attention.output.dense.weight")
    assert not hf_qformer.is_unused_key("encoder.layer.0.intermediate_query.dense.weight")
    assert not hf_qformer.is_unused_key("layernorm.weight")
    # A stray text key that is not known to be unused must still be reported by the loader.
    sd = _state_dict(_hf_model(num_hidden_layers=2))
    sd["encoder.layer.0.attention.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.extra\.weight"):
        _load(QFormerConfig(**{**_cfg_kwargs(), "num_layers": 2}), sd)


def _cfg_kwargs() -> dict:
    return dict(
        hidden_size=32, num_layers=4, num_heads=4, intermediate_size=48,
        encoder_hidden_size=24, cross_attention_frequency=2,
    )  # fmt: skip


def test_from_hf_variants_and_errors():
    hf = Blip2QFormerConfig(**HF_KW)
    a = hf_qformer.config_from_hf(hf)
    assert a == QFormerConfig(**_cfg_kwargs())
    assert hf_qformer.config_from_hf(hf.to_dict()) == a
    assert hf_qformer.config_from_hf({}) == QFormerConfig()
    full = Blip2Config(qformer_config=hf.to_dict(), vision_config={"hidden_size": 24})
    assert hf_qformer.config_from_hf(full) == a
    assert hf_qformer.config_from_hf(full.to_dict()) == a
    with pytest.raises(ValueError, match="model_type 'bert'"):
        hf_qformer.config_from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        hf_qformer.config_from_hf(hf, bogus=True)
    with pytest.raises(ValueError, match="hidden_size=30 must be a multiple of num_heads=4"):
        hf_qformer.config_from_hf(hf, hidden_size=30)
    with pytest.raises(ValueError, match="cross_attention_frequency must be >= 1, got 0"):
        hf_qformer.config_from_hf(hf, cross_attention_frequency=0)


def test_bad_inputs_are_rejected():
    model = QFormer(QFormerConfig(**_cfg_kwargs()), rngs=nnx.Rngs(0))
    q, img = jnp.zeros((B, Q, 32)), jnp.zeros((B, N, 24))
    with pytest.raises(ValueError, match=r"query_embeds must be float\[B, Q, 32\]"):
        model(jnp.zeros((B, Q, 24)), img)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be float\[2, N, 24\]"):
        model(q, jnp.zeros((B, N, 32)))
    with pytest.raises(ValueError, match=r"encoder_mask must have shape \(2, 9\), got \(2, 8\)"):
        model(q, img, jnp.ones((B, N - 1), jnp.int32))
