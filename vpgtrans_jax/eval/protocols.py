"""The evaluation protocol of every benchmark as ml_collections configs: the VPGTrans paper's
zero-shot settings (LAVIS's prompts, beams, lengths and length penalties; docs/evaluation.md).

``configs/eval_<task>.py`` call these; ``eval.runner`` (``scripts/evaluate.py``) reads the result.
"""

from __future__ import annotations

import ml_collections

from vpgtrans_jax.data.processors import MAX_IMAGE_PIXELS

VQA_PROMPT = "Question: {} Answer:"  # OPT / LLaMA; FlanT5 models use "Question: {} Short answer:"


def _common(task: str, prompt: str, batch_size: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.checkpoint = ""  # anything vpgtrans_jax.load accepts
    c.tokenizer = ""  # HF tokenizer directory; "" = the checkpoint directory
    c.dtype = ""  # "" = as stored; e.g. "bfloat16" for compute
    c.prompt = prompt  # may hold <ImageHere> (stage-3 template): the image goes there
    c.max_prompt_len = 32
    c.end = "\n"  # end of an answer: "\n" (VPGTrans); "###" for stage-3 chat models
    c.batch_size = batch_size
    c.limit = 0  # > 0: evaluate only the first `limit` samples (scored as a subset)
    c.num_workers = 8  # image-decoding threads
    # Unreadable images are skipped and counted (reported in the metrics); more than this
    # fraction of them is an error. Images over max_image_pixels are refused before decoding.
    c.max_bad_fraction = 0.05
    c.max_image_pixels = MAX_IMAGE_PIXELS
    c.data = ml_collections.ConfigDict()
    c.generation = ml_collections.ConfigDict()
    c.generation.num_beams = 5
    c.generation.repetition_penalty = 1.0
    c.scoring = ml_collections.ConfigDict()
    return c


def caption(task: str) -> ml_collections.ConfigDict:
    """COCO Karpathy test / NoCaps val: no prompt (BOS only), beam 5, 8..30 new tokens."""
    c = _common(task, "", 16)
    c.data.annotations = ""  # LAVIS caption json: [{"image", "caption": [...], "image_id"?}]
    c.data.gt = ""  # COCO-format reference json for pycocoevalcap ("" = predict only)
    c.data.image_root = ""
    c.generation.max_new_tokens = 30
    c.generation.min_new_tokens = 8
    c.generation.length_penalty = 1.0
    c.scoring.spice = False
    # Comma-separated subset of eval.caption_metric.CAPTION_METRICS ("" = all). "CIDEr" alone
    # skips METEOR's Java process (for many evaluations, e.g. every epoch of a transfer).
    c.scoring.metrics = ""
    return c


def _short_answer(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.generation.max_new_tokens = 10
    c.generation.min_new_tokens = 1
    c.generation.length_penalty = -1.0
    return c


def vqa(task: str) -> ml_collections.ConfigDict:
    """VQAv2 / OK-VQA: "Question: {} Answer:", beam 5, 1..10 new tokens, length_penalty -1."""
    c = _short_answer(_common(task, VQA_PROMPT, 32))
    c.data.annotations = ""  # official questions json {"questions": [...]}
    c.data.answers = ""  # official annotations json ("" = predict only, e.g. test-dev)
    c.data.image_root = ""
    c.data.image_pattern = "COCO_val2014_{image_id:012d}.jpg"
    c.scoring.vqa_rules = "2017"  # the official script LAVIS / the paper used
    c.scoring.lemmatize = False  # True = LAVIS OK-VQA protocol; needs spaCy + en_core_web_sm
    return c


def gqa() -> ml_collections.ConfigDict:
    """GQA test-dev balanced: the VQA prompt and lengths; exact match after VQA normalisation."""
    c = _short_answer(_common("gqa", VQA_PROMPT, 32))
    c.data.annotations = ""  # GQA questions json {qid: {"imageId", "question", "answer"}}
    c.data.image_root = ""
    c.scoring.lemmatize = False
    return c
