"""Measure the training input pipeline (decode + blip2_image_train + tokenise + batch).

Example::

    python scripts/bench_data.py --workers 0,1,2 --batches 30

Renders a synthetic dataset (JPEGs of --render_size px, about the size of COCO images) unless
--data points at one made by make_synthetic_data.py, then prints samples/s per worker count
at --image_size px output. Worker count 0 decodes in the main process (with grain's reader
threads); N > 0 uses N worker processes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench.data import run  # noqa: E402

_DATA = flags.DEFINE_string("data", None, "synthetic data dir (default: render one)")
_NUM = flags.DEFINE_integer("num_images", 256, "images to render if no --data")
_RENDER = flags.DEFINE_integer("render_size", 480, "rendered JPEG side, px")
_SIZE = flags.DEFINE_integer("image_size", 224, "model input side, px")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "comma-separated worker counts")
_BATCH = flags.DEFINE_integer("batch_size", 32, "samples per batch")
_BATCHES = flags.DEFINE_integer("batches", 20, "timed batches per setting")


def main(argv: list[str]) -> None:
    run(_DATA.value, num_images=_NUM.value, render_size=_RENDER.value, image_size=_SIZE.value,
        workers=tuple(int(w) for w in _WORKERS.value), batch_size=_BATCH.value,
        batches=_BATCHES.value)  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
