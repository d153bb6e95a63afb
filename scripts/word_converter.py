#!/usr/bin/env python
"""Train the VPGTrans word converter: a linear map from source-LLM to target-LLM word embeddings.

Examples:
  python scripts/word_converter.py --src_llm /ckpt/opt-2.7b --tgt_llm /ckpt/opt-6.7b \\
      --text coco_karpathy_train.json --text sbu.json --out /work/conv_opt2.7b_to_6.7b
  python scripts/word_converter.py --src_llm /ckpt/opt-6.7b --tgt_llm /ckpt/llama-7b \\
      --text captions.txt --out /work/conv --align shared_tokens

Text files (--text, repeatable): plain text (one caption per line) or LAVIS caption JSON lists
(entries with a "caption" string or list). Defaults follow the original recipe: cosine loss, SGD
lr 5, batch 4096 token pairs, 8 epochs. Prints the held-out cosine similarity and writes
converter.npz + converter.json to --out (see vpgtrans_jax/transfer/word_converter.py,
docs/transfer.md). Exit status 2 on bad input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.transfer.alignment import ALIGN_MODES  # noqa: E402
from vpgtrans_jax.transfer.linear_map import LOSSES, FitConfig  # noqa: E402
from vpgtrans_jax.transfer.word_converter import build_word_converter  # noqa: E402

_D = FitConfig()
_SRC = flags.DEFINE_string("src_llm", None, "source HF LLM (or BLIP-2) directory")
_TGT = flags.DEFINE_string("tgt_llm", None, "target HF LLM (or BLIP-2) directory")
_TEXT = flags.DEFINE_multi_string("text", None, "caption file (.txt / .json); repeatable")
_OUT = flags.DEFINE_string("out", None, "output directory for the converter")
_ALIGN = flags.DEFINE_enum("align", "same_length", ALIGN_MODES, "how captions give token pairs")
_LOSS = flags.DEFINE_enum("loss", _D.loss, LOSSES, "fitting loss")
_LR = flags.DEFINE_float("lr", _D.lr, "SGD learning rate")
_MOMENTUM = flags.DEFINE_float("momentum", _D.momentum, "SGD momentum")
_BATCH = flags.DEFINE_integer("batch_size", _D.batch_size, "token pairs per step")
_EPOCHS = flags.DEFINE_integer("epochs", _D.epochs, "passes over the token pairs")
_HELDOUT = flags.DEFINE_float(
    "heldout_fraction", _D.heldout_fraction, "share of distinct token pairs held out"
)
_SEED = flags.DEFINE_integer("seed", _D.seed, "random seed")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "replace --out if it is an earlier converter (never a foreign directory)"
)
_RAW = flags.DEFINE_bool(
    "raw_text", False, "use captions as written (default: LAVIS blip_caption, as the VL model sees)"
)
flags.mark_flags_as_required(["src_llm", "tgt_llm", "text", "out"])


def main(argv: list[str]) -> None:
    fit = FitConfig(loss=_LOSS.value, lr=_LR.value, momentum=_MOMENTUM.value,
                    batch_size=_BATCH.value, epochs=_EPOCHS.value,
                    heldout_fraction=_HELDOUT.value, seed=_SEED.value)  # fmt: skip
    conv = build_word_converter(
        _SRC.value, _TGT.value, _TEXT.value, _OUT.value, align=_ALIGN.value, fit=fit,
        process_captions=not _RAW.value, overwrite=_OVERWRITE.value,
    )  # fmt: skip
    held = conv.meta["metrics"]["heldout_cosine"]
    print(f"held-out cosine: {'n/a' if held is None else f'{held:.4f}'}; wrote {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
