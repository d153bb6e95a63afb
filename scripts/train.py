"""Trains one VPGTrans stage.

  python scripts/train.py --config=configs/tiny_warmup.py --workdir=/tmp/tiny_warmup
  python scripts/train.py --config=configs/warmup_llama.py --workdir=gs://bucket/run \
      --config.model.path=/ckpt/blip2-opt-6.7b-merged --config.data.tokenizer=/ckpt/llama-7b

Re-running the same command on an existing workdir resumes from its latest checkpoint. SIGTERM
or Ctrl-C saves a checkpoint and exits cleanly. Any config field can be overridden with
--config.a.b=value; unknown fields are errors. Tiny configs generate their synthetic data and
pretrain their tiny LLM first (cached).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vpgtrans_jax import cli, tiny  # noqa: E402
from vpgtrans_jax.train.loop import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (configs/*.py), optionally with ':arg'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, export).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    train(tiny.prepare(_CONFIG.value), _WORKDIR.value, progress=_PROGRESS.value)


if __name__ == "__main__":
    cli.run(main, distributed=True)
