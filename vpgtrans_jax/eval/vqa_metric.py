"""VQA accuracy (VQA v2, OK-VQA) with the official leave-one-out rule.

A question with human answers ``a_1..a_n`` (n = 10) scores
``mean_i min(1, #{j != i : a_j == prediction} / 3)``, i.e. each human answer is left out in turn
and the prediction gets full credit when at least 3 of the remaining ones agree with it.

Two versions of the official GT-Vision-Lab/VQA script exist; ``rules`` picks one:
  * ``"2017"`` (default): the v2.0 release, copied by LAVIS, with which BLIP-2 and VPGTrans were
    scored. The prediction is always fully normalised; the human answers get only the punctuation
    rule, and only when they are not all identical.
  * ``"2021"``: commit a013f00 ("Fixed processing answers bug"). Prediction and human answers are
    whitespace-stripped; only when the human answers are not all identical are both fully
    normalised, otherwise the raw strings are compared.

Aggregates are means over questions x100, rounded to 2 digits only when reported
(``VQAScores.accuracy(digits=2)`` gives the official ``VQAEval.accuracy`` dict).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from vpgtrans_jax.eval.answer_normalization import (
    normalize_answer,
    normalize_digits_articles,
    normalize_punctuation,
)
from vpgtrans_jax.eval.formats import VQAQuestion

VQARules = Literal["2017", "2021"]
VQA_RULES: tuple[str, ...] = ("2017", "2021")


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(
    prediction: str, human_answers: Sequence[str], rules: VQARules = "2017"
) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers of one question."""
    if rules not in VQA_RULES:
        raise ValueError(f"rules={rules!r}: expected one of {VQA_RULES}")
    if not human_answers:
        raise ValueError("human_answers is empty: a VQA question needs at least one answer")
    answers = list(human_answers)
    if rules == "2017":
        pred = normalize_answer(prediction)
        if len(set(answers)) > 1:
            answers = [normalize_punctuation(a) for a in answers]
    else:
        pred = _clean_whitespace(prediction)
        answers = [_clean_whitespace(a) for a in answers]
        if len(set(answers)) > 1:
            answers = [normalize_digits_articles(normalize_punctuation(a)) for a in answers]
            pred = normalize_digits_articles(normalize_punctuation(pred))
    hits = [a == pred for a in answers]
    total = sum(hits)
    # Leave answer i out: the matches among the others are total - hits[i].
    per_subset = [min(1.0, float(total - h) / 3) for h in hits]
    # Same float operations (sum, then divide) as the official script, for identical rounding.
    return float(sum(per_subset)) / len(per_subset)


def _percent(values: Sequence[float], digits: int | None) -> float:
    value = 100 * float(sum(values)) / len(values)
    return value if digits is None else round(value, digits)


@dataclasses.dataclass(frozen=True)
class VQAScores:
    """Per-question accuracies in [0, 1] (annotation order) with each question's types."""

    per_question: dict[str, float]
    question_types: dict[str, str]
    answer_types: dict[str, str]

    def accuracy(self, digits: int | None = 2) -> dict[str, object]:
        """``{"overall", "perQuestionType", "perAnswerType"}`` x100 (official layout).

        Args:
          digits: rounding as the official script (2), or None for unrounded values.
        """
        by_qtype: dict[str, list[float]] = {}
        by_atype: dict[str, list[float]] = {}
        for qid, acc in self.per_question.items():
            by_qtype.setdefault(self.question_types[qid], []).append(acc)
            by_atype.setdefault(self.answer_types[qid], []).append(acc)
        return {
            "overall": _percent(list(self.per_question.values()), digits),
            "perQuestionType": {k: _percent(v, digits) for k, v in by_qtype.items()},
            "perAnswerType": {k: _percent(v, digits) for k, v in by_atype.items()},
        }


def evaluate_vqa(
    predictions: Mapping[str, str],
    questions: Sequence[VQAQuestion],
    rules: VQARules = "2017",
) -> VQAScores:
    """Scores ``{question_id: answer}`` on the given annotated questions (all must be predicted).

    Use ``formats.select_ids`` first to check ids and pick a subset.
    """
    missing = [q.question_id for q in questions if q.question_id not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question id(s), e.g. {missing[:5]}")
    if not questions:
        raise ValueError("no questions to score")
    return VQAScores(
        per_question={
            q.question_id: question_accuracy(predictions[q.question_id], q.answers, rules)
            for q in questions
        },
        question_types={q.question_id: q.question_type for q in questions},
        answer_types={q.question_id: q.answer_type for q in questions},
    )
