"""The micro-VPGTrans world: the synthetic scenes at micro scale, two tokenizers, an LM corpus.

Images, captions and VQA questions come from the tiny scene generator (``scenes.py`` through
``dataset.generate``): objects with a shape, a colour, a size and a cell of a 3x3 grid on a
coloured background, one to ``max_objects`` of them, so every caption and answer is a function of
the pixels (counts, colours, positions...). On top of that layout ``ensure_world`` writes::

    annotations/caption_train_micro.json   the VL training captions: the first
                                           ``train_captions_per_image`` captions of each
                                           training image (1 = the canonical one, with sizes)
    tokenizers/src/, tokenizers/tgt/       two different BPE tokenizers (vocabulary size and
                                           style: byte-level "Ġ" like OPT, metaspace "▁" like
                                           LLaMA) trained on the training text
    lm_corpus.json                         the language-model corpus: per training image its
                                           five captions, then its questions with their answers
                                           ("Question: ... Answer: ..."), one line each
    world.json                             the settings and counts (written last: the marker)

The validation split holds the held-out evaluation images (``val_fraction`` of ``num_images``).
Image ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so ``scene_of`` recovers
any image's scene (the vision encoder's labels) without reading a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from typing import Any

import ml_collections
import numpy as np

from vpgtrans_jax.data.processors import blip_caption, blip_question
from vpgtrans_jax.tiny import dataset, scenes
from vpgtrans_jax.tiny.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

FORMAT = "vpgtrans_jax.micro_world"
VERSION = 1
VQA_PROMPT = "Question: {} Answer:"  # eval.protocols.VQA_PROMPT: the LM corpus uses the same form


def world_config() -> ml_collections.ConfigDict:
    """The world's settings (``config.tiny.micro.world`` of a micro transfer config)."""
    return ml_collections.ConfigDict(
        {
            "num_images": 2600,
            "image_size": 48,
            "max_objects": 3,  # captions fit 24 tokens
            "val_fraction": 0.2,  # the held-out evaluation images (>= 500 by default)
            "test_fraction": 0.01,
            "questions_per_image": 3,
            "seed": 0,
            "train_captions_per_image": 1,
            "src_tokenizer": {"vocab_size": 400, "style": "bytelevel"},
            "tgt_tokenizer": {"vocab_size": 448, "style": "metaspace"},
        }
    )


def scene_of(seed: int, image_id: int, max_objects: int) -> scenes.Scene:
    """The scene of image ``image_id`` of a world generated with ``seed`` (``dataset.generate``
    draws each image's scene first from ``default_rng([seed, image_id])``)."""
    return scenes.sample_scene(np.random.default_rng([seed, image_id]), max_objects)


def _read(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _lm_corpus(root: str) -> list[list[str]]:
    """Per training image: its captions, then "Question: q Answer: a" lines."""
    ann = os.path.join(root, "annotations")
    captions: dict[int, list[str]] = defaultdict(list)
    for e in _read(os.path.join(ann, "caption_train.json")):
        captions[e["image_id"]].append(blip_caption(e["caption"]))
    q_file = _read(os.path.join(ann, "vqa_train_questions.json"))
    questions = {q["question_id"]: q for q in q_file["questions"]}
    qa: dict[int, list[str]] = defaultdict(list)
    for a in _read(os.path.join(ann, "vqa_train_annotations.json"))["annotations"]:
        q = blip_question(questions[a["question_id"]]["question"])
        qa[a["image_id"]].append(f"{VQA_PROMPT.format(q)} {a['multiple_choice_answer']}")
    return [captions[i] + qa[i] for i in sorted(captions)]


def ensure_world(root: str, wc: ml_collections.ConfigDict) -> dict[str, Any]:
    """Generates the world into ``root`` on first use (atomically); returns ``world.json``."""
    root = os.path.abspath(os.path.expanduser(root))
    marker = os.path.join(root, "world.json")
    if os.path.isfile(marker):
        return _read(marker)
    tmp = f"{root}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = dataset.generate(
        tmp,
        num_images=wc.num_images,
        seed=wc.seed,
        image_size=wc.image_size,
        max_objects=wc.max_objects,
        val_fraction=wc.val_fraction,
        test_fraction=wc.test_fraction,
        questions_per_image=wc.questions_per_image,
        write_tokenizer=False,
    )
    ann = os.path.join(tmp, "annotations")
    k = int(wc.train_captions_per_image)
    if not 1 <= k <= 5:
        raise ValueError(f"world.train_captions_per_image must be in [1, 5], got {k}")
    seen: dict[int, int] = defaultdict(int)
    train = []
    for e in _read(os.path.join(ann, "caption_train.json")):  # five per image, canonical first
        if seen[e["image_id"]] < k:
            train.append(e)
        seen[e["image_id"]] += 1
    with open(os.path.join(ann, "caption_train_micro.json"), "w") as f:
        json.dump(train, f)
    corpus = _lm_corpus(tmp)
    with open(os.path.join(tmp, "lm_corpus.json"), "w") as f:
        json.dump(corpus, f)
    # The tokenizers see the training text and the prompt pieces the code feeds the LLM.
    texts = [line for block in corpus for line in block] + list(dataset._PROMPT_TEXTS)
    vocab = {}
    for side in ("src", "tgt"):
        spec = wc[f"{side}_tokenizer"]
        vocab[side] = train_tokenizer(
            texts, os.path.join(tmp, "tokenizers", side), spec.vocab_size, spec.style
        )
    world = {
        "format": FORMAT,
        "version": VERSION,
        "settings": wc.to_dict(),
        "splits": manifest["splits"],
        "train_captions": len(train),
        "lm_lines": sum(len(b) for b in corpus),
        "tokenizer_vocab": vocab,
    }
    with open(os.path.join(tmp, "world.json"), "w") as f:
        json.dump(world, f, indent=1)
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first; its world is identical (deterministic)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated the micro world in %s: %s", root, manifest["splits"])
    return _read(marker)


def split_image_ids(root: str, split: str) -> list[tuple[int, str]]:
    """``[(image_id, image path)]`` of a split, in file order."""
    entries = _read(os.path.join(root, "annotations", f"caption_{split}.json"))
    out, seen = [], set()
    for e in entries:
        if e["image_id"] not in seen:
            seen.add(e["image_id"])
            out.append((e["image_id"], os.path.join(root, "images", e["image"])))
    return out
