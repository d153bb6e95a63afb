"""Official VQA accuracy: every normalisation rule and the leave-one-out arithmetic, by hand."""

import sys

import pytest

from vpgtrans_jax.eval.answer_normalization import (
    lemmatize_answers,
    normalize_answer,
    normalize_digits_articles,
    normalize_punctuation,
)
from vpgtrans_jax.eval.formats import VQAQuestion
from vpgtrans_jax.eval.vqa_metric import evaluate_vqa, question_accuracy


@pytest.mark.parametrize(
    "text, expected",
    [
        ("t-shirt", "t shirt"),  # not touching a space: replaced by a space
        ("red/blue", "red blue"),
        ("(dog)", " dog "),
        ("yes !", "yes "),  # touching a space: deleted
        ("hi, there", "hi there"),
        ("a ,b", "a b"),
        ("1,000", "1000"),  # comma between digits: deleted
        ("1,000 red/blue", "1000 redblue"),  # ... and then every listed character is deleted
        ("yes.", "yes"),  # a period not followed by a digit is dropped
        ("2.5", "2.5"),  # ... but kept before a digit
        (".5", ".5"),
        ("a.b", "ab"),
        ("e.g.", "eg"),
        ("3:00", "3:00"),  # ":" and "'" are not in the official list
        ("don't", "don't"),
        ("what's up?", "what's up "),
        # '"', brackets, braces and "=" touch a space somewhere: deleted; the rest: spaces.
        ('"q" [x] {y} =+\\_<>@`', "q x y" + " " * 8),
    ],
)
def test_normalize_punctuation(text, expected):
    assert normalize_punctuation(text) == expected


def test_at_most_32_periods_are_removed():
    # The official script passes re.UNICODE (= 32) as re.sub's count.
    assert normalize_punctuation("." * 40 + "x") == "." * 8 + "x"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two", "2"),  # lower-cased, number words -> digits
        ("none", "0"),
        ("zero", "0"),
        ("one dog", "1 dog"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none/zero..ten are mapped
        ("a dog", "dog"),  # articles dropped
        ("The  Dog", "dog"),
        ("an apple", "apple"),
        ("the", ""),
        ("another", "another"),  # whole words only
        ("dont", "don't"),  # contractions restored
        ("cant stop", "can't stop"),
        ("whats that", "what's that"),
        ("oclock", "o'clock"),
        ("somebody'd", "somebodyd"),  # official table quirk
        ("Im", "im"),  # the "Im" entry can never match after lower-casing
        ("  yes   no ", "yes no"),  # whitespace collapsed
    ],
)
def test_normalize_digits_articles(text, expected):
    assert normalize_digits_articles(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\tTwo dogs.\n", "2 dogs"),
        ("The T-Shirt", "t shirt"),
        ("1,000 Dollars", "1000 dollars"),
        ("ONE", "1"),
        ("Yes!", "yes"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("rules", ["2017", "2021"])
@pytest.mark.parametrize(
    "k, expected",
    [
        (0, 0.0),
        # 9 subsets hold the match -> 1/3 each, the subset without it -> 0: 9 * (1/3) / 10.
        (1, 0.3),
        # 8 subsets hold 2 matches (2/3), 2 subsets hold 1 (1/3): (16/3 + 2/3) / 10.
        (2, 0.6),
        # 7 subsets hold 3 (1), 3 subsets hold 2 (2/3): (7 + 2) / 10.
        (3, 0.9),
        (4, 1.0),  # every subset still holds >= 3
        (10, 1.0),
    ],
)
def test_leave_one_out(rules, k, expected):
    answers = ["cat"] * k + ["dog", "bird"] * 5
    answers = answers[:10]
    assert question_accuracy("cat", answers, rules) == pytest.approx(expected, abs=1e-12)


def test_2017_rules_normalise_the_prediction_always_and_the_answers_partly():
    # Unanimous human answers are left raw, so a raw match can fail after normalising.
    assert question_accuracy("T-Shirt", ["T-Shirt"] * 10, "2017") == 0.0
    assert question_accuracy("two", ["2"] * 10, "2017") == 1.0
    # Mixed answers get the punctuation rule only (no digits / articles).
    mixed = ["t-shirt"] * 5 + ["shirt"] * 5
    assert question_accuracy("T-shirt", mixed, "2017") == 1.0
    assert question_accuracy("2", ["two"] * 5 + ["dog"] * 5, "2017") == 0.0


def test_2021_rules_normalise_both_only_for_mixed_answers():
    assert question_accuracy("T-Shirt", ["T-Shirt"] * 10, "2021") == 1.0
    assert question_accuracy("two", ["2"] * 10, "2021") == 0.0
    assert question_accuracy(" 2\n", ["2"] * 10, "2021") == 1.0  # still stripped
    assert question_accuracy("2", ["two"] * 5 + ["dog"] * 5, "2021") == 1.0


def test_question_accuracy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rules='2019'"):
        question_accuracy("x", ["x"], "2019")
    with pytest.raises(ValueError, match="human_answers is empty"):
        question_accuracy("x", [])


def _q(qid, qtype, atype, answers):
    return VQAQuestion(str(qid), qtype, atype, tuple(answers))


def test_evaluate_vqa_aggregates_and_rounds_only_when_reported():
    questions = [
        _q(1, "how many", "number", ["2"] * 10),  # "two" -> 1.0
        _q(2, "what color", "other", ["red"] + ["blue"] * 9),  # "red" -> 0.3
        _q(3, "what color", "other", ["red", "red"] + ["blue"] * 8),  # "red" -> 0.6
    ]
    scores = evaluate_vqa({"1": "two", "2": "red", "3": "Red."}, questions)
    assert scores.per_question == pytest.approx({"1": 1.0, "2": 0.3, "3": 0.6})
    assert scores.accuracy() == {
        "overall": 63.33,
        "perQuestionType": {"how many": 100.0, "what color": 45.0},
        "perAnswerType": {"number": 100.0, "other": 45.0},
    }
    assert scores.accuracy(digits=None)["overall"] == pytest.approx(190 / 3, abs=1e-12)
    with pytest.raises(ValueError, match="no prediction for 1 question id"):
        evaluate_vqa({"1": "two", "2": "red"}, questions)


class _Token:
    def __init__(self, text, pos, lemma):
        self.text, self.pos_, self.lemma_ = text, pos, lemma


def test_lemmatize_keeps_lemmas_of_nouns_and_verbs_only():
    table = {
        "dogs running": [_Token("dogs", "NOUN", "dog"), _Token("running", "VERB", "run")],
        "is better": [_Token("is", "AUX", "be"), _Token("better", "ADJ", "well")],
    }
    out = lemmatize_answers(["dogs running", "is better"], nlp=lambda s: table[s])
    assert out == ["dog run", "is better"]


def test_lemmatize_without_spacy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(RuntimeError, match="pip install spacy"):
        lemmatize_answers(["dogs"])
