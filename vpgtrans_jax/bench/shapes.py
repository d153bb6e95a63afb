"""Model shapes of the training benchmarks, and what each accelerator offers (peak FLOP/s, memory).

``--scale`` picks a VL model (random weights, nothing downloaded):

- ``tiny``: a few-layer toy, to check that a script runs end to end (CPU, seconds);
- ``small``: ViT-B/16 + Q-Former 12x768 + OPT-125m / a LLaMA of that size (the CPU comparison
  with PyTorch);
- ``base``: ViT-L/14 + Q-Former + OPT-1.3B / a 1B LLaMA;
- ``real``: EVA ViT-g/14 + Q-Former + OPT-6.7B / LLaMA-7B, the shapes of the paper's runs.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.models.vl_model import VLConfig

SCALES = ("tiny", "small", "base", "real")
STAGE_TRAINABLE = {
    1: ("projector",),
    2: ("ln_vision", "query_tokens", "qformer", "projector"),
    3: ("ln_vision", "query_tokens", "qformer", "projector"),
}

_VISION = {
    "tiny": dict(image_size=32, patch_size=8, hidden_size=64, num_layers=1, num_heads=4,
                 mlp_dim=128),
    "small": dict(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
                  mlp_dim=3072),
    "base": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                 mlp_dim=4096),
    "real": dict(image_size=224, patch_size=14, hidden_size=1408, num_layers=39, num_heads=16,
                 mlp_dim=6144),
}  # fmt: skip
_QFORMER = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
    "small": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}
_OPT = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=1, num_heads=4, ffn_dim=128),
    "small": dict(vocab_size=50272, hidden_size=768, num_layers=12, num_heads=12, ffn_dim=3072),
    "base": dict(vocab_size=50272, hidden_size=2048, num_layers=24, num_heads=32, ffn_dim=8192),
    "real": dict(vocab_size=50272, hidden_size=4096, num_layers=32, num_heads=32, ffn_dim=16384),
}
_LLAMA = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                 intermediate_size=128),
    "small": dict(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
                  num_kv_heads=12, intermediate_size=2048),
    "base": dict(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32,
                 num_kv_heads=4, intermediate_size=5632),
    "real": dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                 num_kv_heads=32, intermediate_size=11008),
}  # fmt: skip

# Dense peak FLOP/s per chip by device_kind prefix: (bf16, fp32). GPUs' fp32 is the non-tensor-
# core rate (XLA's default f32 matmuls on GPU use TF32 only when asked).
PEAK_FLOPS = {
    "NVIDIA H200": (989e12, 67e12),
    "NVIDIA H100": (989e12, 67e12),
    "NVIDIA A100": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5e": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v5": (459e12, 459e12 / 2),
    "TPU v6 lite": (918e12, 918e12 / 2),
}
# Memory per chip (bytes) of the devices the memory planner fits against.
DEVICE_MEMORY = {
    "v5e": 16 * 2**30,
    "v4": 32 * 2**30,
    "v5p": 95 * 2**30,
    "a100": 80 * 2**30,
    "h100": 80 * 2**30,
    "h200": 141 * 2**30,
}


def vl_config(
    scale: str,
    llm: str = "opt",
    *,
    precision: str = "fp32",
    attention_impl: str = "auto",
    scan_layers: bool = False,
    remat_policy: str | None = None,
    num_query_tokens: int = 32,
) -> VLConfig:
    """The benchmark model at ``scale``.

    ``precision="fp32"``: every tower in float32. ``"bf16"``: the frozen ViT and LLM compute and
    store in bfloat16, the trained VPG side stays float32 (the stage configs' setting).
    """
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {SCALES}, got {scale!r}")
    if llm not in ("opt", "llama"):
        raise ValueError(f"--llm must be 'opt' or 'llama', got {llm!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision must be 'fp32' or 'bf16', got {precision!r}")
    frozen = "bfloat16" if precision == "bf16" else "float32"
    knobs = dict(attention_impl=attention_impl, scan_layers=scan_layers,
                 remat_policy=remat_policy)  # fmt: skip
    fz = dict(dtype=frozen, param_dtype=frozen, **knobs)
    vision = VisionConfig(**_VISION[scale], **fz)
    qf = _QFORMER.get(scale, _QFORMER["small"])
    # The Q-Former scans groups of (self, cross) layers; its layer count is always even here.
    qformer = QFormerConfig(**qf, encoder_hidden_size=vision.hidden_size, dtype="float32",
                            param_dtype="float32", **knobs)  # fmt: skip
    if llm == "opt":
        text = OPTConfig(**_OPT[scale], max_position_embeddings=2048, **fz)
    else:
        text = LlamaConfig(**_LLAMA[scale], max_position_embeddings=2048, **fz)
    q = 8 if scale == "tiny" else num_query_tokens
    return VLConfig(vision=vision, qformer=qformer, llm=text, num_query_tokens=q)


def peak_flops(device: jax.Device, precision: str) -> float | None:
    """Dense peak FLOP/s of one chip in ``precision`` (None for a kind not in the table)."""
    kind = getattr(device, "device_kind", "")
    for prefix, (bf16, fp32) in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return bf16 if precision == "bf16" else fp32
    return None


@functools.cache
def measured_matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of a square float32 matmul on the default device, as XLA runs it (the CPU's
    peak for MFU, where no table entry exists)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, 4, lambda _, y: (y @ a) * (1.0 / n), x))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 4 * 2 * n**3 / best


def describe(cfg: VLConfig) -> str:
    v, q, t = cfg.vision, cfg.qformer, cfg.llm
    return (
        f"ViT {v.num_layers}x{v.hidden_size} ({v.image_size}px/{v.patch_size}) + Q-Former "
        f"{q.num_layers}x{q.hidden_size} ({cfg.num_query_tokens} queries) + {cfg.llm_type} "
        f"{t.num_layers}x{t.hidden_size} (vocab {t.vocab_size})"
    )
