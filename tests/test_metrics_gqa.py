"""GQA exact match after normalising the prediction, per-type breakdown and input formats."""

import pytest

from vpgtrans_jax.eval import formats
from vpgtrans_jax.eval.gqa_metric import evaluate_gqa

QUESTIONS = {
    "q1": {"answer": "yes", "types": {"structural": "verify", "semantic": "attr"}},
    "q2": {"answer": "table", "types": {"structural": "query", "semantic": "obj"}},
    "q3": {"answer": "2", "types": {"structural": "query", "semantic": "attr"}},
    "q4": {"answer": "t-shirt", "types": {"structural": "query", "semantic": "obj"}},
}


def test_exact_match_after_normalising_the_prediction_only():
    questions = formats.parse_gqa_questions(QUESTIONS)
    predictions = {"q1": "Yes.", "q2": "the table", "q3": "two", "q4": "t-shirt"}
    scores = evaluate_gqa(predictions, questions)
    # The raw answer "t-shirt" never equals a normalised prediction ("t shirt").
    assert scores.per_question == {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 0.0}
    assert scores.accuracy() == {
        "overall": 75.0,
        "perStructuralType": {"verify": 100.0, "query": 66.67},
        "perSemanticType": {"attr": 100.0, "obj": 50.0},
    }
    assert scores.accuracy(digits=None)["perStructuralType"]["query"] == pytest.approx(200 / 3)


def test_questions_without_types_report_overall_only():
    questions = formats.parse_gqa_questions([{"question_id": 7, "answer": "red"}])
    assert evaluate_gqa({"7": "Red"}, questions).accuracy() == {"overall": 100.0}


def test_prediction_formats_are_equivalent():
    expected = {"1": "yes", "2": "no"}
    assert formats.parse_gqa_predictions({"1": "yes", "2": "no"}) == expected
    sub = [{"questionId": "1", "prediction": "yes"}, {"questionId": 2, "prediction": "no"}]
    assert formats.parse_gqa_predictions(sub) == expected
    vqa_style = [{"question_id": 1, "answer": "yes"}, {"question_id": "2", "answer": "no"}]
    assert formats.parse_gqa_predictions(vqa_style) == expected


def test_bad_gqa_input_is_named():
    with pytest.raises(ValueError, match=r"predictions\['1'\]: expected a string, got int 3"):
        formats.parse_gqa_predictions({"1": 3})
    with pytest.raises(ValueError, match="question id 1 occurs more than once"):
        formats.parse_gqa_predictions([{"questionId": 1, "prediction": "a"}] * 2)
    with pytest.raises(ValueError, match=r"annotations\['q'\]: missing key\(s\) \['answer'\]"):
        formats.parse_gqa_questions({"q": {"question": "what?"}})
    with pytest.raises(ValueError, match="looks like a VQA file"):
        formats.parse_gqa_questions({"annotations": []})
