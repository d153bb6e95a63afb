"""COCO Karpathy test captioning (VPGTrans protocol: no prompt, beam 5, 8..30 new tokens).

    python scripts/evaluate.py --config=configs/eval_coco_caption.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_coco \
        --config.data.annotations=coco_karpathy_test.json \
        --config.data.gt=coco_karpathy_test_gt.json \
        --config.data.image_root=/data/coco/images
"""

from vpgtrans_jax.eval import protocols


def get_config(arg=None):
    return protocols.caption("coco_caption")
