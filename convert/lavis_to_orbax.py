"""LAVIS BLIP-2 / VPGTrans .pth (+ HF LLM, EVA ViT) → vpgtrans-jax model directory.

Run `python convert/lavis_to_orbax.py --help` for every flag;
docs/checkpoints.md describes the formats.
"""

import sys

from vpgtrans_jax.convert.cli import lavis_to_orbax_main

if __name__ == "__main__":
    sys.exit(lavis_to_orbax_main())
