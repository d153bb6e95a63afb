#!/usr/bin/env python
"""Train the VPGTrans word converter: a linear map from source-LLM to target-LLM word embeddings.

Examples:
  python scripts/word_converter.py --src_llm /ckpt/opt-2.7b --tgt_llm /ckpt/opt-6.7b \\
      --text coco_karpathy_train.json sbu.json --out /work/conv_opt2.7b_to_6.7b
  python scripts/word_converter.py --src_llm /ckpt/opt-6.7b --tgt_llm /ckpt/llama-7b \\
      --text captions.txt --out /work/conv --align shared_tokens

Text files: plain text (one caption per line) or LAVIS caption JSON lists (entries with a
"caption" string or list). Defaults follow the original recipe: cosine loss, SGD lr 5, batch 4096
token pairs, 8 epochs. Prints the held-out cosine similarity and writes converter.npz +
converter.json to --out (see vpgtrans_jax/transfer/word_converter.py, docs/transfer.md).
Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from vpgtrans_jax.checkpoint_io import CheckpointError
from vpgtrans_jax.transfer.alignment import ALIGN_MODES
from vpgtrans_jax.transfer.linear_map import LOSSES, FitConfig
from vpgtrans_jax.transfer.word_converter import build_word_converter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    d = FitConfig()
    parser.add_argument("--src_llm", required=True, help="source HF LLM (or BLIP-2) directory")
    parser.add_argument("--tgt_llm", required=True, help="target HF LLM (or BLIP-2) directory")
    parser.add_argument("--text", required=True, nargs="+", help="caption files (.txt / .json)")
    parser.add_argument("--out", required=True, help="output directory for the converter")
    parser.add_argument("--align", default="same_length", choices=ALIGN_MODES)
    parser.add_argument("--loss", default=d.loss, choices=LOSSES)
    parser.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--batch_size", type=int, default=d.batch_size, help="token pairs/step")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument(
        "--heldout_fraction",
        type=float,
        default=d.heldout_fraction,
        help="share of distinct token pairs held out for the reported cosine",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--raw_text",
        action="store_true",
        help="use captions as written (default: LAVIS blip_caption, as the VL model sees them)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fit = FitConfig(
            loss=args.loss,
            lr=args.lr,
            momentum=args.momentum,
            batch_size=args.batch_size,
            epochs=args.epochs,
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
        )
        conv = build_word_converter(
            args.src_llm,
            args.tgt_llm,
            args.text,
            args.out,
            align=args.align,
            fit=fit,
            process_captions=not args.raw_text,
        )
    except (CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    held = conv.meta["metrics"]["heldout_cosine"]
    print(f"held-out cosine: {'n/a' if held is None else f'{held:.4f}'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
