"""VQAv2 val, zero-shot (VPGTrans protocol: "Question: {} Answer:", beam 5, 1..10 new tokens,
length_penalty -1; official VQA accuracy).

    python scripts/evaluate.py --config=configs/eval_vqav2.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_vqav2 \
        --config.data.annotations=v2_OpenEnded_mscoco_val2014_questions.json \
        --config.data.answers=v2_mscoco_val2014_annotations.json \
        --config.data.image_root=/data/coco/images/val2014
"""

from vpgtrans_jax.eval import protocols


def get_config(arg=None):
    return protocols.vqa("vqav2")
