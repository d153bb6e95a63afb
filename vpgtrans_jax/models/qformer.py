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
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vpgtrans_jax import attention, sharding, stack
from vpgtrans_jax.layers import Dense, LayerNorm, activation
from vpgtrans_jax.weights import WeightRule, layer_rules

_ACT_AXES = ("activation_batch", "activation_length", "activation_embed")
_HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", None)
_HF_TYPE = "blip_2_qformer"
_HF_COMPOSITE_TYPE = "blip-2"


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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cross_layers(self) -> list[int]:
        """Indices of the layers with cross-attention to the image features."""
        return list(range(0, self.num_layers, self.cross_attention_frequency))

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> QFormerConfig:
        """From a ``Blip2QFormerConfig`` (or a full ``Blip2Config``), as an object or a dict.

        Dropout probabilities are accepted and ignored (the query path runs without dropout).
        """
        c = _as_dict(hf_config)
        if c.get("model_type") == _HF_COMPOSITE_TYPE or (
            "qformer_config" in c and "hidden_size" not in c
        ):
            outer = c
            c = _as_dict(outer.get("qformer_config") or {})
            # Blip2Config ties the cross-attention input width to the vision width.
            vision = _as_dict(outer.get("vision_config") or {})
            if "hidden_size" in vision:
                c["encoder_hidden_size"] = vision["hidden_size"]
        model_type = c.get("model_type")
        if model_type is not None and model_type != _HF_TYPE:
            raise ValueError(
                f"QFormerConfig.from_hf: model_type {model_type!r} is not supported; "
                f"expected {_HF_TYPE!r}"
            )
        act = c.get("hidden_act", "gelu")
        if not isinstance(act, str):
            raise ValueError(f"QFormerConfig.from_hf: hidden_act must be a name, got {act!r}")
        fields = dict(
            hidden_size=int(c.get("hidden_size", 768)),
            num_layers=int(c.get("num_hidden_layers", 12)),
            num_heads=int(c.get("num_attention_heads", 12)),
            intermediate_size=int(c.get("intermediate_size", 3072)),
            layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
            cross_attention_frequency=int(c.get("cross_attention_frequency", 2)),
            encoder_hidden_size=int(c.get("encoder_hidden_size", 1408)),
            hidden_act=act,
        )
        fields.update(overrides)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - valid)
        if unknown:
            raise ValueError(
                f"QFormerConfig: unknown fields {unknown}; valid fields are {sorted(valid)}"
            )
        return cls(**fields)


def _as_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise ValueError(f"expected a transformers config or a dict, got {type(hf_config).__name__}")


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
        q, k, v = (sharding.constrain(a, _HEAD_AXES) for a in (q, k, v))
        out = attention.dot_product_attention(
            q, k, v, mask, scale=self.head_dim**-0.5, dtype=self.dtype
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
        h = sharding.constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
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
        return sharding.constrain(x, _ACT_AXES)


class QFormer(nnx.Module):
    """BLIP-2 Q-Former over image features, query path only."""

    def __init__(self, cfg: QFormerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
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
        cfg = self.cfg
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

        x = sharding.constrain(self.layernorm(query_embeds), _ACT_AXES)
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
        cfg = self.cfg
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

_ATTN_PARTS = (
    ("query.kernel", "attention.query.weight", "linear"),
    ("query.bias", "attention.query.bias", "copy"),
    ("key.kernel", "attention.key.weight", "linear"),
    ("key.bias", "attention.key.bias", "copy"),
    ("value.kernel", "attention.value.weight", "linear"),
    ("value.bias", "attention.value.bias", "copy"),
    ("dense.kernel", "output.dense.weight", "linear"),
    ("dense.bias", "output.dense.bias", "copy"),
    ("norm.scale", "output.LayerNorm.weight", "copy"),
    ("norm.bias", "output.LayerNorm.bias", "copy"),
)
_FFN_PARTS = (
    ("fc1.kernel", "intermediate_query.dense.weight", "linear"),
    ("fc1.bias", "intermediate_query.dense.bias", "copy"),
    ("fc2.kernel", "output_query.dense.weight", "linear"),
    ("fc2.bias", "output_query.dense.bias", "copy"),
    ("norm.scale", "output_query.LayerNorm.weight", "copy"),
    ("norm.bias", "output_query.LayerNorm.bias", "copy"),
)


def hf_weight_map(cfg: QFormerConfig) -> list[WeightRule]:
    """Rules from ``transformers.Blip2QFormerModel`` state-dict keys to our parameters."""
    rules = [
        WeightRule("layernorm.scale", "layernorm.weight"),
        WeightRule("layernorm.bias", "layernorm.bias"),
    ]
    hf = "encoder.layer.{i}."
    per_layer = [("layers.{i}.self_attn." + o, hf + "attention." + h, k) for o, h, k in _ATTN_PARTS]
    per_layer += [("layers.{i}.ffn." + o, hf + h, k) for o, h, k in _FFN_PARTS]
    rules += layer_rules(per_layer, cfg.num_layers, cfg.scan_layers)
    # Cross-attention exists on every f-th layer only: one explicit rule per such layer.
    for g, i in enumerate(cfg.cross_layers):
        ours = f"cross_attn.{g}." if cfg.scan_layers else f"layers.{i}.cross_attn."
        rules += [
            WeightRule(ours + o, f"encoder.layer.{i}.crossattention." + h, k)
            for o, h, k in _ATTN_PARTS
        ]
    return rules


_UNUSED = re.compile(
    r"encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias)"
    r"|embeddings\.(word_embeddings\.weight|position_embeddings\.weight|position_ids)"
)


def is_unused_hf_key(key: str) -> bool:
    """True for text-path keys (relative to ``Blip2QFormerModel``) the query path never reads.

    These are each layer's text FFN (``intermediate.dense``, ``output.dense``,
    ``output.LayerNorm``) and word/position embeddings when present.
    """
    return _UNUSED.fullmatch(key) is not None


__all__ = ["QFormerConfig", "QFormer", "hf_weight_map", "is_unused_hf_key"]
