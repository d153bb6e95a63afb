"""NoCaps validation captioning (VPGTrans protocol: no prompt, beam 5, 8..30 new tokens); CIDEr
is also reported per domain, from the `domain` of the reference json's images.

    python scripts/evaluate.py --config=configs/eval_nocaps.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_nocaps \
        --config.data.annotations=nocaps_val.json \
        --config.data.gt=nocaps_val_4500_captions.json \
        --config.data.image_root=/data/nocaps/images
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.task = "nocaps"
    c.checkpoint = ""  # anything vpgtrans_jax.load accepts (a HF BLIP-2 directory)
    c.tokenizer = ""  # HF tokenizer directory; "" = the checkpoint directory
    c.dtype = ""  # "" = as stored; e.g. "bfloat16" for compute
    c.prompt = ""  # captions are generated from the image alone (BOS only)
    c.max_prompt_len = 32
    c.batch_size = 16
    c.limit = 0  # > 0: evaluate only the first `limit` samples (scored as a subset)
    c.num_workers = 8  # image-decoding threads
    c.data = ml_collections.ConfigDict()
    c.data.annotations = ""  # LAVIS caption json: [{"image", "caption": [...], "image_id"?}]
    c.data.gt = ""  # COCO-format reference json for pycocoevalcap ("" = predict only)
    c.data.image_root = ""
    c.generation = ml_collections.ConfigDict()
    c.generation.num_beams = 5
    c.generation.max_new_tokens = 30
    c.generation.min_new_tokens = 8
    c.generation.length_penalty = 1.0
    c.generation.repetition_penalty = 1.0
    c.scoring = ml_collections.ConfigDict()
    c.scoring.spice = False
    return c
