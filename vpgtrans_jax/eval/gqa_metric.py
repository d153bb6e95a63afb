"""GQA accuracy as in LAVIS: exact match of the normalised prediction with the raw answer.

The prediction goes through the full VQA answer normalisation (``normalize_answer``); GQA's
ground-truth answers are already lower-case single words or short phrases and are used as is.
Per structural / semantic question type accuracies are added when the questions carry ``types``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from vpgtrans_jax.eval.answer_normalization import normalize_answer
from vpgtrans_jax.eval.formats import GQAQuestion


def _percent(values: Sequence[float], digits: int | None) -> float:
    value = 100 * float(sum(values)) / len(values)
    return value if digits is None else round(value, digits)


@dataclasses.dataclass(frozen=True)
class GQAScores:
    """Per-question correctness (1.0 / 0.0, annotation order) and the questions' types."""

    per_question: dict[str, float]
    structural_types: dict[str, str | None]
    semantic_types: dict[str, str | None]

    def accuracy(self, digits: int | None = 2) -> dict[str, object]:
        """``{"overall"[, "perStructuralType", "perSemanticType"]}`` x100, rounded to ``digits``."""
        out: dict[str, object] = {"overall": _percent(list(self.per_question.values()), digits)}
        for key, types in (
            ("perStructuralType", self.structural_types),
            ("perSemanticType", self.semantic_types),
        ):
            groups: dict[str, list[float]] = {}
            for qid, correct in self.per_question.items():
                if types[qid] is not None:
                    groups.setdefault(types[qid], []).append(correct)
            if groups:
                out[key] = {k: _percent(v, digits) for k, v in groups.items()}
        return out


def evaluate_gqa(predictions: Mapping[str, str], questions: Sequence[GQAQuestion]) -> GQAScores:
    """Scores ``{question_id: answer}`` on the given questions (all must be predicted)."""
    missing = [q.question_id for q in questions if q.question_id not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question id(s), e.g. {missing[:5]}")
    if not questions:
        raise ValueError("no questions to score")
    return GQAScores(
        per_question={
            q.question_id: float(normalize_answer(predictions[q.question_id]) == q.answer)
            for q in questions
        },
        structural_types={q.question_id: q.structural_type for q in questions},
        semantic_types={q.question_id: q.semantic_type for q in questions},
    )
