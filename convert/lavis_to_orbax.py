"""Convert a LAVIS BLIP-2 checkpoint ({'model': state_dict} with opt_proj) or a VPGTrans
checkpoint (llama_proj / opt_proj, trainable parts only) into a vpgtrans-jax model directory.
The LLM comes from --llm, the ViT from the checkpoint or --vit. Pickles are opened with
torch.load(weights_only=True) only. docs/checkpoints.md describes the formats.

  python convert/lavis_to_orbax.py --src blip2_pretrained_opt6.7b.pth --llm HF_LLM_DIR --out DIR \\
      [--vit eva_vit_g.pth]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.checkpoint.convert import lavis_to_orbax  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "LAVIS / VPGTrans .pth checkpoint")
_LLM = flags.DEFINE_string(
    "llm", None, "HF LLM directory or hub id (or a vpgtrans-jax LLM/VL model directory) whose "
    "hidden size matches the checkpoint's projector",
)  # fmt: skip
_OUT = flags.DEFINE_string("out", None, "model directory to create")
_VIT = flags.DEFINE_string(
    "vit", None, "EVA ViT .pth (LAVIS eva_vit_g.pth) for checkpoints without visual_encoder.*"
)
_VPG_CONFIG = flags.DEFINE_string(
    "vpg-config", None, "JSON giving the ViT and Q-Former architecture: a HF BLIP-2 config.json, "
    "a vpgtrans_model.json, or {'vision': {...}, 'qformer': {...}} (default: BLIP-2's EVA "
    "ViT-g/14 with 39 blocks and the BERT-base Q-Former)",
)  # fmt: skip
_EPS = flags.DEFINE_float("ln-vision-eps", 1e-5, "eps of ln_vision (LAVIS: 1e-5)")
_REF_LLM = flags.DEFINE_bool(
    "reference-llm", False, "record --llm as the LLM's source instead of copying its weights"
)
_ALLOW = flags.DEFINE_multi_string(
    "allow-unexpected", [], "skip checkpoint tensors whose full name matches this REGEX "
    "(repeatable); known-optional ones are always skipped and reported",
)  # fmt: skip
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "stored dtype")
_SCAN = flags.DEFINE_bool("scan-layers", False, "store per-layer tensors stacked (scan layout)")
_GROUP = flags.DEFINE_string("group-size", "128MB", "Orbax group size; bounds memory")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
flags.mark_flags_as_required(["src", "llm", "out"])


def main(argv: list[str]) -> None:
    lavis_to_orbax(
        _SRC.value, _LLM.value, _OUT.value, vit=_VIT.value, vpg_config=_VPG_CONFIG.value,
        dtype=_DTYPE.value, scan_layers=_SCAN.value, ln_vision_eps=_EPS.value,
        reference_llm=_REF_LLM.value, allow_unexpected=_ALLOW.value, overwrite=_OVERWRITE.value,
        group_bytes=cli.parse_size(_GROUP.value),
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
