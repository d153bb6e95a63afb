#!/usr/bin/env python
"""The whole VPGTrans transfer from one command: converter → merge → stage 1 → 2 (→ 3) + evals.

  python scripts/transfer.py --config=configs/transfer_tiny.py --workdir=/tmp/transfer_tiny
  python scripts/transfer.py --config=configs/micro_vpgtrans.py --workdir=/tmp/micro  # 3 seeds
  python scripts/transfer.py --config=configs/transfer_opt2.7b_to_opt6.7b.py --workdir=DIR \\
      --config.source.checkpoint=/ckpt/blip2-opt-2.7b --config.target.llm=/ckpt/opt-6.7b \\
      --config.data.coco_ann=... (see the config's docstring)

--workdir may be a gs:// URL (workdir and report in a bucket; input directories may be URLs too).
Every step is skipped when its output exists in --workdir, so rerunning the same command resumes
an interrupted transfer (training resumes from its checkpoints; SIGTERM / Ctrl-C stop a stage at a
step boundary). Writes WORKDIR/report.md and WORKDIR/report.json after each step; configs with
baselines (config.baselines) also get the speed-up and figures, several seeds (config.seeds) one
workdir per seed and a report over them.
--stop_after=STEP stops after one step (names: assets, converter, merge, stage1,
eval_stage1_<task>, ...). Exit status: 0 complete, 2 bad config, 3 stopped before the end.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vpgtrans_jax import cli, paths  # noqa: E402
from vpgtrans_jax.transfer.experiment import run_experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Transfer config (configs/transfer_*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the whole transfer.")
_STOP_AFTER = flags.DEFINE_string("stop_after", None, "Stop after this step (see the report).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars while training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    report = run_experiment(
        _CONFIG.value, _WORKDIR.value, stop_after=_STOP_AFTER.value, progress=_PROGRESS.value
    )
    print(f"report: {paths.join(report['workdir'], 'report.md')}")
    return 0 if report["complete"] else 3


if __name__ == "__main__":
    cli.run(main, distributed=True)
