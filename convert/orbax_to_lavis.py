"""Write the trainable parts of a vpgtrans-jax VL model directory (ln_vision, Q-Former, query
tokens, projector) as a LAVIS / VPGTrans checkpoint ({'model': state_dict}) that the original code
loads.

  python convert/orbax_to_lavis.py --src DIR --out CKPT.pth [--proj-name llama_proj]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.checkpoint.convert import orbax_to_lavis  # noqa: E402
from vpgtrans_jax.checkpoint.lavis import PROJ_NAMES  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "vpgtrans-jax model directory")
_OUT = flags.DEFINE_string("out", None, ".pth file to create")
_PROJ = flags.DEFINE_enum(
    "proj-name", None, list(PROJ_NAMES), "projector key (default: the one converted from, else "
    "by LLM family)",
)  # fmt: skip
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16", "float16"], "cast tensors (default: as stored)"
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
flags.mark_flags_as_required(["src", "out"])


def main(argv: list[str]) -> None:
    orbax_to_lavis(_SRC.value, _OUT.value, proj_name=_PROJ.value, dtype=_DTYPE.value,
                   overwrite=_OVERWRITE.value)  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
