"""The training input pipeline's speed (decode + blip2_image_train + tokenise + batch); what
``scripts/bench_data.py`` runs."""

from __future__ import annotations

import os
import tempfile
import time

from vpgtrans_jax.data import pipeline, text
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor
from vpgtrans_jax.tiny.dataset import generate


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


def run(
    data: str | None,
    *,
    num_images: int = 256,
    render_size: int = 480,
    image_size: int = 224,
    workers: tuple[int, ...] = (0, 1, 2),
    batch_size: int = 32,
    batches: int = 20,
) -> dict[int, float]:
    """Prints samples/s per worker count (rendering a synthetic dataset when ``data`` is None)."""
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = os.path.join(tmp, "syn")
            generate(data, num_images, seed=0, image_size=render_size)
        print(f"cpu cores visible: {os.cpu_count()}; images {render_size}px -> {image_size}px")
        print("workers  samples/s")
        rates = {}
        for w in workers:
            rates[w] = bench(data, w, batch_size, batches, image_size)
            print(f"{w:7d}  {rates[w]:9.1f}")
    return rates
