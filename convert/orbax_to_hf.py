"""Write a vpgtrans-jax VL model directory as a Hugging Face BLIP-2 directory (config.json +
safetensors) for Blip2ForConditionalGeneration.from_pretrained. Referenced towers are read from
their sources; scanned layers are unstacked.

  python convert/orbax_to_hf.py --src DIR --out HF_DIR [--dtype bfloat16]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.checkpoint.convert import orbax_to_hf  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "vpgtrans-jax model directory")
_OUT = flags.DEFINE_string("out", None, "HF directory to create")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16", "float16"], "cast tensors to this dtype (default: as "
    "stored)",
)  # fmt: skip
_IMAGE_TOKEN = flags.DEFINE_integer(
    "image-token-index", None, "id of the image placeholder token (default: the one recorded "
    "from the source HF BLIP-2; required otherwise)",
)  # fmt: skip
_SHARD = flags.DEFINE_string("max-shard-size", "5GB", "largest safetensors shard")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
flags.mark_flags_as_required(["src", "out"])


def main(argv: list[str]) -> None:
    orbax_to_hf(
        _SRC.value, _OUT.value, dtype=_DTYPE.value, image_token_index=_IMAGE_TOKEN.value,
        max_shard_bytes=cli.parse_size(_SHARD.value), overwrite=_OVERWRITE.value,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
