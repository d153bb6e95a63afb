"""Hugging Face BLIP-2 or LLM directory → vpgtrans-jax model directory.

Run `python convert/hf_to_orbax.py --help` for every flag;
docs/checkpoints.md describes the formats.
"""

import sys

from vpgtrans_jax.convert.cli import hf_to_orbax_main

if __name__ == "__main__":
    sys.exit(hf_to_orbax_main())
