"""Writes a synthetic dataset (see ``synthetic.py``) in every on-disk format the sources read.

Layout under ``out``::

    images/{train,val,test}/{image_id:06d}.jpg       the images (shared by every format)
    annotations/caption_train.json                    LAVIS: [{"image","caption","image_id"}] x5/img
    annotations/caption_{val,test}.json               LAVIS: [{"image","caption":[5],"image_id"}]
    annotations/caption_{val,test}_gt.json            COCO ground truth for pycocoevalcap
    annotations/vqa_{split}_questions.json            VQAv2 official questions
    annotations/vqa_{split}_annotations.json          VQAv2 official annotations (10 answers)
    annotations/gqa_{split}_questions.json            GQA official {qid: {...}} questions
    cc_sbu_align/filter_cap.json + image/{id}.jpg     MiniGPT-4 instruction data (train images)
    webdataset/train-{k:05d}.tar                      key.jpg + key.txt + key.json
    tokenizer/                                        tiny byte-level BPE PreTrainedTokenizerFast
    manifest.json                                     arguments and counts
    .vpgtrans_output.json                             marks an output of ours (``outputs``)

``generate`` writes into a temporary directory beside ``out`` and renames it into place when
complete (``vpgtrans_jax.outputs.atomic_output``), so ``out`` never mixes files of two runs (stale
WebDataset shards beside new ones): an existing ``out`` must be empty or a dataset written here
before (``manifest.json`` and only the entries above), which is then replaced whole; anything
else is refused.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable

import numpy as np

from vpgtrans_jax.errors import DataError
from vpgtrans_jax.outputs import MARKER, atomic_output
from vpgtrans_jax.tiny import scenes as synthetic
from vpgtrans_jax.tiny.tokenizer import SPECIAL_TOKENS, train_tokenizer

SPLITS = ("train", "val", "test")
ENTRIES = (
    "images", "annotations", "cc_sbu_align", "webdataset", "tokenizer", "manifest.json", MARKER,
)  # fmt: skip
MIN_IMAGE_SIZE = 16
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the special tokens
# Prompt pieces the training and eval code feed the LLM; in the tokenizer corpus so they
# tokenise compactly.
_PROMPT_TEXTS = (
    "Question: Answer: Short answer:",
    "###Human: <Img><ImageHere></Img> ###Assistant: ",
    "Describe this image in detail. Take a look at this image and describe what you notice.",
)


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:  # every split non-empty, so every format has content
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"num_images={n} leaves no training images with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def _dump(path: str, obj: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards per seed
    tar.addfile(info, io.BytesIO(data))


def generate(
    out: str,
    num_images: int,
    seed: int = 0,
    image_size: int = 224,
    max_objects: int = 4,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    questions_per_image: int = 3,
    shard_size: int = 256,
    vocab_size: int = 512,
    write_tokenizer: bool = True,
) -> dict:
    """Generates ``num_images`` scenes into ``out`` and returns the manifest dict.

    Image ``i`` uses ``np.random.default_rng([seed, i])`` only, so the output depends on
    (seed, i, options) and nothing else. ``out`` is written as a whole (module docstring).
    """
    for name, value, low in [
        ("num_images", num_images, 1),
        ("seed", seed, 0),
        ("image_size", image_size, MIN_IMAGE_SIZE),
        ("max_objects", max_objects, 1),
        ("questions_per_image", questions_per_image, 1),
        ("shard_size", shard_size, 1),
        ("vocab_size", vocab_size, MIN_VOCAB),
    ]:
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if max_objects > len(synthetic.CELLS):
        raise ValueError(f"max_objects must be <= {len(synthetic.CELLS)}, got {max_objects}")
    for name, value in [("val_fraction", val_fraction), ("test_fraction", test_fraction)]:
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    sizes = _split_sizes(num_images, val_fraction, test_fraction)
    _check_target(out)
    made_by = "scripts/make_synthetic_data.py"
    with atomic_output(out, overwrite=True, kind="synthetic dataset", created_by=made_by,
                       also_ours=_is_dataset) as tmp:  # fmt: skip
        return _generate(
            tmp, sizes, seed, image_size, max_objects, questions_per_image, shard_size,
            vocab_size if write_tokenizer else None,
        )  # fmt: skip


def _is_dataset(path: str) -> bool:
    """``path`` holds an earlier dataset of ours (``manifest.json`` and only our entries)."""
    entries = set(os.listdir(path))
    return "manifest.json" in entries and entries <= set(ENTRIES)


def _check_target(out: str) -> None:
    """``out`` may be absent, empty, or an earlier dataset of ours (replaced whole)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise DataError(f"output directory {out} is a file")
    entries = sorted(os.listdir(out))
    if entries and not _is_dataset(out):
        foreign = [e for e in entries if e not in ENTRIES] or entries  # what is not ours first
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(
            f"output directory {out} is not empty and not a synthetic dataset written here "
            f"(it holds {shown}); choose an empty or new directory"
        )


def _generate(
    out: str,
    sizes: dict[str, int],
    seed: int,
    image_size: int,
    max_objects: int,
    questions_per_image: int,
    shard_size: int,
    vocab_size: int | None,
) -> dict:
    num_images = sum(sizes.values())
    ann = os.path.join(out, "annotations")
    texts: list[str] = list(_PROMPT_TEXTS)
    image_id = 0
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        lavis: list[dict] = []
        gt_images: list[dict] = []
        gt_anns: list[dict] = []
        vqa_q: list[dict] = []
        vqa_a: list[dict] = []
        gqa: dict[str, dict] = {}
        cc_sbu: list[dict] = []
        wds: list[tuple[str, bytes, str, dict]] = []
        img_dir = os.path.join(out, "images", split)
        os.makedirs(img_dir, exist_ok=True)
        for _ in range(sizes[split]):
            rng = np.random.default_rng([seed, image_id])
            scene = synthetic.sample_scene(rng, max_objects)
            jpeg = synthetic.encode_jpeg(synthetic.render(scene, image_size, rng))
            fname = f"{image_id:06d}.jpg"
            with open(os.path.join(img_dir, fname), "wb") as f:
                f.write(jpeg)
            caps = synthetic.captions(scene)
            rel = f"{split}/{fname}"
            if split == "train":
                lavis += [{"image": rel, "caption": c, "image_id": image_id} for c in caps]
                desc = synthetic.description(scene)
                cc_sbu.append({"image_id": str(image_id), "caption": desc, "jpeg": jpeg})
                meta = {"captions": caps, "objects": [vars(o) for o in scene.objects]}
                wds.append((f"{image_id:06d}", jpeg, caps[0], meta))
                texts.append(desc)
            else:
                lavis.append({"image": rel, "caption": caps, "image_id": image_id})
                gt_images.append({"id": image_id, "file_name": rel})
                gt_anns += [
                    {"image_id": image_id, "id": image_id * 10 + k, "caption": c}
                    for k, c in enumerate(caps)
                ]
            texts += caps
            for k, qa in enumerate(synthetic.questions(scene, rng, questions_per_image)):
                qid = image_id * 100 + k
                vqa_q.append({"image_id": image_id, "question": qa.question, "question_id": qid})
                answers = synthetic.annotator_answers(qa, rng)
                vqa_a.append(
                    {
                        "question_type": qa.question_type,
                        "multiple_choice_answer": qa.answer,
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(answers)
                        ],
                        "image_id": image_id,
                        "answer_type": qa.answer_type,
                        "question_id": qid,
                    }
                )
                gqa[str(qid)] = {
                    "imageId": f"{image_id:06d}",
                    "question": qa.question,
                    "answer": qa.answer,
                    "fullAnswer": qa.full_answer,
                    "isBalanced": True,
                    "types": {"detailed": qa.question_type, "structural": qa.answer_type},
                }
                texts += [qa.question, qa.answer, qa.full_answer]
            image_id += 1
        _dump(os.path.join(ann, f"caption_{split}.json"), lavis)
        if split != "train":
            gt = {"info": {}, "licenses": [], "type": "captions"}
            _dump(
                os.path.join(ann, f"caption_{split}_gt.json"),
                {**gt, "images": gt_images, "annotations": gt_anns},
            )
        vqa_info = {"info": {}, "license": {}, "data_type": "synthetic", "data_subtype": split}
        _dump(
            os.path.join(ann, f"vqa_{split}_questions.json"),
            {**vqa_info, "task_type": "Open-Ended", "questions": vqa_q},
        )
        _dump(
            os.path.join(ann, f"vqa_{split}_annotations.json"), {**vqa_info, "annotations": vqa_a}
        )
        _dump(os.path.join(ann, f"gqa_{split}_questions.json"), gqa)
        if split == "train":
            _write_cc_sbu(os.path.join(out, "cc_sbu_align"), cc_sbu)
            num_shards = _write_webdataset(os.path.join(out, "webdataset"), wds, shard_size)
        counts[split] = {"images": sizes[split], "questions": len(vqa_q)}
    manifest = {
        "seed": seed,
        "num_images": num_images,
        "image_size": image_size,
        "max_objects": max_objects,
        "questions_per_image": questions_per_image,
        "splits": counts,
        "webdataset_shards": num_shards,
    }
    if vocab_size is not None:
        manifest["tokenizer_vocab_size"] = train_tokenizer(
            texts, os.path.join(out, "tokenizer"), vocab_size
        )
    _dump(os.path.join(out, "manifest.json"), manifest)
    return manifest


def _write_cc_sbu(root: str, rows: list[dict]) -> None:
    os.makedirs(os.path.join(root, "image"), exist_ok=True)
    for r in rows:
        with open(os.path.join(root, "image", f"{r['image_id']}.jpg"), "wb") as f:
            f.write(r["jpeg"])
    anns = [{"image_id": r["image_id"], "caption": r["caption"]} for r in rows]
    _dump(os.path.join(root, "filter_cap.json"), {"annotations": anns})


def _write_webdataset(
    root: str, rows: Iterable[tuple[str, bytes, str, dict]], shard_size: int
) -> int:
    os.makedirs(root, exist_ok=True)
    rows = list(rows)
    num_shards = (len(rows) + shard_size - 1) // shard_size
    for s in range(num_shards):
        with tarfile.open(os.path.join(root, f"train-{s:05d}.tar"), "w") as tar:
            for key, jpeg, caption, meta in rows[s * shard_size : (s + 1) * shard_size]:
                _add_tar_member(tar, f"{key}.jpg", jpeg)
                _add_tar_member(tar, f"{key}.txt", caption.encode())
                _add_tar_member(
                    tar, f"{key}.json", json.dumps({"caption": caption, **meta}).encode()
                )
    return num_shards
