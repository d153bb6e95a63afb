"""Render a synthetic shapes dataset in every format the data sources read.

Example::

    python scripts/make_synthetic_data.py --out /tmp/syn --num_images 1000 --seed 0

Captions, VQA/GQA answers and long descriptions are functions of each image (shapes, colours,
sizes, positions, counts); the output is identical for identical arguments. See
``vpgtrans_jax/data/synthetic_export.py`` for the layout and docs/data.md for how to use it.
"""

from __future__ import annotations

import argparse
import json
import time

from vpgtrans_jax.data.synthetic_export import generate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--num_images", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed -> same files")
    p.add_argument("--image_size", type=int, default=224, help="square image side in pixels")
    p.add_argument("--max_objects", type=int, default=4, help="objects per scene, 1..9")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--test_fraction", type=float, default=0.1)
    p.add_argument("--questions_per_image", type=int, default=3)
    p.add_argument("--shard_size", type=int, default=256, help="samples per WebDataset tar")
    p.add_argument("--vocab_size", type=int, default=512, help="tokenizer vocabulary size")
    p.add_argument("--no_tokenizer", action="store_true", help="skip writing DIR/tokenizer")
    args = p.parse_args(argv)
    start = time.perf_counter()
    manifest = generate(
        args.out,
        args.num_images,
        seed=args.seed,
        image_size=args.image_size,
        max_objects=args.max_objects,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        questions_per_image=args.questions_per_image,
        shard_size=args.shard_size,
        vocab_size=args.vocab_size,
        write_tokenizer=not args.no_tokenizer,
    )
    print(json.dumps(manifest, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
