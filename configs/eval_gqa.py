"""GQA test-dev balanced, zero-shot (VPGTrans protocol: "Question: {} Answer:", beam 5,
1..10 new tokens, length_penalty -1; exact match after VQA normalisation).

    python scripts/evaluate.py --config=configs/eval_gqa.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_gqa \
        --config.data.annotations=testdev_balanced_questions.json \
        --config.data.image_root=/data/gqa/images
"""

from vpgtrans_jax.eval import protocols


def get_config(arg=None):
    return protocols.gqa()
