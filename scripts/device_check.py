"""The device check behind ``scripts/device_check.sh``: stage-1/2 steps at ViT-g + LLaMA-7B
shapes (bf16, best attention kernel, the largest batch that fits) and decode tokens/s at batch 1
and 32, appended as a row to docs/performance.md (``vpgtrans_jax/bench/device_check.py``).

    python scripts/device_check.py                         # on a GPU/TPU host
    python scripts/device_check.py --scale tiny --out /tmp/perf.md   # CPU, seconds
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench import shapes  # noqa: E402
from vpgtrans_jax.bench.device_check import check  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCALE = flags.DEFINE_enum("scale", "real", list(shapes.SCALES), "model shapes")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "docs", "performance.md"), "table file")
_BATCHES = flags.DEFINE_list(
    "batches", ["64", "32", "16", "8", "4"], "batches to try, largest first"
)
_TOKENS = flags.DEFINE_integer("new_tokens", 64, "tokens per decode timing")


def main(argv: list[str]) -> None:
    check(_SCALE.value, _OUT.value, tuple(int(b) for b in _BATCHES.value), _TOKENS.value)


if __name__ == "__main__":
    cli.run(main)
