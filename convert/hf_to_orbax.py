"""Convert a Hugging Face BLIP-2 directory (Blip2ForConditionalGeneration) or a HF LLM directory
(LlamaForCausalLM incl. Vicuna, OPTForCausalLM; single-file or sharded safetensors /
pytorch_model.bin) into a vpgtrans-jax model directory. docs/checkpoints.md describes the formats.

  python convert/hf_to_orbax.py --src HF_DIR --out DIR [--dtype bfloat16] [--scan-layers]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.checkpoint.convert import hf_to_orbax  # noqa: E402

_SRC = flags.DEFINE_string(
    "src", None, "HF model directory (config.json + weights), or a HF hub id (owner/name)"
)
_OUT = flags.DEFINE_string("out", None, "model directory to create")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "stored dtype")
_SCAN = flags.DEFINE_bool(
    "scan-layers", False, "store per-layer tensors stacked on a leading layer axis (the layout of "
    "scan_layers=True towers); loading converts either way",
)  # fmt: skip
_GROUP = flags.DEFINE_string(
    "group-size", "128MB", "write parameters in Orbax groups of about this size; bounds memory"
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "replace --out if it exists (only once the new output is complete)"
)
flags.mark_flags_as_required(["src", "out"])


def main(argv: list[str]) -> None:
    hf_to_orbax(_SRC.value, _OUT.value, dtype=_DTYPE.value, scan_layers=_SCAN.value,
                overwrite=_OVERWRITE.value, group_bytes=cli.parse_size(_GROUP.value))  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
