"""The baseline arms of a transfer: what VPGTrans is measured against.

- ``tfs`` (train from scratch): the VPG trained on the target LLM from random initialisation —
  random Q-Former, query tokens, ln_vision and projector — with the source's frozen ViT. What a
  VL-LLM for the target costs without VPGTrans.
- ``inherit``: the source VPG (ln_vision, query tokens, Q-Former) with a fresh random projector:
  no word converter, no merge, no projector warm-up (the paper's "VPG inherit" ablation).

Each arm starts from a model directory written here (``<arm>_init/``: the VPG parts stored, the
ViT referenced to the source checkpoint and the LLM to the target LLM, like the projector merge)
and is then trained with the same stage config, data, schedule and evaluation points as VPGTrans's
stage 2 (``transfer.pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.train.builder import random_vpg
from vpgtrans_jax.transfer.merge import target_llm_config

ARMS = ("tfs", "inherit")
_KEEP = {"tfs": (), "inherit": ("ln_vision", "query_tokens", "qformer")}


def write_arm_init(
    arm: str,
    source_checkpoint: str,
    target_llm: str,
    out_dir: str,
    *,
    seed: int,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Writes the starting model of baseline ``arm`` to ``out_dir``; returns its manifest.

    The random parts are drawn as ``VLModel`` initialises them (``train.builder.random_vpg``)
    with ``seed``; the kept parts come from the source checkpoint (a model directory or a HF
    BLIP-2 directory), in the unscanned Q-Former layout (as the merge writes it).
    """
    if arm not in ARMS:
        raise ValueError(f"baseline {arm!r}: expected one of {ARMS}")
    keep = _KEEP[arm]
    spec, flat = model_dir.read_parts(
        source_checkpoint, list(keep) or ["projector"], qformer={"scan_layers": False}
    )
    if spec.vl is None:
        raise ValueError(f"{source_checkpoint}: holds only an LLM; there is no VPG to start from")
    cfg = spec.vl.replace(llm=target_llm_config(target_llm))
    params = {k: v for k, v in random_vpg(cfg, seed).items() if k.split(".", 1)[0] not in keep}
    params.update({k: v for k, v in flat.items() if k.split(".", 1)[0] in keep})
    src = paths.abspath(source_checkpoint)
    origins = {p: (src if p in keep else f"random (seed {seed})") for p in VPG_PARTS}
    manifest = model_dir.save_model_dir(
        params, out_dir, cfg,
        sources={"vision": src, "llm": paths.abspath(target_llm)},
        origins=origins,
        info={"stage": "baseline init", "arm": arm, "seed": seed, "source_checkpoint": src},
        overwrite=True,  # a half-finished earlier attempt of this very step
        created_by="vpgtrans_jax.transfer.baselines",
    )  # fmt: skip
    if log:
        kept = ", ".join(keep) or "nothing"
        log(f"baseline {arm}: kept {kept} of the source VPG, the rest random; wrote {out_dir}")
    return manifest
