"""Analytic FLOP count of one training step (matrix multiplications only).

Counts ``2 * m * n * k`` per matmul. Backward costs depend on what is trained:

- a trainable module: forward + input gradient + weight gradient (3x its forward);
- a frozen module that gradients must cross (the LLM, whose input gradient feeds the soft prompt;
  or a frozen piece between two trainable ones): forward + input gradient only. For linear layers
  that is 2x; for attention's two activation-activation matmuls both operands need gradients, 3x;
- a module upstream of everything trainable (the ViT, and the Q-Former in stage 1): forward only;
- the first trainable module on the path (its input is not trained): forward + weight gradient.

The train-step test checks this against XLA's cost analysis of the compiled step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from vpgtrans_jax.models.vl_model import VLConfig


@dataclasses.dataclass
class Flops:
    """Forward FLOPs of a module split into weight matmuls and activation-activation matmuls."""

    linear: float = 0.0
    attention: float = 0.0

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.linear + other.linear, self.attention + other.attention)

    def scaled(self, k: float) -> Flops:
        return Flops(self.linear * k, self.attention * k)

    @property
    def total(self) -> float:
        return self.linear + self.attention


def vit_forward(cfg: VLConfig, batch: int) -> Flops:
    v = cfg.vision
    n = v.num_patches
    t = n + 1
    d = v.hidden_size
    patch = 2 * n * (v.patch_size**2 * v.num_channels) * d
    per_layer_linear = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * v.mlp_dim
    per_layer_attn = 2 * 2 * t * t * d
    return Flops(
        batch * (patch + v.num_layers * per_layer_linear), batch * v.num_layers * per_layer_attn
    )


def qformer_forward(cfg: VLConfig, batch: int) -> tuple[Flops, Flops]:
    """(everything except the cross-attention k/v projections, those k/v projections)."""
    q = cfg.num_query_tokens
    f = cfg.qformer
    d, n, dv = f.hidden_size, cfg.vision.num_patches + 1, f.encoder_hidden_size
    lin = attn = kv = 0.0
    for i in range(f.num_layers):
        lin += 4 * 2 * q * d * d + 2 * 2 * q * d * f.intermediate_size
        attn += 2 * 2 * q * q * d
        if i % f.cross_attention_frequency == 0:
            lin += 2 * 2 * q * d * d  # cross q and output projections
            kv += 2 * 2 * n * dv * d
            attn += 2 * 2 * q * n * d
    return Flops(batch * lin, batch * attn), Flops(batch * kv, 0.0)


def llm_forward(cfg: VLConfig, batch: int, seq: int, logit_positions: int) -> Flops:
    """The LLM's forward matmuls (its family's ``matmul_flops``) for ``batch`` sequences."""
    linear, attention = cfg.llm.matmul_flops(seq, logit_positions)
    return Flops(batch * linear, batch * attention)


def _cost(fwd: Flops, trained: bool, grad_in: bool) -> Flops:
    """Forward + backward FLOPs of a module (see the module docstring)."""
    back_linear = (fwd.linear if trained else 0.0) + (fwd.linear if grad_in else 0.0)
    # Activation-activation matmuls back-propagate to both operands whenever anything inside or
    # upstream of the module needs a gradient.
    back_attn = 2 * fwd.attention if (trained or grad_in) else 0.0
    return Flops(fwd.linear + back_linear, fwd.attention + back_attn)


def train_step_flops(
    cfg: VLConfig, trainable: Sequence[str], batch: int, text_len: int
) -> dict[str, float]:
    """Analytic matmul FLOPs of one training step (global batch) by component, and ``total``."""
    trainable = set(trainable)
    q = cfg.num_query_tokens
    qf_main, qf_kv = qformer_forward(cfg, batch)
    proj = Flops(2 * batch * q * cfg.qformer.hidden_size * cfg.llm.input_embed_dim, 0.0)
    llm = llm_forward(cfg, batch, q + text_len, text_len)

    image_side = bool(trainable & {"vision", "ln_vision"})  # gradients reach the image features
    query_side = image_side or bool(trainable & {"query_tokens", "qformer"})
    qf_trained = "qformer" in trainable
    parts = {
        "vit": _cost(vit_forward(cfg, batch), "vision" in trainable, False),
        "qformer": _cost(
            qf_main, qf_trained, query_side and (image_side or "query_tokens" in trainable)
        )
        + _cost(qf_kv, qf_trained, image_side),
        "projector": _cost(proj, "projector" in trainable, query_side),
        "llm": _cost(llm, "llm" in trainable, True),
    }
    out = {k: v.total for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out
