"""EVA ViT-g/14 (BLIP-2's frozen image encoder) and CLIP-style ViTs in Flax NNX.

The module maps already-normalised NHWC images to the token sequence ``[CLS, patches]``. It has no
final norm: BLIP-2's ``ln_vision`` belongs to the vision-language model (HF's ``post_layernorm``).

Blocks are pre-LN: ``x + proj(attn(LN1(x)))`` then ``x + fc2(act(fc1(LN2(x))))``. The fused qkv
kernel has no bias; separate ``q_bias`` and ``v_bias`` are added because EVA's k bias is
structurally zero (HF stores ``cat(q_bias, 0, v_bias)`` as ``qkv.bias``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.models.configs import make_config
from vpgtrans_jax.nn import attention, stack
from vpgtrans_jax.nn.layers import Dense, LayerNorm, activation, make_param


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision transformer hyper-parameters (defaults: BLIP-2's EVA ViT-g/14 at 224 px)."""

    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1408
    num_layers: int = 39
    num_heads: int = 16
    mlp_dim: int = 6144
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    pre_layernorm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str | None = None
    # nn.attention implementation: einsum (reference), xla, cudnn, pallas or auto.
    attention_impl: str = "einsum"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"VisionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"VisionConfig.hidden_size={self.hidden_size} must be a multiple of "
                f"num_heads={self.num_heads}"
            )
        if self.patch_size > self.image_size:
            raise ValueError(
                f"VisionConfig.patch_size={self.patch_size} exceeds image_size={self.image_size}"
            )
        activation(self.hidden_act)  # raises on an unknown name
        stack.checkpoint_policy(self.remat_policy)  # raises on an unknown policy
        attention.check_implementation(self.attention_impl, "VisionConfig.attention_impl")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at ``image_size``."""
        n = self.image_size // self.patch_size
        return n, n

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def eva_vit_g(cls, **overrides: Any) -> VisionConfig:
        """BLIP-2's EVA ViT-g/14: 39 blocks, width 1408, 16 heads, MLP 6144, 224 px."""
        base = dict(
            image_size=224, patch_size=14, hidden_size=1408, num_layers=39, num_heads=16,
            mlp_dim=6144, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
        )  # fmt: skip
        return make_config(cls, {**base, **overrides})

    @classmethod
    def vit_l(cls, **overrides: Any) -> VisionConfig:
        """A CLIP ViT-L/14 shape: 24 blocks, width 1024, 16 heads, MLP 4096, 224 px.

        CLIP's ViT-L uses ``ln_pre``, QuickGELU and LayerNorm eps 1e-5, so those are the defaults
        here (override them for an EVA-style ViT-L).
        """
        base = dict(
            image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
            mlp_dim=4096, layer_norm_eps=1e-5, hidden_act="quick_gelu", qkv_bias=True,
            pre_layernorm=True,
        )  # fmt: skip
        return make_config(cls, {**base, **overrides})


# ---- position embedding resizing ---------------------------------------------------------------


def _bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """float64[out, in]: 1-D bicubic resampling equal to torch's ``align_corners=False`` mode.

    torch maps output ``i`` to source ``(i + 0.5) * in / out - 0.5`` (not clamped for cubic), takes
    the 4 taps around ``floor(src)`` with Keys' kernel (a = -0.75) and clamps tap indices to the
    edge, so clamped taps add up on the border rows.
    """

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    scale = in_size / out_size
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        x0 = math.floor(src)
        t = src - x0
        taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for k, w in enumerate(taps):
            m[i, min(max(x0 - 1 + k, 0), in_size - 1)] += w
    return m


def resize_pos_embed(
    pos: jax.Array, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> jax.Array:
    """Bicubically resizes the patch part of a ``[CLS, patches]`` position embedding.

    Matches ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` as used by
    HF's ``interpolate_pos_encoding=True``; implemented as two constant matrices (separable), so it
    is cheap, jit- and grad-friendly. The CLS position is kept as is.

    Args:
      pos: float[1, 1 + old_h * old_w, D].
      old_grid, new_grid: (rows, cols) of the patch grid before and after.

    Returns:
      float[1, 1 + new_h * new_w, D] in ``pos.dtype``.
    """
    (oh, ow), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[1] != 1 + oh * ow:
        raise ValueError(
            f"resize_pos_embed: pos must have shape [1, 1 + {oh}*{ow}, D] for old_grid "
            f"{(oh, ow)}, got {tuple(pos.shape)}"
        )
    if min(oh, ow, nh, nw) < 1:
        raise ValueError(f"resize_pos_embed: grids must be positive, got {old_grid} -> {new_grid}")
    if (oh, ow) == (nh, nw):
        return pos
    rows = jnp.asarray(_bicubic_matrix(oh, nh), jnp.float32)
    cols = jnp.asarray(_bicubic_matrix(ow, nw), jnp.float32)
    grid = pos[0, 1:].astype(jnp.float32).reshape(oh, ow, -1)
    resized = jnp.einsum(
        "ih,jw,hwd->ijd", rows, cols, grid, precision=jax.lax.Precision.HIGHEST
    ).reshape(1, nh * nw, -1)
    return jnp.concatenate([pos[:, :1], resized.astype(pos.dtype)], axis=1)


# ---- modules -----------------------------------------------------------------------------------


class PatchEmbed(nnx.Module):
    """Non-overlapping patch projection (a stride-``patch`` conv, kernel HWIO, with bias)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        p, d = cfg.patch_size, cfg.hidden_size
        self.patch_size = p
        self.dtype = jnp.dtype(cfg.dtype)
        init = nnx.initializers.lecun_normal()
        pdt = jnp.dtype(cfg.param_dtype)
        self.kernel = make_param(
            rngs, init, (p, p, cfg.num_channels, d), pdt, (None, None, None, "embed")
        )
        self.bias = make_param(rngs, nnx.initializers.zeros_init(), (d,), pdt, ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, H, W, C] -> float[B, (H // p) * (W // p), D].

        Trailing pixels that do not fill a patch are dropped, as torch's strided conv does.
        """
        b, h, w, c = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        patches = einops.rearrange(
            x[:, : gh * p, : gw * p].astype(self.dtype),
            "b (h p) (w q) c -> b (h w) (p q c)",
            p=p,
            q=p,
        )
        kernel = einops.rearrange(self.kernel[...].astype(self.dtype), "p q c d -> (p q c) d")
        return patches @ kernel + self.bias[...].astype(self.dtype)


class ViTAttention(nnx.Module):
    """Bidirectional multi-head self-attention with a bias-free fused qkv and q/v biases."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.dtype = jnp.dtype(cfg.dtype)
        self.attention_impl = cfg.attention_impl
        kw = dict(dtype=self.dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.qkv = Dense(d, 3 * d, axes=("embed", "heads"), use_bias=False, **kw)
        zeros = nnx.initializers.zeros_init()
        pdt = jnp.dtype(cfg.param_dtype)
        self.q_bias = make_param(rngs, zeros, (d,), pdt, ("heads",)) if cfg.qkv_bias else None
        self.v_bias = make_param(rngs, zeros, (d,), pdt, ("heads",)) if cfg.qkv_bias else None
        self.proj = Dense(d, d, axes=("heads", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, T, D] -> float[B, T, D]."""
        q, k, v = einops.rearrange(self.qkv(x), "b t (n h d) -> n b t h d", n=3, h=self.num_heads)
        if self.q_bias is not None:
            shape = (self.num_heads, self.head_dim)
            q = q + self.q_bias[...].astype(self.dtype).reshape(shape)
            v = v + self.v_bias[...].astype(self.dtype).reshape(shape)
        q, k, v = (sharding.constrain(a, sharding.HEADS) for a in (q, k, v))
        out = attention.dot_product_attention(
            q,
            k,
            v,
            None,
            scale=self.head_dim**-0.5,
            dtype=self.dtype,
            implementation=self.attention_impl,
        )
        return self.proj(einops.rearrange(out, "b t h d -> b t (h d)"))


class ViTMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.fc1 = Dense(cfg.hidden_size, cfg.mlp_dim, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.mlp_dim, cfg.hidden_size, axes=("mlp", "embed"), **kw)
        self.act_name = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, T, D] -> float[B, T, D]."""
        h = sharding.constrain(
            activation(self.act_name)(self.fc1(x)),
            sharding.MLP,
        )
        return self.fc2(h)


class ViTBlock(nnx.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)
        self.attn = ViTAttention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)
        self.mlp = ViTMLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, T, D] -> float[B, T, D]."""
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return sharding.constrain(x, sharding.HIDDEN)


class VisionTransformer(nnx.Module):
    """Image encoder: patches + CLS + absolute positions -> pre-LN blocks (no final norm)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.hidden_size
        pdt = jnp.dtype(cfg.param_dtype)
        self.dtype = jnp.dtype(cfg.dtype)
        init = nnx.initializers.truncated_normal(stddev=0.02)
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        self.cls_token = make_param(rngs, init, (1, 1, d), pdt, (None, None, "embed"))
        self.pos_embed = make_param(
            rngs, init, (1, 1 + cfg.num_patches, d), pdt, (None, None, "embed")
        )
        self.ln_pre = (
            LayerNorm(d, eps=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
            if cfg.pre_layernorm
            else None
        )
        self.layers = stack.build_layers(
            lambda r: ViTBlock(cfg, rngs=r), cfg.num_layers, rngs, scan=cfg.scan_layers
        )

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """float[B, H, W, C] normalised images -> float[B, 1 + N, D] with N = (H // p) * (W // p).

        Other resolutions than ``cfg.image_size`` get bicubically resized position embeddings.
        """
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"pixel_values must be NHWC float[B, H, W, {cfg.num_channels}], "
                f"got shape {tuple(pixel_values.shape)}"
            )
        b, h, w, _ = pixel_values.shape
        if h < cfg.patch_size or w < cfg.patch_size:
            raise ValueError(
                f"pixel_values of {h}x{w} pixels is smaller than one {cfg.patch_size}px patch"
            )
        patches = self.patch_embed(pixel_values)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)
        pos = resize_pos_embed(
            self.pos_embed[...], cfg.grid, (h // cfg.patch_size, w // cfg.patch_size)
        )
        x = x + pos.astype(self.dtype)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        x = sharding.constrain(x, sharding.HIDDEN)

        def body(block: ViTBlock, carry: jax.Array, _: None) -> tuple[jax.Array, None]:
            return block(carry), None

        x, _ = stack.apply_layers(
            self.layers, body, x, scan=cfg.scan_layers, remat_policy=cfg.remat_policy
        )
        return x


__all__ = [
    "VisionConfig",
    "VisionTransformer",
    "resize_pos_embed",
]
