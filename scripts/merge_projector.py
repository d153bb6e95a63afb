#!/usr/bin/env python
"""Merge a source VL-LLM's projector with a word converter: the VPGTrans stage-1 initialisation.

Example:
  python scripts/merge_projector.py --src_checkpoint /ckpt/blip2-opt-2.7b \\
      --converter /work/conv_opt2.7b_to_6.7b --out /work/vpg_init_opt6.7b

Computes W_t = W_w @ W_s, b_t = W_w @ b_s + b_w and writes the target VL model as a model
directory: the source VPG (ln_vision, query_tokens, Q-Former) and the merged projector stored,
the source ViT and the target LLM referenced. A stage-1 config names it as model.path (or
model.vpg_init); vpgtrans_jax.load opens it. --src_checkpoint is a HF BLIP-2 or vpgtrans-jax
model directory (only its VPG tensors are read). Exit status 2 on bad input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.transfer.merge import merge_projector  # noqa: E402

_SRC = flags.DEFINE_string("src_checkpoint", None, "source VL-LLM checkpoint directory")
_CONVERTER = flags.DEFINE_string("converter", None, "scripts/word_converter.py --out directory")
_OUT = flags.DEFINE_string("out", None, "model directory to create")
_TGT = flags.DEFINE_string(
    "tgt_llm", None, "target LLM directory (default: the one the converter was trained for)"
)
_SCAN = flags.DEFINE_bool(
    "qformer_scan_layers", False, "store the Q-Former scanned (match the stage config's layout)"
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
flags.mark_flags_as_required(["src_checkpoint", "converter", "out"])


def main(argv: list[str]) -> None:
    merge_projector(_SRC.value, _CONVERTER.value, _OUT.value, target_llm=_TGT.value,
                    qformer_scan_layers=_SCAN.value, overwrite=_OVERWRITE.value)  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
