"""vpgtrans-jax model directory → Hugging Face BLIP-2 directory.

Run `python convert/orbax_to_hf.py --help` for every flag;
docs/checkpoints.md describes the formats.
"""

import sys

from vpgtrans_jax.convert.cli import orbax_to_hf_main

if __name__ == "__main__":
    sys.exit(orbax_to_hf_main())
