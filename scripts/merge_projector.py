#!/usr/bin/env python
"""Merge a source VL-LLM's projector with a word converter: the VPGTrans stage-1 initialisation.

Example:
  python scripts/merge_projector.py --src_checkpoint /ckpt/blip2-opt-2.7b \\
      --converter /work/conv_opt2.7b_to_6.7b --out /work/vpg_init_opt6.7b

Computes W_t = W_w @ W_s, b_t = W_w @ b_s + b_w and writes the source VPG (ln_vision,
query_tokens, Q-Former) with the merged projector as a trained-parts export (export.json +
params/) that a stage-1 config names as model.vpg_init. --src_checkpoint is anything
vpgtrans_jax.load accepts (HF BLIP-2 and vpgtrans-jax model directories are read without
loading the ViT or LLM).
Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from vpgtrans_jax.checkpoint_io import CheckpointError
from vpgtrans_jax.transfer.merge import merge_projector


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--src_checkpoint", required=True, help="source VL-LLM checkpoint dir")
    parser.add_argument("--converter", required=True, help="scripts/word_converter.py --out dir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--qformer_scan_layers",
        action="store_true",
        help="store the Q-Former in the scanned layout (match the stage-1 config's scan_layers)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merge_projector(
            args.src_checkpoint,
            args.converter,
            args.out,
            qformer_scan_layers=args.qformer_scan_layers,
        )
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
