"""scripts/score.py end to end on VQA-style files: official formats in, table and JSON out."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpgtrans_jax.eval.scoring import format_table, score_files

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "score.py"


def _run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _answers(*texts):
    return [
        {"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)
    ]


@pytest.fixture
def vqa_files(tmp_path):
    annotations = {
        "annotations": [
            {
                "question_id": 11,
                "image_id": 1,
                "question_type": "how many",
                "answer_type": "number",
                "answers": _answers(*["2"] * 10),
            },
            {
                "question_id": 12,
                "image_id": 1,
                "question_type": "what color is the",
                "answer_type": "other",
                "answers": _answers("red", "red", *["blue"] * 8),
            },
        ]
    }
    questions = {"questions": [{"question_id": 11, "image_id": 1}, {"question_id": 12}]}
    predictions = [{"question_id": 11, "answer": "Two"}, {"question_id": 12, "answer": "red"}]
    for name, obj in (("ann", annotations), ("ques", questions), ("pred", predictions)):
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    return tmp_path


def test_help_documents_every_flag():
    out = _run("--help")
    assert out.returncode == 0
    for flag in (
        "--task",
        "--predictions",
        "--annotations",
        "--questions",
        "--out",
        "--vqa-rules",
        "--[no]lemmatize",  # absl spells boolean flags this way
        "--[no]spice",
        "--[no]spice-download",
        "--[no]allow-subset",
        "--[no]per-question",
    ):
        assert flag in out.stdout, flag
    for task in ("coco_caption", "nocaps", "vqav2", "okvqa", "gqa"):
        assert task in out.stdout


def test_vqa_scoring_writes_official_layout(vqa_files):
    d = vqa_files
    out = _run(
        "--task", "vqav2", "--predictions", d / "pred.json", "--annotations", d / "ann.json",
        "--questions", d / "ques.json", "--out", d / "m.json", "--per-question",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    metrics = json.loads((d / "m.json").read_text())
    assert metrics["accuracy"] == {
        "overall": 80.0,  # (1.0 + 0.6) / 2
        "perQuestionType": {"how many": 100.0, "what color is the": 60.0},
        "perAnswerType": {"number": 100.0, "other": 60.0},
    }
    assert metrics["per_question"] == {"11": 100.0, "12": 60.0}
    assert metrics["num_questions"] == 2 and metrics["vqa_rules"] == "2017"
    assert metrics["lemmatized"] is False
    assert "overall" in out.stdout and "80.00" in out.stdout
    assert "answer type: other" in out.stdout


def test_vqa_rules_2021_changes_unanimous_questions(vqa_files):
    d = vqa_files
    m = score_files("okvqa", d / "pred.json", d / "ann.json", vqa_rules="2021", log=print)
    # "Two" vs ten raw "2": no normalisation for unanimous answers in the 2021 script.
    assert m["accuracy"]["overall"] == 30.0
    assert "VQA rules 2021" in format_table(m)


@pytest.mark.parametrize(
    "predictions, message",
    [
        ([{"question_id": 11, "answer": "2"}], "lacks 1 of the 2 question ids.*e\\.g\\. 12"),
        (
            [{"question_id": i, "answer": "2"} for i in (11, 12, 99)],
            "has 1 question id\\(s\\) that are not in annotations.*e\\.g\\. 99",
        ),
        ([{"question_id": 11, "answer": "2"}] * 2, "question_id 11 occurs more than once"),
        ({"11": "2"}, "expected a list of .* \\(VQA result format\\), got a JSON dict"),
        ([{"question_id": 11, "answer": 2}], "predictions .*\\[0\\].answer: expected a string"),
        ([{"question_id": 11}], "missing key\\(s\\) \\['answer'\\]"),
    ],
)
def test_bad_predictions_fail_clearly(vqa_files, predictions, message):
    (vqa_files / "bad.json").write_text(json.dumps(predictions))
    out = _run(
        "--task", "vqav2", "--predictions", vqa_files / "bad.json",
        "--annotations", vqa_files / "ann.json",
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    assert re.search(message, out.stderr), out.stderr


def test_allow_subset_scores_only_predicted_questions(vqa_files):
    (vqa_files / "part.json").write_text(json.dumps([{"question_id": 12, "answer": "red"}]))
    m = score_files(
        "vqav2", vqa_files / "part.json", vqa_files / "ann.json", allow_subset=True, log=print
    )
    assert m["num_questions"] == 1 and m["accuracy"]["overall"] == 60.0


def test_input_file_and_option_errors(vqa_files):
    d = vqa_files
    (d / "q_other.json").write_text(json.dumps({"questions": [{"question_id": 11}]}))
    with pytest.raises(ValueError, match="hold different question ids"):
        score_files("vqav2", d / "pred.json", d / "ann.json", d / "q_other.json")
    with pytest.raises(ValueError, match="--questions is only used by"):
        score_files("gqa", d / "pred.json", d / "ann.json", d / "ques.json")
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        score_files("vqav2", d / "nope.json", d / "ann.json")
    (d / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        score_files("vqav2", d / "broken.json", d / "ann.json")
    with pytest.raises(ValueError, match="--lemmatize applies to VQA-style answers"):
        score_files("nocaps", d / "pred.json", d / "ann.json", lemmatize=True)
    out = _run(
        "--task", "coco_caption", "--predictions", "p", "--annotations", "a", "--spice-download"
    )
    assert out.returncode == 2 and "only makes sense together with --spice" in out.stderr
