"""Score a result file of one of the five benchmarks; shared by ``scripts/score.py``.

``score_files`` reads the official formats (see ``formats``), checks that predictions and
annotations cover the same ids, and returns a JSON-ready metrics dict; ``format_table`` renders it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vpgtrans_jax.eval import formats
from vpgtrans_jax.eval.answer_normalization import lemmatize_answers
from vpgtrans_jax.eval.caption_metric import CAPTION_METRICS, score_captions
from vpgtrans_jax.eval.gqa_metric import evaluate_gqa
from vpgtrans_jax.eval.vqa_metric import VQA_RULES, evaluate_vqa
from vpgtrans_jax.outputs import atomic_output, check_replaceable, check_separate

CAPTION_TASKS: tuple[str, ...] = ("coco_caption", "nocaps")
VQA_TASKS: tuple[str, ...] = ("vqav2", "okvqa")
TASKS: tuple[str, ...] = (*CAPTION_TASKS, *VQA_TASKS, "gqa")

PathLike = str | os.PathLike[str]


def _check_options(task: str, questions: PathLike | None, lemmatize: bool, vqa_rules: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if questions is not None and task not in VQA_TASKS:
        raise ValueError(f"--questions is only used by {VQA_TASKS}, not by task {task!r}")
    if lemmatize and task not in (*VQA_TASKS, "gqa"):
        raise ValueError(f"--lemmatize applies to VQA-style answers, not to task {task!r}")
    if vqa_rules not in VQA_RULES:
        raise ValueError(f"vqa_rules={vqa_rules!r}: expected one of {VQA_RULES}")


def _lemmatized(predictions: dict[str, str], ids: list[str]) -> dict[str, str]:
    return dict(zip(ids, lemmatize_answers([predictions[k] for k in ids])))


def score_files(
    task: str,
    predictions: PathLike,
    annotations: PathLike,
    questions: PathLike | None = None,
    *,
    vqa_rules: str = "2017",
    lemmatize: bool = False,
    spice: bool = False,
    spice_download: bool = False,
    allow_subset: bool = False,
    per_question: bool = False,
    caption_metrics: Sequence[str] = CAPTION_METRICS,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Scores a result file; returns the metrics dict written by ``scripts/score.py``.

    Args:
      task: one of ``TASKS``.
      predictions: result file in the task's official format.
      annotations: COCO caption json (captions), VQA annotations json, or GQA questions json.
      questions: VQA questions json (optional; checked to hold the annotated question ids).
      vqa_rules: version of the official VQA script, "2017" (LAVIS, paper) or "2021".
      lemmatize: lemmatise predicted answers with spaCy first (LAVIS's OK-VQA protocol).
      spice, spice_download: see ``caption_metric.score_captions``.
      allow_subset: score only predicted ids instead of failing when some are missing.
      per_question: add per-question accuracies (x100, 2 digits) for VQA / GQA.
      caption_metrics: which caption metrics to compute (default all of ``CAPTION_METRICS``).
      log: receives progress messages.
    """
    _check_options(task, questions, lemmatize, vqa_rules)
    pred_name, ann_name = f"predictions {predictions}", f"annotations {annotations}"
    pred_obj = formats.read_json(predictions, "predictions")
    ann_obj = formats.read_json(annotations, "annotations")
    out: dict[str, Any] = {
        "task": task,
        "predictions": os.fspath(predictions),
        "annotations": os.fspath(annotations),
    }

    if task in CAPTION_TASKS:
        preds = formats.parse_caption_predictions(pred_obj, pred_name)
        refs = formats.parse_caption_references(ann_obj, ann_name, need_domains=task == "nocaps")
        ids = formats.select_ids(
            list(refs.captions),
            preds,
            id_name="image_id",
            predictions_name=pred_name,
            annotations_name=ann_name,
            allow_subset=allow_subset,
        )
        scores = score_captions(
            {k: preds[k] for k in ids},
            refs.captions,
            domains=refs.domains,
            metrics=caption_metrics,
            spice=spice,
            spice_download=spice_download,
            log=log,
        )
        out.update(num_images=scores.num_images, metrics=scores.metrics, spice=scores.spice)
        if scores.domains is not None:
            out["domains"] = scores.domains
        return out

    if task in VQA_TASKS:
        preds = formats.parse_vqa_predictions(pred_obj, pred_name)
        items = formats.parse_vqa_annotations(ann_obj, ann_name)
        if questions is not None:
            q_ids = formats.parse_vqa_question_ids(
                formats.read_json(questions, "questions"), f"questions {questions}"
            )
            if set(q_ids) != {q.question_id for q in items}:
                raise ValueError(
                    f"questions {questions} and {ann_name} hold different question ids "
                    f"({len(q_ids)} vs {len(items)}): are they the same split?"
                )
    else:
        preds = formats.parse_gqa_predictions(pred_obj, pred_name)
        items = formats.parse_gqa_questions(ann_obj, ann_name)
    ids = formats.select_ids(
        [q.question_id for q in items],
        preds,
        id_name="question id",
        predictions_name=pred_name,
        annotations_name=ann_name,
        allow_subset=allow_subset,
    )
    selected = set(ids)
    items = [q for q in items if q.question_id in selected]
    if lemmatize:
        preds = _lemmatized(preds, ids)
    if task in VQA_TASKS:
        result = evaluate_vqa(preds, items, rules=vqa_rules)
        out["vqa_rules"] = vqa_rules
    else:
        result = evaluate_gqa(preds, items)
    out.update(
        num_questions=len(ids),
        lemmatized=lemmatize,
        accuracy=result.accuracy(digits=2),
        accuracy_unrounded=result.accuracy(digits=None),
    )
    if per_question:
        out["per_question"] = {k: round(100 * v, 2) for k, v in result.per_question.items()}
    return out


def _rows_table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max([len(name) for name, _ in rows] + [10])
    lines = [title] + [f"  {name:<{width}}  {value:>8}" for name, value in rows]
    return "\n".join(lines)


def format_table(metrics: dict[str, Any]) -> str:
    """Human-readable table of a ``score_files`` result (captions x100; accuracies in %)."""
    task = metrics["task"]
    if task in CAPTION_TASKS:
        rows = [(k, f"{100 * v:.2f}") for k, v in metrics["metrics"].items()]
        for domain, entry in metrics.get("domains", {}).items():
            rows += [
                (f"{k} {domain}", f"{100 * v:.2f}") for k, v in entry.items() if k != "num_images"
            ]
        text = _rows_table(f"{task}: {metrics['num_images']} images (scores x100)", rows)
        if metrics["spice"] != "not requested" and "SPICE" not in metrics["metrics"]:
            text += f"\n  SPICE {metrics['spice']}"
        return text
    acc = metrics["accuracy"]
    rows = [("overall", f"{acc['overall']:.2f}")]
    for key, label in (
        ("perAnswerType", "answer type"),
        ("perStructuralType", "structural"),
        ("perSemanticType", "semantic"),
    ):
        rows += [(f"{label}: {k}", f"{v:.2f}") for k, v in sorted(acc.get(key, {}).items())]
    title = f"{task}: {metrics['num_questions']} questions, accuracy %"
    notes = [f"VQA rules {metrics['vqa_rules']}"] if task in VQA_TASKS else []
    notes += ["lemmatized"] if metrics["lemmatized"] else []
    if notes:
        title += f" ({', '.join(notes)})"
    if acc.get("perQuestionType"):
        rows.append(("question types", f"{len(acc['perQuestionType'])} (in the JSON)"))
    return _rows_table(title, rows)


def score_to_file(
    task: str,
    predictions: PathLike,
    annotations: PathLike,
    questions: PathLike | None = None,
    *,
    out: PathLike | None = None,
    spice_download: bool = False,
    spice: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``score_files``, the table printed on stdout and the metrics written to ``out`` (if any);
    progress messages go to stderr. What ``scripts/score.py`` runs.

    ``out`` is refused, before scoring, when it is one of the inputs (resolved paths) or a
    directory; an earlier metrics file there is replaced whole (written, then renamed).
    """
    if spice_download and not spice:
        raise ValueError("--spice-download only makes sense together with --spice")
    if out:
        inputs = {"--predictions": predictions, "--annotations": annotations}
        check_separate(out, {**inputs, "--questions": questions})
        check_replaceable(os.fspath(out), overwrite=True, is_dir=False)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - keep stdout for the table
    metrics = score_files(task, predictions, annotations, questions, spice=spice,
                          spice_download=spice_download, log=log, **options)  # fmt: skip
    print(format_table(metrics))
    if out:
        with atomic_output(os.fspath(out), overwrite=True, is_dir=False) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2)
        print(f"wrote {out}", file=sys.stderr)
    return metrics
