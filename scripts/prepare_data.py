"""Convert any supported source into ArrayRecord shards (encoded image bytes + text fields).

Examples::

    python scripts/prepare_data.py --kind lavis_caption \
        --ann /data/coco/annotations/coco_karpathy_train.json --image_root /data/coco/images \
        --out_prefix /data/ar/coco_train
    python scripts/prepare_data.py --kind webdataset --shards '/data/laion_coco/*.tar' \
        --out_prefix /data/ar/laion_coco
    python scripts/prepare_data.py --kind vqa --questions q.json --annotations a.json \
        --image_root /data/coco/val2014 --out_prefix /data/ar/vqav2_val

Images are copied byte for byte (no re-encoding). Samples whose image is missing or (with
--verify) does not decode are skipped and counted; the run fails if more than
--max_bad_fraction of them are bad.
"""

from __future__ import annotations

import argparse
import sys
import time

from vpgtrans_jax.data.arrayrecord import write_shards
from vpgtrans_jax.data.registry import KINDS, make_source


def _source_kwargs(args: argparse.Namespace) -> dict:
    k = args.kind
    if k == "lavis_caption":
        return {"ann_paths": args.ann, "image_root": args.image_root}
    if k == "cc_sbu_align":
        return {"root": args.root}
    if k == "vqa":
        return {
            "questions_path": args.questions,
            "annotations_path": args.annotations,
            "image_root": args.image_root,
            "image_pattern": args.image_pattern,
        }
    if k == "gqa":
        return {"questions_path": args.questions, "image_root": args.image_root}
    if k == "webdataset":
        return {"shards": args.shards}
    if k == "tfds":
        return {
            "name": args.tfds_name,
            "split": args.split,
            "data_dir": args.data_dir,
            "image_key": args.image_key,
            "text_key": args.text_key,
        }
    return {"paths": args.shards}


def _records(source, verify: bool, stats: dict):
    from vpgtrans_jax.data.processors import load_image

    for i in range(len(source)):
        rec = source[i]
        try:
            if rec.get("image") is None:
                with open(rec["image_path"], "rb") as f:
                    rec["image"] = f.read()
            if verify:
                load_image(rec["image"])
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the conversion
            stats["bad"] += 1
            if stats["bad"] <= 20:
                print(f"skipping {rec.get('key')}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        rec.pop("image_path", None)
        stats["written"] += 1
        yield rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kind", required=True, choices=KINDS, help="input format")
    p.add_argument("--out_prefix", required=True, help="output path prefix of the shards")
    p.add_argument("--records_per_shard", type=int, default=10_000)
    p.add_argument("--ann", nargs="+", help="lavis_caption: annotation JSON file(s)")
    p.add_argument("--image_root", help="lavis_caption / vqa / gqa: image directory")
    p.add_argument("--root", help="cc_sbu_align: directory with filter_cap.json and image/")
    p.add_argument("--questions", help="vqa / gqa: questions JSON")
    p.add_argument("--annotations", help="vqa: annotations JSON (omit for test splits)")
    p.add_argument("--image_pattern", default="COCO_val2014_{image_id:012d}.jpg", help="vqa")
    p.add_argument("--shards", nargs="+", help="webdataset / arrayrecord: paths or globs")
    p.add_argument("--tfds_name", help="tfds: dataset name")
    p.add_argument("--split", default="train", help="tfds: split")
    p.add_argument("--data_dir", default=None, help="tfds: data_dir")
    p.add_argument("--image_key", default="image", help="tfds: image feature")
    p.add_argument("--text_key", default="caption", help="tfds: caption feature (a/b nests)")
    p.add_argument("--verify", action="store_true", help="decode every image, skip bad ones")
    p.add_argument("--max_bad_fraction", type=float, default=0.05)
    args = p.parse_args(argv)
    start = time.perf_counter()
    source = make_source(args.kind, **_source_kwargs(args))
    stats = {"bad": 0, "written": 0}
    paths = write_shards(
        _records(source, args.verify, stats), args.out_prefix, args.records_per_shard
    )
    total = stats["bad"] + stats["written"]
    print(
        f"wrote {stats['written']} records in {len(paths)} shard(s) ({stats['bad']} bad skipped) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    for path in paths:
        print(path)
    if total and stats["bad"] > args.max_bad_fraction * total:
        print(
            f"error: {stats['bad']} of {total} samples were bad (> --max_bad_fraction="
            f"{args.max_bad_fraction})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
