"""GQA test-dev balanced, zero-shot (VPGTrans protocol: "Question: {} Answer:", beam 5,
1..10 new tokens, length_penalty -1; exact match after VQA normalisation).

    python scripts/evaluate.py --config=configs/eval_gqa.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_gqa \
        --config.data.annotations=testdev_balanced_questions.json \
        --config.data.image_root=/data/gqa/images
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.task = "gqa"
    c.checkpoint = ""  # anything vpgtrans_jax.load accepts (a HF BLIP-2 directory)
    c.tokenizer = ""  # HF tokenizer directory; "" = the checkpoint directory
    c.dtype = ""  # "" = as stored; e.g. "bfloat16" for compute
    c.prompt = "Question: {} Answer:"
    c.max_prompt_len = 32
    c.batch_size = 32
    c.limit = 0  # > 0: evaluate only the first `limit` questions (scored as a subset)
    c.num_workers = 8
    c.data = ml_collections.ConfigDict()
    c.data.annotations = ""  # GQA questions json {qid: {"imageId", "question", "answer"}}
    c.data.image_root = ""
    c.generation = ml_collections.ConfigDict()
    c.generation.num_beams = 5
    c.generation.max_new_tokens = 10
    c.generation.min_new_tokens = 1
    c.generation.length_penalty = -1.0
    c.generation.repetition_penalty = 1.0
    c.scoring = ml_collections.ConfigDict()
    c.scoring.lemmatize = False
    return c
