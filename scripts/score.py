#!/usr/bin/env python
"""Score an existing result file of COCO Caption, NoCaps, VQAv2, OK-VQA or GQA.

Examples:
  python scripts/score.py --task vqav2 --predictions results.json \\
      --annotations v2_mscoco_val2014_annotations.json \\
      --questions v2_OpenEnded_mscoco_val2014_questions.json --out metrics.json
  python scripts/score.py --task nocaps --predictions captions.json \\
      --annotations nocaps_val_4500_captions.json --out metrics.json

Prints a table and writes the metrics JSON (see docs/evaluation.md for its layout).
Exit status 2 on bad input (missing file, wrong format, missing or extra ids).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.eval.scoring import TASKS, score_to_file  # noqa: E402
from vpgtrans_jax.eval.vqa_metric import VQA_RULES  # noqa: E402

_TASK = flags.DEFINE_enum("task", None, TASKS, "benchmark to score")
_PRED = flags.DEFINE_string(
    "predictions", None, 'result file: captions [{"image_id", "caption"}]; VQA [{"question_id", '
    '"answer"}]; GQA {question_id: answer} (or [{"questionId", "prediction"}])',
)  # fmt: skip
_ANN = flags.DEFINE_string(
    "annotations", None, "captions: COCO caption annotation json (NoCaps: with each image's "
    "'domain'); VQA: official annotations json; GQA: questions json with 'answer'",
)  # fmt: skip
_QUESTIONS = flags.DEFINE_string(
    "questions", None, "vqav2/okvqa, optional: official questions json, checked to hold the same "
    "question ids as --annotations",
)  # fmt: skip
_OUT = flags.DEFINE_string("out", None, "where to write the metrics JSON")
_RULES = flags.DEFINE_enum(
    "vqa-rules", "2017", VQA_RULES, "version of the official VQA script: 2017 = v2.0 release as "
    "used by LAVIS and the VPGTrans paper; 2021 = GT-Vision-Lab commit a013f00",
)  # fmt: skip
_LEMMA = flags.DEFINE_bool(
    "lemmatize", False, "vqav2/okvqa/gqa: lemmatise predicted nouns and verbs with spaCy "
    "en_core_web_sm before scoring (LAVIS's OK-VQA protocol)",
)  # fmt: skip
_SPICE = flags.DEFINE_bool("spice", False, "captions: also compute SPICE if its models exist")
_SPICE_DL = flags.DEFINE_bool(
    "spice-download", False, "with --spice: let pycocoevalcap download CoreNLP (~400 MB)"
)
_SUBSET = flags.DEFINE_bool(
    "allow-subset", False, "score only the predicted ids (extra ids are always an error)"
)
_PER_Q = flags.DEFINE_bool("per-question", False, "include each question's accuracy in the JSON")
flags.mark_flags_as_required(["task", "predictions", "annotations"])


def main(argv: list[str]) -> None:
    score_to_file(
        _TASK.value, _PRED.value, _ANN.value, _QUESTIONS.value, out=_OUT.value,
        vqa_rules=_RULES.value, lemmatize=_LEMMA.value, spice=_SPICE.value,
        spice_download=_SPICE_DL.value, allow_subset=_SUBSET.value, per_question=_PER_Q.value,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
