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
--verify) does not decode or has more than --max_image_pixels pixels are skipped and counted;
the run fails if more than --max_bad_fraction of them are bad (exit status 2).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.data.arrayrecord import convert_source  # noqa: E402
from vpgtrans_jax.data.processors import MAX_IMAGE_PIXELS  # noqa: E402
from vpgtrans_jax.data.registry import KINDS, make_source  # noqa: E402

_KIND = flags.DEFINE_enum("kind", None, KINDS, "input format")
_OUT = flags.DEFINE_string("out_prefix", None, "output path prefix of the shards")
_PER_SHARD = flags.DEFINE_integer("records_per_shard", 10_000, "records per shard")
_ANN = flags.DEFINE_multi_string("ann", None, "lavis_caption: annotation JSON file (repeatable)")
_IMAGES = flags.DEFINE_string("image_root", None, "lavis_caption / vqa / gqa: image directory")
_ROOT = flags.DEFINE_string("root", None, "cc_sbu_align: directory with filter_cap.json, image/")
_QUESTIONS = flags.DEFINE_string("questions", None, "vqa / gqa: questions JSON")
_ANSWERS = flags.DEFINE_string("annotations", None, "vqa: annotations JSON (omit for test)")
_PATTERN = flags.DEFINE_string("image_pattern", "COCO_val2014_{image_id:012d}.jpg", "vqa")
_SHARDS = flags.DEFINE_multi_string("shards", None, "webdataset / arrayrecord: path or glob")
_TFDS = flags.DEFINE_string("tfds_name", None, "tfds: dataset name")
_SPLIT = flags.DEFINE_string("split", "train", "tfds: split")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds: data_dir")
_IMAGE_KEY = flags.DEFINE_string("image_key", "image", "tfds: image feature")
_TEXT_KEY = flags.DEFINE_string("text_key", "caption", "tfds: caption feature (a/b nests)")
_VERIFY = flags.DEFINE_bool("verify", False, "decode every image, skip bad ones")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.05, "largest share of bad samples allowed")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", MAX_IMAGE_PIXELS, "with --verify: larger images are bad, refused undecoded"
)
flags.mark_flags_as_required(["kind", "out_prefix"])


def main(argv: list[str]) -> None:
    kwargs = {
        "lavis_caption": {"ann_paths": _ANN.value, "image_root": _IMAGES.value},
        "cc_sbu_align": {"root": _ROOT.value},
        "vqa": {"questions_path": _QUESTIONS.value, "annotations_path": _ANSWERS.value,
                "image_root": _IMAGES.value, "image_pattern": _PATTERN.value},
        "gqa": {"questions_path": _QUESTIONS.value, "image_root": _IMAGES.value},
        "webdataset": {"shards": _SHARDS.value},
        "tfds": {"name": _TFDS.value, "split": _SPLIT.value, "data_dir": _DATA_DIR.value,
                 "image_key": _IMAGE_KEY.value, "text_key": _TEXT_KEY.value},
        "arrayrecord": {"paths": _SHARDS.value},
    }[_KIND.value]  # fmt: skip
    convert_source(make_source(_KIND.value, **kwargs), _OUT.value,
                   records_per_shard=_PER_SHARD.value, verify=_VERIFY.value,
                   max_bad_fraction=_MAX_BAD.value,
                   max_image_pixels=_MAX_PIXELS.value,
                   inputs={"--ann": _ANN.value, "--questions": _QUESTIONS.value,
                           "--annotations": _ANSWERS.value, "--shards": _SHARDS.value})  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
