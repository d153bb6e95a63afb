"""Render a synthetic shapes dataset in every format the data sources read.

Example::

    python scripts/make_synthetic_data.py --out /tmp/syn --num_images 1000 --seed 0

Captions, VQA/GQA answers and long descriptions are functions of each image (shapes, colours,
sizes, positions, counts); the output is identical for identical arguments. See
``vpgtrans_jax/tiny/dataset.py`` for the layout and docs/data.md for how to use it.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.tiny.dataset import generate  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "output directory (created)")
_NUM = flags.DEFINE_integer("num_images", None, "number of scenes")
_SEED = flags.DEFINE_integer("seed", 0, "seed; same seed -> same files")
_SIZE = flags.DEFINE_integer("image_size", 224, "square image side in pixels")
_MAX_OBJ = flags.DEFINE_integer("max_objects", 4, "objects per scene, 1..9")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "share of scenes in the val split")
_TEST = flags.DEFINE_float("test_fraction", 0.1, "share of scenes in the test split")
_QPI = flags.DEFINE_integer("questions_per_image", 3, "VQA/GQA questions per scene")
_SHARD = flags.DEFINE_integer("shard_size", 256, "samples per WebDataset tar")
_VOCAB = flags.DEFINE_integer("vocab_size", 512, "tokenizer vocabulary size")
_NO_TOK = flags.DEFINE_bool("no_tokenizer", False, "skip writing DIR/tokenizer")
flags.mark_flags_as_required(["out", "num_images"])


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    manifest = generate(
        _OUT.value, _NUM.value, seed=_SEED.value, image_size=_SIZE.value,
        max_objects=_MAX_OBJ.value, val_fraction=_VAL.value, test_fraction=_TEST.value,
        questions_per_image=_QPI.value, shard_size=_SHARD.value, vocab_size=_VOCAB.value,
        write_tokenizer=not _NO_TOK.value,
    )  # fmt: skip
    print(json.dumps(manifest, indent=1))
    print(f"wrote {_OUT.value} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    cli.run(main)
