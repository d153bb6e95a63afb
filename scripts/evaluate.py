"""Zero-shot evaluation on COCO Caption, NoCaps, VQAv2, OK-VQA and GQA.

    python scripts/evaluate.py --config=configs/eval_vqav2.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_vqav2 \
        --config.data.annotations=questions.json --config.data.answers=annotations.json \
        --config.data.image_root=/data/coco/images/val2014

Generates with the protocol in the config (beam search, "\\n" as end of sequence), writes
``WORKDIR/predictions_TASK.json`` in the official result format (captions
``[{"image_id", "caption"}]``, VQA ``[{"question_id", "answer"}]``, GQA ``{question_id: answer}``),
scores it into ``WORKDIR/metrics_TASK.json`` and prints the table (``vpgtrans_jax.eval.runner``).
With several JAX processes each one generates a strided share of the samples; process 0 merges
the shares and scores.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.eval.runner import evaluate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "eval config (configs/eval_*.py)", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (created)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, distributed=True)
