"""Random-access sources over annotation JSON files in the formats the original datasets ship.

Every source has ``__len__`` and ``__getitem__(i) -> dict`` (so ``grain.MapDataset.source``
takes it) and returns *raw* records: the image as ``image_path`` (a file path; reading it is the
decode step's job, so a missing file is a bad sample there, not a crash here) or ``image``
(encoded bytes), plus text fields:

- captions / instructions: ``text`` (str; the first reference when there are several) and
  ``captions`` (list[str], all references), ``image_id``;
- VQA: ``question``, ``answers`` (list[str], may be empty for test splits), ``question_id``,
  ``image_id``;
- every record: ``key`` (a string naming the sample, used in bad-sample reports);
- optionally ``prompt`` / ``instruction``: the sample's own prompt, when its annotation entry
  has one (``transforms.SampleConfig`` says how it combines with the config's prompt).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vpgtrans_jax import paths

Record = dict[str, Any]
# Per-sample prompt fields, copied from an annotation entry into its record when present.
PROMPT_FIELDS = ("prompt", "instruction")


def own_prompt_fields(entry: dict[str, Any]) -> Record:
    """The entry's ``prompt`` / ``instruction`` fields (checked when the sample is processed)."""
    return {k: entry[k] for k in PROMPT_FIELDS if k in entry}


def _read_json(path: str) -> Any:
    try:
        with paths.open_file(path) as f:  # a file or a URL (gs://)
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None


def _as_list(paths: str | Sequence[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; has {sorted(entry)}")


class ListSource:
    """A list of ready records; the base of the JSON sources (records are small dicts)."""

    def __init__(self, records: list[Record]):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Record:
        return dict(self._records[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)})"


class LavisCaptionSource(ListSource):
    """LAVIS caption JSON (COCO Karpathy, VG, SBU): ``[{"image", "caption", "image_id"?}]``.

    ``caption`` is a string (train files: one record per caption) or a list (val/test files: all
    references of one image). ``image`` is relative to ``image_root``.
    """

    def __init__(self, ann_paths: str | Sequence[str], image_root: str):
        records = []
        for path in _as_list(ann_paths):
            data = _read_json(path)
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of {{image, caption}} entries")
            for i, e in enumerate(data):
                _require(e, ("image", "caption"), f"{path}[{i}]")
                caps = [e["caption"]] if isinstance(e["caption"], str) else list(e["caption"])
                records.append(
                    {
                        "image_path": paths.join(image_root, e["image"]),
                        "text": caps[0] if caps else "",
                        "captions": caps,
                        "image_id": e.get("image_id", e["image"]),
                        "key": f"{paths.basename(path)}[{i}]:{e['image']}",
                        **own_prompt_fields(e),
                    }
                )
        super().__init__(records)


class CcSbuAlignSource(ListSource):
    """MiniGPT-4 ``cc_sbu_align``: ``root/filter_cap.json`` ({"annotations": [{"image_id",
    "caption"}]}) with images at ``root/image/{image_id}.jpg``."""

    def __init__(self, root: str):
        path = paths.join(root, "filter_cap.json")
        data = _read_json(path)
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{path}: expected {{'annotations': [...]}}")
        records = []
        for i, e in enumerate(data["annotations"]):
            _require(e, ("image_id", "caption"), f"{path}[annotations][{i}]")
            records.append(
                {
                    "image_path": paths.join(root, "image", f"{e['image_id']}.jpg"),
                    "text": e["caption"],
                    "captions": [e["caption"]],
                    "image_id": e["image_id"],
                    "key": f"cc_sbu_align:{e['image_id']}",
                    **own_prompt_fields(e),
                }
            )
        super().__init__(records)


class VqaSource(ListSource):
    """VQAv2 / OK-VQA official files: questions JSON (``{"questions": [{"image_id",
    "question", "question_id"}]}``) and optionally annotations JSON (``{"annotations":
    [{"question_id", "answers": [{"answer"}...], ...}]}``; omit it for test-dev).

    Image paths come from ``image_pattern`` formatted with ``image_id`` (COCO:
    ``"COCO_val2014_{image_id:012d}.jpg"``) under ``image_root``.
    """

    def __init__(
        self,
        questions_path: str,
        annotations_path: str | None,
        image_root: str,
        image_pattern: str = "COCO_val2014_{image_id:012d}.jpg",
    ):
        qdata = _read_json(questions_path)
        if not isinstance(qdata, dict) or "questions" not in qdata:
            raise ValueError(f"{questions_path}: expected {{'questions': [...]}} (VQA format)")
        answers: dict[int, list[str]] = {}
        if annotations_path is not None:
            adata = _read_json(annotations_path)
            if not isinstance(adata, dict) or "annotations" not in adata:
                raise ValueError(f"{annotations_path}: expected {{'annotations': [...]}}")
            for i, a in enumerate(adata["annotations"]):
                _require(a, ("question_id", "answers"), f"{annotations_path}[annotations][{i}]")
                answers[a["question_id"]] = [x["answer"] for x in a["answers"]]
        records = []
        for i, q in enumerate(qdata["questions"]):
            _require(q, ("image_id", "question", "question_id"), f"{questions_path}[{i}]")
            if annotations_path is not None and q["question_id"] not in answers:
                raise ValueError(
                    f"question_id {q['question_id']} of {questions_path} has no annotation in "
                    f"{annotations_path}"
                )
            name = image_pattern.format(image_id=q["image_id"])
            records.append(
                {
                    "image_path": paths.join(image_root, name),
                    "question": q["question"],
                    "answers": answers.get(q["question_id"], []),
                    "question_id": q["question_id"],
                    "image_id": q["image_id"],
                    "key": f"vqa:{q['question_id']}",
                    **own_prompt_fields(q),
                }
            )
        super().__init__(records)


class GqaSource(ListSource):
    """GQA questions: the official ``{question_id: {"imageId", "question", "answer"}}`` dict
    (images at ``image_root/{imageId}.jpg``) or LAVIS's list ``[{"image", "question",
    "answer", "question_id"}]``. ``answers`` holds the single answer (empty if absent)."""

    def __init__(self, questions_path: str, image_root: str):
        data = _read_json(questions_path)
        if isinstance(data, dict):
            items = []
            for qid, e in data.items():
                _require(e, ("imageId", "question"), f"{questions_path}[{qid!r}]")
                items.append((qid, f"{e['imageId']}.jpg", e["imageId"], e))
        elif isinstance(data, list):
            items = []
            for i, e in enumerate(data):
                _require(e, ("image", "question"), f"{questions_path}[{i}]")
                items.append((e.get("question_id", i), e["image"], e["image"], e))
        else:
            raise ValueError(f"{questions_path}: expected a GQA dict or a LAVIS list")
        records = [
            {
                "image_path": paths.join(image_root, image),
                "question": e["question"],
                "answers": [e["answer"]] if "answer" in e else [],
                "question_id": qid,
                "image_id": image_id,
                "key": f"gqa:{qid}",
                **own_prompt_fields(e),
            }
            for qid, image, image_id, e in items
        ]
        super().__init__(records)
