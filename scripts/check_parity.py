"""Checks vpgtrans-jax against PyTorch on a BLIP-2 checkpoint directory.

With no --hf_dir, builds a tiny random Hugging Face BLIP-2 (offline), saves it, loads it with
``vpgtrans_jax.load`` and compares the text logits with ``Blip2ForConditionalGeneration``.
Exit status 1 when a difference exceeds --tolerance.

  python scripts/check_parity.py                    # tiny OPT- and LLaMA-based models
  python scripts/check_parity.py --hf_dir DIR       # your own HF BLIP-2 directory (fp32 compare)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from tests.torch_reference import check_parity  # noqa: E402
from vpgtrans_jax import cli  # noqa: E402

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF BLIP-2 directory (default: tiny random ones)")
_LLM = flags.DEFINE_enum(
    "llm", "both", ["opt", "llama", "both"], "text model of the tiny random BLIP-2"
)
_BATCH = flags.DEFINE_integer("batch", 2, "batch size of the random inputs")
_TEXT_LEN = flags.DEFINE_integer("text_len", 8, "text length of the random inputs")
_SCAN = flags.DEFINE_bool("scan_layers", False, "load with scanned layers")
_TOL = flags.DEFINE_float("tolerance", 1e-4, "max abs logit difference allowed")


def main(argv: list[str]) -> int:
    llms = ("opt", "llama") if _LLM.value == "both" else (_LLM.value,)
    ok = check_parity(_HF_DIR.value, llms, batch=_BATCH.value, text_len=_TEXT_LEN.value,
                      scan_layers=_SCAN.value, tolerance=_TOL.value)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    cli.run(main)
