"""OK-VQA val, zero-shot (VPGTrans protocol: "Question: {} Answer:", beam 5, 1..10 new tokens,
length_penalty -1; official VQA accuracy).

    python scripts/evaluate.py --config=configs/eval_okvqa.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_okvqa \
        --config.data.annotations=OpenEnded_mscoco_val2014_questions.json \
        --config.data.answers=mscoco_val2014_annotations.json \
        --config.data.image_root=/data/coco/images/val2014
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.task = "okvqa"
    c.checkpoint = ""  # anything vpgtrans_jax.load accepts (a HF BLIP-2 directory)
    c.tokenizer = ""  # HF tokenizer directory; "" = the checkpoint directory
    c.dtype = ""  # "" = as stored; e.g. "bfloat16" for compute
    c.prompt = "Question: {} Answer:"  # FlanT5 models use "Question: {} Short answer:"
    c.max_prompt_len = 32
    c.batch_size = 32
    c.limit = 0  # > 0: evaluate only the first `limit` questions (scored as a subset)
    c.num_workers = 8
    c.data = ml_collections.ConfigDict()
    c.data.annotations = ""  # official questions json {"questions": [...]}
    c.data.answers = ""  # official annotations json ("" = predict only, e.g. test-dev)
    c.data.image_root = ""
    c.data.image_pattern = "COCO_val2014_{image_id:012d}.jpg"
    c.generation = ml_collections.ConfigDict()
    c.generation.num_beams = 5
    c.generation.max_new_tokens = 10
    c.generation.min_new_tokens = 1
    c.generation.length_penalty = -1.0
    c.generation.repetition_penalty = 1.0
    c.scoring = ml_collections.ConfigDict()
    c.scoring.vqa_rules = "2017"  # the official script LAVIS / the paper used
    c.scoring.lemmatize = False  # True = LAVIS OK-VQA protocol; needs spaCy + en_core_web_sm
    return c
