"""vpgtrans-jax model directory → LAVIS / VPGTrans checkpoint of the trainable parts.

Run `python convert/orbax_to_lavis.py --help` for every flag;
docs/checkpoints.md describes the formats.
"""

import sys

from vpgtrans_jax.convert.cli import orbax_to_lavis_main

if __name__ == "__main__":
    sys.exit(orbax_to_lavis_main())
