"""BLIP-2 Q-Former, query path only (the variant that feeds an LLM), in Flax NNX.

The learned queries go through the embeddings LayerNorm and then BERT-style post-LN layers:
``x = LN(x + dense(self_attn(x)))``; on layers ``i % cross_attention_frequency == 0`` also
``x = LN(x + dense(cross_attn(x, image)))``; then the query FFN
``x = LN(x + output_query(act(intermediate_query(x))))``. Dropout is omitted (inference semantics).

Parameter layout. Unscanned: ``layers.{i}`` mirrors HF's ``encoder.layer.{i}``, with
``layers.{i}.cross_attn`` on cross-attention layers. Scanned: the homogeneous part (self-attention
and FFN) of all layers is one stacked ``layers`` module with a leading ``[num_layers]`` axis, and
the cross-attentions are ``cross_attn.{g}`` (one per group). The scan runs over groups of
``cross_attention_frequency`` consecutive layers (the repeating unit); cross-attention weights are
stacked on the fly. Keeping them unstacked lets every weight rule index HF layers directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.nn import attention, stack
from vpgtrans_jax.nn.layers import Dense, LayerNorm, activation


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    """Q-Former hyper-parameters (defaults: BLIP-2's BERT-base Q-Former over ViT-g features)."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    hidden_act: str = "gelu"
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str | None = None
    # nn.attention implementation: einsum (reference), xla, cudnn, pallas or auto.
    attention_impl: str = "einsum"

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "intermediate_size", "encoder_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"QFormerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"QFormerConfig.hidden_size={self.hidden_size} must be a multiple of "
                f"num_heads={self.num_heads}"
            )
        if self.cross_attention_frequency < 1:
            raise ValueError(
                f"QFormerConfig.cross_attention_frequency must be >= 1, "
                f"got {self.cross_attention_frequency}"
            )
        if self.scan_layers and self.num_layers % self.cross_attention_frequency:
            raise ValueError(
                f"QFormerConfig: scan_layers=True scans groups of cross_attention_frequency="
                f"{self.cross_attention_frequency} layers, so num_layers={self.num_layers} must be "
                f"a multiple of it (or set scan_layers=False)"
            )
        activation(self.hidden_act)  # raises on an unknown name
        stack.checkpoint_policy(self.remat_policy)  # raises on an unknown policy
        attention.check_implementation(self.attention_impl, "QFormerConfig.attention_impl")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cross_layers(self) -> list[int]:
        """Indices of the layers with cross-attention to the image features."""
        return list(range(0, self.num_layers, self.cross_attention_frequency))


class QFormerAttention(nnx.Module):
    """BERT attention + output sub-layer: ``LN(x + dense(mha(x, kv)))``.

    ``kv_dim`` is the width of the key/value source: ``hidden_size`` for self-attention, the
    vision width for cross-attention.
    """

    def __init__(self, cfg: QFormerConfig, kv_dim: int, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.dtype = jnp.dtype(cfg.dtype)
        self.attention_impl = cfg.attention_impl
        kw = dict(dtype=self.dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.query = Dense(d, d, axes=("embed", "heads"), **kw)
        self.key = Dense(kv_dim, d, axes=("embed", "kv_heads"), **kw)
        self.value = Dense(kv_dim, d, axes=("embed", "kv_heads"), **kw)
        self.dense = Dense(d, d, axes=("heads", "embed"), **kw)
        self.norm = LayerNorm(d, eps=cfg.layer_norm_eps, **kw)

    def __call__(self, x: jax.Array, kv: jax.Array, mask: jax.Array | None) -> jax.Array:
        """float[B, Q, D] queries over kv float[B, S, Dkv] -> float[B, Q, D].

        ``mask`` is bool[B, 1, 1, S] (True = attend) or None.
        """
        b, t, _ = x.shape
        s = kv.shape[1]
        q = self.query(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.key(kv).reshape(b, s, self.num_heads, self.head_dim)
        v = self.value(kv).reshape(b, s, self.num_heads, self.head_dim)
        q, k, v = (sharding.constrain(a, sharding.HEADS) for a in (q, k, v))
        out = attention.dot_product_attention(
            q,
            k,
            v,
            mask,
            scale=self.head_dim**-0.5,
            dtype=self.dtype,
            implementation=self.attention_impl,
        )
        return self.norm(x.astype(self.dtype) + self.dense(out.reshape(b, t, -1)))


class QFormerFFN(nnx.Module):
    """Query FFN (``intermediate_query`` / ``output_query``): ``LN(x + fc2(act(fc1(x))))``."""

    def __init__(self, cfg: QFormerConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), **kw)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)
        self.act_name = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[B, Q, D] -> float[B, Q, D]."""
        h = activation(self.act_name)(self.fc1(x))
        h = sharding.constrain(h, sharding.MLP)
        return self.norm(x + self.fc2(h))


class QFormerLayer(nnx.Module):
    """Self-attention, optional cross-attention to the image, query FFN."""

    def __init__(self, cfg: QFormerConfig, has_cross_attention: bool, *, rngs: nnx.Rngs):
        self.self_attn = QFormerAttention(cfg, cfg.hidden_size, rngs=rngs)
        self.cross_attn = (
            QFormerAttention(cfg, cfg.encoder_hidden_size, rngs=rngs)
            if has_cross_attention
            else None
        )
        self.ffn = QFormerFFN(cfg, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        image: jax.Array,
        image_mask: jax.Array | None,
        cross_attn: QFormerAttention | None = None,
    ) -> jax.Array:
        """x: float[B, Q, D]; image: float[B, N, Dv]; image_mask: bool[B, 1, 1, N] | None.

        ``cross_attn`` overrides the layer's own (the scanned layout keeps them outside).
        """
        x = self.self_attn(x, x, None)
        cross = cross_attn if cross_attn is not None else self.cross_attn
        if cross is not None:
            x = cross(x, image, image_mask)
        x = self.ffn(x)
        return sharding.constrain(x, sharding.HIDDEN)


class QFormer(nnx.Module):
    """BLIP-2 Q-Former over image features, query path only."""

    def __init__(self, cfg: QFormerConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        self.layernorm = LayerNorm(
            cfg.hidden_size,
            eps=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=jnp.dtype(cfg.param_dtype),
            rngs=rngs,
        )
        f = cfg.cross_attention_frequency
        if cfg.scan_layers:
            self.layers = stack.build_layers(
                lambda r: QFormerLayer(cfg, False, rngs=r), cfg.num_layers, rngs, scan=True
            )
            self.cross_attn = nnx.List(
                [
                    QFormerAttention(cfg, cfg.encoder_hidden_size, rngs=rngs)
                    for _ in cfg.cross_layers
                ]
            )
        else:
            self.layers = nnx.List(
                [QFormerLayer(cfg, i % f == 0, rngs=rngs) for i in range(cfg.num_layers)]
            )
            self.cross_attn = None

    def __call__(
        self,
        query_embeds: jax.Array,
        encoder_hidden_states: jax.Array,
        encoder_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the queries over the image features.

        Args:
          query_embeds: float[B, Q, D] (the learned query tokens broadcast over the batch).
          encoder_hidden_states: float[B, N, Dv] image features (after ``ln_vision``).
          encoder_mask: int/bool[B, N], 1 for real image tokens; None means all valid.

        Returns:
          float[B, Q, D] in the compute dtype.
        """
        cfg = self.config
        if query_embeds.ndim != 3 or query_embeds.shape[-1] != cfg.hidden_size:
            raise ValueError(
                f"query_embeds must be float[B, Q, {cfg.hidden_size}], "
                f"got shape {tuple(query_embeds.shape)}"
            )
        b = query_embeds.shape[0]
        if (
            encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[0] != b
            or (encoder_hidden_states.shape[-1] != cfg.encoder_hidden_size)
        ):
            raise ValueError(
                f"encoder_hidden_states must be float[{b}, N, {cfg.encoder_hidden_size}], "
                f"got shape {tuple(encoder_hidden_states.shape)}"
            )
        mask = None
        if encoder_mask is not None:
            if encoder_mask.shape != encoder_hidden_states.shape[:2]:
                raise ValueError(
                    f"encoder_mask must have shape {tuple(encoder_hidden_states.shape[:2])}, "
                    f"got {tuple(encoder_mask.shape)}"
                )
            mask = attention.padding_mask(encoder_mask)

        x = sharding.constrain(self.layernorm(query_embeds), sharding.HIDDEN)
        image = encoder_hidden_states.astype(self.dtype)
        if cfg.scan_layers:
            return self._scan_groups(x, image, mask)

        def body(layer: QFormerLayer, carry: jax.Array, _: None) -> tuple[jax.Array, None]:
            return layer(carry, image, mask), None

        x, _ = stack.apply_layers(self.layers, body, x, scan=False, remat_policy=cfg.remat_policy)
        return x

    def _scan_groups(self, x: jax.Array, image: jax.Array, mask: jax.Array | None) -> jax.Array:
        """Scans groups of ``f`` layers; the group's first layer cross-attends.

        Layer parameters [L, ...] are viewed as [G, f, ...] and the G cross-attentions are
        stacked to [G, ...] as the scan's per-step input.
        """
        cfg = self.config
        f = cfg.cross_attention_frequency
        g = cfg.num_layers // f
        layer_def, layer_state = nnx.split(self.layers)
        grouped = nnx.merge(
            layer_def, jax.tree.map(lambda a: a.reshape(g, f, *a.shape[1:]), layer_state)
        )
        cross_def = nnx.graphdef(self.cross_attn[0])
        cross_states = [nnx.state(c) for c in self.cross_attn]
        cross_xs = jax.tree.map(lambda *a: jnp.stack(a), *cross_states)

        def body(group: QFormerLayer, carry: jax.Array, cross_state: Any) -> tuple[jax.Array, None]:
            group_def, group_state = nnx.split(group)
            cross = nnx.merge(cross_def, cross_state)
            for j in range(f):
                layer = nnx.merge(group_def, jax.tree.map(lambda a, j=j: a[j], group_state))
                carry = layer(carry, image, mask, cross if j == 0 else None)
            return carry, None

        x, _ = stack.apply_layers(
            grouped, body, x, cross_xs, scan=True, remat_policy=cfg.remat_policy
        )
        return x


# ---- Hugging Face weights ----------------------------------------------------------------------

__all__ = ["QFormerConfig", "QFormer"]
