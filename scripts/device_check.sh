#!/usr/bin/env bash
# The ready accelerator check (issue 16): stage-1 and stage-2 training steps at EVA ViT-g +
# LLaMA-7B shapes in bf16 with the best attention kernel, and decode tokens/s at batch 1 and 32;
# appends a row with the card's name to docs/performance.md. Needs only this repo and jax.
#   scripts/device_check.sh                      # one H100/H200 (or a TPU host): <= 8 minutes
#   scripts/device_check.sh --scale tiny --out /tmp/perf.md --batches 8   # CPU smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 python scripts/device_check.py "$@"
