"""EVA ViT tower: PyTorch parity with transformers' Blip2VisionModel, scan/remat/bf16, presets."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from transformers import Blip2Config, Blip2VisionConfig, Blip2VisionModel

from vpgtrans_jax import sharding
from vpgtrans_jax.checkpoint.engine import load_state_dict
from vpgtrans_jax.checkpoint.fill import abstract
from vpgtrans_jax.checkpoint.hf import vit as hf_vit
from vpgtrans_jax.models import vit
from vpgtrans_jax.models.vit import VisionConfig, VisionTransformer
from vpgtrans_jax.nn import layers

HF_KW = dict(
    image_size=28, patch_size=7, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
    num_attention_heads=4, layer_norm_eps=1e-6, hidden_act="gelu", initializer_range=0.02,
)  # fmt: skip


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """HF initialises biases to 0 and norms to 1; perturb everything so parity is meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith("qkv.bias"):
                d = p.shape[0] // 3
                p[d : 2 * d] = 0.0  # EVA has no k bias


@pytest.fixture(scope="module")
def hf_model() -> Blip2VisionModel:
    torch.manual_seed(0)
    model = Blip2VisionModel(Blip2VisionConfig(**HF_KW)).eval()
    _randomise(model)
    return model


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _load(cfg: VisionConfig, sd: dict[str, np.ndarray]) -> VisionTransformer:
    return load_state_dict(
        abstract(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))),
        hf_vit.weight_rules(cfg),
        sd,
        optional=lambda k: k.startswith("post_layernorm."),
    )


def _post_ln(cfg: VisionConfig, sd: dict[str, np.ndarray]) -> layers.LayerNorm:
    ln = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=nnx.Rngs(0))
    ln.scale[...] = jnp.asarray(sd["post_layernorm.weight"])
    ln.bias[...] = jnp.asarray(sd["post_layernorm.bias"])
    return ln


def _images(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, h, w, 3)).astype(np.float32)


def _torch_forward(model: Blip2VisionModel, x: np.ndarray, interpolate: bool) -> np.ndarray:
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        out = model(pixel_values=pixels, interpolate_pos_encoding=interpolate)
    return out.last_hidden_state.numpy()


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("scan", [False, True])
def test_matches_hf_fp32(hf_model, scan):
    cfg = hf_vit.config_from_hf(hf_model.config, scan_layers=scan)
    sd = _state_dict(hf_model)
    model, ln = _load(cfg, sd), _post_ln(cfg, sd)
    x = _images(2, 28, 28)
    ours = ln(model(jnp.asarray(x)))
    assert ours.shape == (2, 1 + 16, 32)
    assert _max_diff(ours, _torch_forward(hf_model, x, False)) <= 1e-4


@pytest.mark.parametrize("size", [(42, 35), (21, 21), (30, 31)])
def test_other_resolutions_match_hf_interpolation(hf_model, size):
    cfg = hf_vit.config_from_hf(hf_model.config)
    sd = _state_dict(hf_model)
    model, ln = _load(cfg, sd), _post_ln(cfg, sd)
    x = _images(2, *size, seed=1)
    ours = ln(model(jnp.asarray(x)))
    theirs = _torch_forward(hf_model, x, True)
    assert ours.shape == theirs.shape == (2, 1 + (size[0] // 7) * (size[1] // 7), 32)
    assert _max_diff(ours, theirs) <= 1e-4


@pytest.mark.parametrize(
    "old,new", [((4, 4), (6, 5)), ((4, 4), (2, 3)), ((3, 5), (7, 4)), ((16, 16), (37, 37))]
)
def test_resize_pos_embed_matches_torch_bicubic(old, new):
    d = 6
    pos = np.random.default_rng(0).standard_normal((1, 1 + old[0] * old[1], d)).astype(np.float32)
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, *old, d).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, d).numpy()
    ours = jax.jit(vit.resize_pos_embed, static_argnums=(1, 2))(jnp.asarray(pos), old, new)
    assert ours.shape == (1, 1 + new[0] * new[1], d)
    np.testing.assert_array_equal(np.asarray(ours[:, :1]), pos[:, :1])
    assert _max_diff(ours[:, 1:], ref) <= 1e-5


def test_resize_pos_embed_rejects_wrong_grid():
    with pytest.raises(ValueError, match=r"old_grid \(3, 3\)"):
        vit.resize_pos_embed(jnp.zeros((1, 17, 4)), (3, 3), (4, 4))


def test_scanned_equals_unscanned_and_remat_grads(hf_model):
    sd = _state_dict(hf_model)
    x = jnp.asarray(_images(2, 28, 28, seed=2))
    base = hf_vit.config_from_hf(hf_model.config)

    def grads(cfg: VisionConfig):
        model = _load(cfg, sd)
        graphdef, state = nnx.split(model)

        def loss(state, x):
            return jnp.sum(jnp.tanh(nnx.merge(graphdef, state)(x)))

        val, (g_state, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, x)
        # Compare parameter grads in the unscanned layout.
        flat = {
            ".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g_state)
        }
        if cfg.scan_layers:
            flat = {k: v for k, v in flat.items() if not k.startswith("layers.")} | {
                k.replace("layers.", f"layers.{i}.", 1): v[i]
                for k, v in flat.items()
                if k.startswith("layers.")
                for i in range(cfg.num_layers)
            }
        return float(val), flat, np.asarray(g_x)

    ref_val, ref_g, ref_gx = grads(base)
    # Pixel gradient against torch autograd (same loss).
    pixels = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).requires_grad_(True)
    # Our tower has no post_layernorm: use HF's embeddings + encoder (the pre-norm states).
    pre_ln = hf_model.encoder(hf_model.embeddings(pixels)).last_hidden_state
    torch.tanh(pre_ln).sum().backward()
    assert _max_diff(ref_gx, pixels.grad.permute(0, 2, 3, 1).numpy()) <= 1e-4

    for scan in (False, True):
        for policy in (None, "nothing_saveable"):
            cfg = dataclasses.replace(base, scan_layers=scan, remat_policy=policy)
            val, g, gx = grads(cfg)
            assert abs(val - ref_val) <= 1e-4 * max(1.0, abs(ref_val))
            assert set(g) == set(ref_g)
            for k in ref_g:
                assert _max_diff(g[k], ref_g[k]) <= 1e-5, k
            assert _max_diff(gx, ref_gx) <= 1e-5


def test_bf16_close_to_fp32(hf_model):
    sd = _state_dict(hf_model)
    x = jnp.asarray(_images(2, 28, 28, seed=3))
    cfg = hf_vit.config_from_hf(hf_model.config)
    ref = _load(cfg, sd)(x)
    out = _load(dataclasses.replace(cfg, dtype="bfloat16"), sd)(x)
    assert out.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(ref)))
    assert _max_diff(out, ref) <= 0.02 * scale
    # bf16 params as well.
    out2 = _load(dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16"), sd)(x)
    assert _max_diff(out2, ref) <= 0.02 * scale


def test_sharded_forward_matches(hf_model):
    sd = _state_dict(hf_model)
    cfg = hf_vit.config_from_hf(hf_model.config, scan_layers=True)
    x = jnp.asarray(_images(4, 28, 28, seed=4))
    model = _load(cfg, sd)
    ref = model(x)
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.shard_model(model, mesh)
    with sharding.use_mesh(mesh):
        out = nnx.jit(lambda m, x: m(x))(model, x)
    assert _max_diff(out, ref) <= 1e-5


def _abstract_shapes(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    model = abstract(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    return {
        ".".join(map(str, p)): tuple(v.get_value().shape)
        for p, v in nnx.to_flat_state(nnx.state(model))
    }


def test_presets_have_expected_shapes():
    g = _abstract_shapes(VisionConfig.eva_vit_g(scan_layers=True))
    assert g["pos_embed"] == (1, 257, 1408)
    assert g["cls_token"] == (1, 1, 1408)
    assert g["patch_embed.kernel"] == (14, 14, 3, 1408)
    assert g["layers.attn.qkv.kernel"] == (39, 1408, 3 * 1408)
    assert g["layers.attn.q_bias"] == (39, 1408)
    assert g["layers.mlp.fc1.kernel"] == (39, 1408, 6144)
    assert g["layers.mlp.fc2.kernel"] == (39, 6144, 1408)
    assert "ln_pre.scale" not in g
    per_layer = 4 * 1408 * 1408 + 2 * 1408 * 6144 + 6144 + 1408 * 8
    embed = 14 * 14 * 3 * 1408 + 1408 + 1408 + 257 * 1408
    assert sum(int(np.prod(s)) for s in g.values()) == 39 * per_layer + embed

    cfg_l = VisionConfig.vit_l(scan_layers=True)
    assert cfg_l.head_dim == 64
    l_shapes = _abstract_shapes(cfg_l)
    assert l_shapes["pos_embed"] == (1, 257, 1024)
    assert l_shapes["layers.attn.qkv.kernel"] == (24, 1024, 3 * 1024)
    assert l_shapes["layers.mlp.fc1.kernel"] == (24, 1024, 4096)
    assert l_shapes["ln_pre.scale"] == (1024,)
    # Unscanned layout of the presets has per-layer paths.
    assert _abstract_shapes(VisionConfig.eva_vit_g())["layers.38.attn.proj.kernel"] == (1408, 1408)


def test_pre_layernorm_is_applied():
    cfg = VisionConfig(image_size=14, patch_size=7, hidden_size=8, num_layers=1, num_heads=2,
                       mlp_dim=16, pre_layernorm=True)  # fmt: skip
    model = VisionTransformer(cfg, rngs=nnx.Rngs(0))
    model.layers[0].attn.proj.kernel[...] = jnp.zeros((8, 8))
    model.layers[0].mlp.fc2.kernel[...] = jnp.zeros((16, 8))
    model.ln_pre.bias[...] = jnp.full((8,), 3.0)
    # Attention/MLP outputs reduce to biases (zero at init), so the output is ln_pre's output.
    out = model(jnp.asarray(_images(1, 14, 14)))
    np.testing.assert_allclose(np.asarray(jnp.mean(out, axis=-1)), 3.0, atol=1e-5)
    with pytest.raises(ValueError, match="pre_layernorm"):
        hf_vit.weight_rules(cfg)


def test_from_hf_variants_and_errors():
    hf = Blip2VisionConfig(**HF_KW)
    a = hf_vit.config_from_hf(hf)
    assert (a.image_size, a.patch_size, a.hidden_size, a.num_layers) == (28, 7, 32, 3)
    assert (a.num_heads, a.mlp_dim, a.layer_norm_eps, a.hidden_act) == (4, 48, 1e-6, "gelu")
    assert hf_vit.config_from_hf(hf.to_dict()) == a
    assert hf_vit.config_from_hf({**hf.to_dict(), "image_size": [28, 28]}) == a
    full = Blip2Config(vision_config=hf.to_dict())
    assert hf_vit.config_from_hf(full) == a
    assert hf_vit.config_from_hf({}) == VisionConfig.eva_vit_g()
    assert hf_vit.config_from_hf(hf, dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="square image_size"):
        hf_vit.config_from_hf({"image_size": [28, 35]})
    with pytest.raises(ValueError, match="model_type 'clip_vision_model'"):
        hf_vit.config_from_hf({"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        hf_vit.config_from_hf(hf, bogus=1)
    with pytest.raises(ValueError, match="hidden_size=30 must be a multiple of num_heads=4"):
        hf_vit.config_from_hf(hf, hidden_size=30)
    with pytest.raises(ValueError, match="unsupported activation 'swiglu'"):
        hf_vit.config_from_hf({**hf.to_dict(), "hidden_act": "swiglu"})
    with pytest.raises(ValueError, match="unknown remat_policy"):
        VisionConfig(remat_policy="everything")


def test_bad_pixel_values_are_rejected():
    cfg = VisionConfig(image_size=14, patch_size=7, hidden_size=8, num_layers=1, num_heads=2,
                       mlp_dim=16)  # fmt: skip
    model = VisionTransformer(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"NHWC float\[B, H, W, 3\], got shape \(1, 3, 14, 14\)"):
        model(jnp.zeros((1, 3, 14, 14)))
    with pytest.raises(ValueError, match="smaller than one 7px patch"):
        model(jnp.zeros((1, 6, 14, 3)))


def test_nonzero_k_bias_is_dropped_and_changes_nothing(hf_model):
    """A trained (non-zero) k bias shifts each query's scores by one constant: dropping it on
    import leaves the tower's output equal to transformers' with the bias in place."""
    cfg = hf_vit.config_from_hf(hf_model.config)
    biased = Blip2VisionModel(hf_model.config).eval()
    biased.load_state_dict(hf_model.state_dict())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in biased.encoder.layers:
            layer.self_attn.qkv.bias[32:64] = torch.randn(32, generator=g)
    sd = _state_dict(biased)
    x = _images(2, 28, 28)
    ours = _post_ln(cfg, sd)(_load(cfg, sd)(jnp.asarray(x)))
    assert _max_diff(ours, _torch_forward(biased, x, False)) <= 1e-4
    assert _max_diff(_torch_forward(biased, x, False), _torch_forward(hf_model, x, False)) <= 1e-4


def test_unmapped_post_layernorm_is_reported(hf_model):
    cfg = hf_vit.config_from_hf(hf_model.config)
    with pytest.raises(ValueError, match="post_layernorm"):
        load_state_dict(
            abstract(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))),
            hf_vit.weight_rules(cfg),
            _state_dict(hf_model),
        )
