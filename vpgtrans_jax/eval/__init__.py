"""Benchmark metrics: official VQA accuracy, GQA exact match, pycocoevalcap caption scores.

Nothing here imports JAX, so scoring a result file is cheap (see ``scripts/score.py``).
"""

from vpgtrans_jax.eval.answer_normalization import (
    lemmatize_answers,
    normalize_answer,
    normalize_digits_articles,
    normalize_punctuation,
)
from vpgtrans_jax.eval.caption_metric import CAPTION_METRICS, CaptionScores, score_captions
from vpgtrans_jax.eval.gqa_metric import GQAScores, evaluate_gqa
from vpgtrans_jax.eval.scoring import TASKS, format_table, score_files
from vpgtrans_jax.eval.vqa_metric import VQA_RULES, VQAScores, evaluate_vqa, question_accuracy

__all__ = [
    "CAPTION_METRICS",
    "TASKS",
    "VQA_RULES",
    "CaptionScores",
    "GQAScores",
    "VQAScores",
    "evaluate_gqa",
    "evaluate_vqa",
    "format_table",
    "lemmatize_answers",
    "normalize_answer",
    "normalize_digits_articles",
    "normalize_punctuation",
    "question_accuracy",
    "score_captions",
    "score_files",
]
