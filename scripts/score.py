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

import argparse
import json
import os
import sys

from vpgtrans_jax.eval.scoring import TASKS, format_table, score_files
from vpgtrans_jax.eval.vqa_metric import VQA_RULES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="benchmark to score")
    parser.add_argument(
        "--predictions",
        required=True,
        help='result file: captions [{"image_id", "caption"}]; VQA [{"question_id", "answer"}]; '
        'GQA {question_id: answer} (or [{"questionId", "prediction"}])',
    )
    parser.add_argument(
        "--annotations",
        required=True,
        help="captions: COCO caption annotation json (NoCaps: with each image's 'domain'); "
        "VQA: official annotations json; GQA: questions json with 'answer'",
    )
    parser.add_argument(
        "--questions",
        default=None,
        help="vqav2/okvqa only, optional: official questions json, checked to hold the same "
        "question ids as --annotations",
    )
    parser.add_argument("--out", default=None, help="where to write the metrics JSON")
    parser.add_argument(
        "--vqa-rules",
        default="2017",
        choices=VQA_RULES,
        help="version of the official VQA script: 2017 = v2.0 release as used by LAVIS and the "
        "VPGTrans paper (default); 2021 = GT-Vision-Lab commit a013f00",
    )
    parser.add_argument(
        "--lemmatize",
        action="store_true",
        help="vqav2/okvqa/gqa: lemmatise predicted nouns and verbs with spaCy en_core_web_sm "
        "before scoring (LAVIS's OK-VQA protocol); fails clearly if spaCy is missing",
    )
    parser.add_argument(
        "--spice",
        action="store_true",
        help="captions: also compute SPICE, if its Stanford CoreNLP models are already present; "
        "otherwise it is skipped with a message",
    )
    parser.add_argument(
        "--spice-download",
        action="store_true",
        help="with --spice: allow pycocoevalcap to download the CoreNLP models (~400 MB)",
    )
    parser.add_argument(
        "--allow-subset",
        action="store_true",
        help="score only the predicted ids instead of failing when some annotated ids have no "
        "prediction (extra ids are always an error)",
    )
    parser.add_argument(
        "--per-question",
        action="store_true",
        help="vqav2/okvqa/gqa: include each question's accuracy in the metrics JSON",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.spice_download and not args.spice:
        parser.error("--spice-download only makes sense together with --spice")
    log = lambda msg: print(msg, file=sys.stderr)  # keep stdout for the table
    try:
        metrics = score_files(
            args.task,
            args.predictions,
            args.annotations,
            args.questions,
            vqa_rules=args.vqa_rules,
            lemmatize=args.lemmatize,
            spice=args.spice,
            spice_download=args.spice_download,
            allow_subset=args.allow_subset,
            per_question=args.per_question,
            log=log,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
