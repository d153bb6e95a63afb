"""The tiny chat model's instruction data, derived from the synthetic dataset (cached beside it).

Stage 3 of the original teaches a VL model to answer in the VL-Vicuna template; its tiny stand-in
(``configs/tiny_instruct.py``) needs questions as well as descriptions, and a frozen LLM that
knows the template's shape (a real Vicuna does). From the synthetic training images this writes:

- ``<synthetic>/chat_align/``: MiniGPT-4's ``cc_sbu_align`` layout, one entry per VQA training
  question (``instruction`` = the question, ``caption`` = its answer), images shared with
  ``cc_sbu_align/image`` through a symbolic link;
- ``chat_texts``: conversations in the vicuna_v0 template as plain text (a description and the
  image's questions, several turns each, the image left out), for the tiny LLM's pretraining.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vpgtrans_jax.train.presets import INSTRUCTIONS

DIRNAME = "chat_align"


def _questions(synthetic_dir: str) -> dict[str, list[tuple[str, str]]]:
    """image_id (str) -> [(question, answer)] of the VQA training split."""
    ann = os.path.join(synthetic_dir, "annotations")
    with open(os.path.join(ann, "vqa_train_questions.json")) as f:
        questions = json.load(f)["questions"]
    with open(os.path.join(ann, "vqa_train_annotations.json")) as f:
        answers = {
            a["question_id"]: a["multiple_choice_answer"] for a in json.load(f)["annotations"]
        }
    out: dict[str, list[tuple[str, str]]] = {}
    for q in questions:
        out.setdefault(str(q["image_id"]), []).append((q["question"], answers[q["question_id"]]))
    return out


def ensure_chat_align(synthetic_dir: str) -> str:
    """Writes ``<synthetic_dir>/chat_align`` on first use; returns its path."""
    root = os.path.join(synthetic_dir, DIRNAME)
    if os.path.exists(os.path.join(root, "filter_cap.json")):
        return root
    tmp = f"{root}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    entries = [
        {"image_id": image_id, "caption": answer, "instruction": question}
        for image_id, qas in sorted(_questions(synthetic_dir).items(), key=lambda kv: int(kv[0]))
        for question, answer in qas
        if os.path.exists(os.path.join(synthetic_dir, "cc_sbu_align", "image", f"{image_id}.jpg"))
    ]
    with open(os.path.join(tmp, "filter_cap.json"), "w") as f:
        json.dump({"annotations": entries}, f)
    os.symlink(os.path.join("..", "cc_sbu_align", "image"), os.path.join(tmp, "image"))
    try:
        os.replace(tmp, root)
    except OSError:  # another process wrote the same (deterministic) corpus first
        os.remove(os.path.join(tmp, "image"))
        os.remove(os.path.join(tmp, "filter_cap.json"))
        os.rmdir(tmp)
    return root


def chat_texts(synthetic_dir: str, seed: int = 0) -> list[str]:
    """Two conversations per training image in the vicuna_v0 template, as text without the
    image: a description request and the image's questions, in a shuffled order."""
    with open(os.path.join(synthetic_dir, "cc_sbu_align", "filter_cap.json")) as f:
        described = {e["image_id"]: e["caption"] for e in json.load(f)["annotations"]}
    questions = _questions(synthetic_dir)
    rng = np.random.default_rng(seed)
    texts = []
    for image_id, description in described.items():
        turns = list(questions.get(image_id, []))
        for _ in range(2):
            order = [turns[i] for i in rng.permutation(len(turns))]
            ask = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
            first, rest = (ask, description), order
            if rng.random() < 0.5 and order:  # a question first, then maybe the description
                first, rest = order[0], order[1:]
            text = f"###Human: <Img></Img> {first[0]} ###Assistant: {first[1]}###"
            text += "".join(f"Human: {q} ###Assistant: {a}###" for q, a in rest)
            texts.append(text)
    return texts


__all__ = ["ensure_chat_align", "chat_texts", "DIRNAME"]
