"""Measure the training input pipeline (decode + blip2_image_train + tokenise + batch).

Example::

    python scripts/bench_data.py --workers 0,1,2 --batches 30

Renders a synthetic dataset (JPEGs of --render_size px, about the size of COCO images) unless
--data points at one made by make_synthetic_data.py, then prints samples/s per worker count
at --image_size px output. Worker count 0 decodes in the main process (with grain's reader
threads); N > 0 uses N worker processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from vpgtrans_jax.data import pipeline, text
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.data.synthetic_export import generate
from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor


def bench(data: str, workers: int, batch_size: int, batches: int, image_size: int) -> float:
    """Samples/s over ``batches`` batches after two warm-up batches."""
    src = make_source(
        "lavis_caption",
        ann_paths=os.path.join(data, "annotations", "caption_train.json"),
        image_root=os.path.join(data, "images"),
    )
    tok = text.load_tokenizer(os.path.join(data, "tokenizer"))
    proc = SampleProcessor(SampleConfig(image_size=image_size, max_len=32), tok)
    it = pipeline.train_iterator(
        [("coco", src, 1.0)], proc, batch_size, num_workers=workers, shard_index=0, shard_count=1
    )
    try:
        for _ in range(2):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch_size / (time.perf_counter() - start)
    finally:
        it.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=None, help="synthetic data dir (default: render one)")
    p.add_argument("--num_images", type=int, default=256, help="images to render if no --data")
    p.add_argument("--render_size", type=int, default=480, help="rendered JPEG side, px")
    p.add_argument("--image_size", type=int, default=224, help="model input side, px")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = os.path.join(tmp, "syn")
            generate(data, args.num_images, seed=0, image_size=args.render_size)
        sizes = f"{args.render_size}px -> {args.image_size}px"
        print(f"cpu cores visible: {os.cpu_count()}; images {sizes}")
        print("workers  samples/s")
        for w in (int(x) for x in args.workers.split(",")):
            rate = bench(data, w, args.batch_size, args.batches, args.image_size)
            print(f"{w:7d}  {rate:9.1f}")


if __name__ == "__main__":
    main()
