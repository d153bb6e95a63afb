"""Readers for the official result and annotation formats, with clear errors on bad input.

Ids are compared as strings (``str(question_id)``), so ``1`` and ``"1"`` name the same question.

Result formats:
  * captions (COCO / NoCaps): ``[{"image_id": id, "caption": str}, ...]``
  * VQA v2 / OK-VQA: ``[{"question_id": id, "answer": str}, ...]``
  * GQA: ``{question_id: answer}``; also accepted: the GQA submission list
    ``[{"questionId": id, "prediction": str}]`` and ``[{"question_id": id, "answer": str}]``.

Annotation formats:
  * captions: COCO caption json ``{"images": [{"id", ...}], "annotations": [{"image_id",
    "caption"}]}``; NoCaps images also carry ``"domain"`` (in-domain / near-domain / out-domain).
  * VQA v2 / OK-VQA: ``{"annotations": [{"question_id", "question_type", "answer_type",
    "answers": [{"answer": str}, ...]}]}`` and questions ``{"questions": [{"question_id"}]}``.
  * GQA: questions json ``{question_id: {"answer": str, "types": {...}}}`` or a list of
    ``{"question_id", "answer"}`` records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class VQAQuestion:
    """One annotated VQA question: its human answers (10 for VQA v2 and OK-VQA) and types."""

    question_id: str
    question_type: str
    answer_type: str
    answers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GQAQuestion:
    """One annotated GQA question; the types are None where the file has no ``types``."""

    question_id: str
    answer: str
    structural_type: str | None = None
    semantic_type: str | None = None


@dataclasses.dataclass(frozen=True)
class CaptionReferences:
    """Reference captions per image (file order) and, for NoCaps, each image's domain."""

    captions: dict[str, list[str]]
    domains: dict[str, str] | None = None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Loads a json file; ``what`` names the file's role in error messages."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def _id(value: Any, where: str) -> str:
    # bool is an int subclass, but True is never a meaningful id.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: expected an integer or string id, got {_short(value)}")
    return str(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__} {_short(value)}")
    return value


def _record(item: Any, keys: Iterable[str], where: str) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__} {_short(item)}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; has {sorted(item)}")
    return item


def _list(obj: Any, what: str, expected: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ValueError(f"{what}: expected {expected}, got a JSON {type(obj).__name__}")
    return obj


def _pairs_to_dict(pairs: Iterable[tuple[str, str]], what: str, id_name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{what}: {id_name} {key} occurs more than once")
        out[key] = value
    return out


def parse_caption_predictions(obj: Any, what: str = "predictions") -> dict[str, str]:
    """``[{"image_id", "caption"}]`` -> ``{image_id: caption}``; duplicate ids are an error."""
    items = _list(obj, what, 'a list of {"image_id", "caption"} objects (COCO result format)')
    pairs = []
    for i, item in enumerate(items):
        rec = _record(item, ("image_id", "caption"), f"{what}[{i}]")
        image_id = _id(rec["image_id"], f"{what}[{i}].image_id")
        pairs.append((image_id, _str(rec["caption"], f"{what}[{i}].caption")))
    return _pairs_to_dict(pairs, what, "image_id")


def parse_caption_references(
    obj: Any, what: str = "annotations", need_domains: bool = False
) -> CaptionReferences:
    """COCO caption annotation json -> references per image (+ NoCaps domains when asked).

    Images listed in ``images`` without any caption are left out (they cannot be scored).
    """
    if not isinstance(obj, dict) or "annotations" not in obj:
        raise ValueError(
            f"{what}: expected a COCO caption annotation object with an 'annotations' list "
            f"(and 'images'), got {type(obj).__name__}"
            + (f" with keys {sorted(obj)}" if isinstance(obj, dict) else "")
        )
    captions: dict[str, list[str]] = {}
    for i, item in enumerate(_list(obj["annotations"], f"{what}.annotations", "a list")):
        rec = _record(item, ("image_id", "caption"), f"{what}.annotations[{i}]")
        image_id = _id(rec["image_id"], f"{what}.annotations[{i}].image_id")
        text = _str(rec["caption"], f"{what}.annotations[{i}].caption")
        captions.setdefault(image_id, []).append(text)
    domains = None
    if need_domains:
        if "images" not in obj:
            raise ValueError(f"{what}: NoCaps scoring needs an 'images' list with 'domain'")
        domains = {}
        for i, item in enumerate(_list(obj["images"], f"{what}.images", "a list")):
            rec = _record(item, ("id", "domain"), f"{what}.images[{i}]")
            domains[_id(rec["id"], f"{what}.images[{i}].id")] = _str(
                rec["domain"], f"{what}.images[{i}].domain"
            )
        unknown = [k for k in captions if k not in domains]
        if unknown:
            raise ValueError(
                f"{what}: {len(unknown)} captioned image id(s) have no entry with a 'domain' in "
                f"'images' (e.g. {_examples(unknown)})"
            )
    return CaptionReferences(captions=captions, domains=domains)


def parse_vqa_predictions(obj: Any, what: str = "predictions") -> dict[str, str]:
    """``[{"question_id", "answer"}]`` -> ``{question_id: answer}``; duplicates are an error."""
    items = _list(obj, what, 'a list of {"question_id", "answer"} objects (VQA result format)')
    pairs = []
    for i, item in enumerate(items):
        rec = _record(item, ("question_id", "answer"), f"{what}[{i}]")
        qid = _id(rec["question_id"], f"{what}[{i}].question_id")
        pairs.append((qid, _str(rec["answer"], f"{what}[{i}].answer")))
    return _pairs_to_dict(pairs, what, "question_id")


def parse_vqa_annotations(obj: Any, what: str = "annotations") -> list[VQAQuestion]:
    """Official VQA annotation json (``{"annotations": [...]}``, or the bare list) -> questions."""
    items = obj["annotations"] if isinstance(obj, dict) and "annotations" in obj else obj
    items = _list(items, what, "a VQA annotation object with an 'annotations' list")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"{what}.annotations[{i}]"
        rec = _record(item, ("question_id", "question_type", "answer_type", "answers"), where)
        qid = _id(rec["question_id"], f"{where}.question_id")
        if qid in seen:
            raise ValueError(f"{what}: question_id {qid} occurs more than once")
        seen.add(qid)
        answers = _list(rec["answers"], f"{where}.answers", "a list of {'answer'} objects")
        if not answers:
            raise ValueError(f"{where}.answers: expected at least one human answer, got none")
        texts = tuple(
            _str(_record(a, ("answer",), f"{where}.answers[{j}]")["answer"], f"{where}.answers")
            for j, a in enumerate(answers)
        )
        out.append(
            VQAQuestion(
                question_id=qid,
                question_type=_str(rec["question_type"], f"{where}.question_type"),
                answer_type=_str(rec["answer_type"], f"{where}.answer_type"),
                answers=texts,
            )
        )
    return out


def parse_vqa_question_ids(obj: Any, what: str = "questions") -> list[str]:
    """Official VQA questions json (``{"questions": [{"question_id", ...}]}``) -> ids."""
    if not isinstance(obj, dict) or "questions" not in obj:
        raise ValueError(f"{what}: expected a VQA questions object with a 'questions' list")
    items = _list(obj["questions"], f"{what}.questions", "a list")
    return [
        _id(_record(q, ("question_id",), f"{what}.questions[{i}]")["question_id"], what)
        for i, q in enumerate(items)
    ]


def parse_gqa_predictions(obj: Any, what: str = "predictions") -> dict[str, str]:
    """``{question_id: answer}`` (or a GQA submission list) -> ``{question_id: answer}``."""
    if isinstance(obj, dict):
        return {_id(k, what): _str(v, f"{what}[{k!r}]") for k, v in obj.items()}
    items = _list(obj, what, "an object {question_id: answer}")
    pairs = []
    for i, item in enumerate(items):
        where = f"{what}[{i}]"
        if isinstance(item, dict) and "questionId" in item:
            rec = _record(item, ("questionId", "prediction"), where)
            pairs.append((_id(rec["questionId"], where), _str(rec["prediction"], where)))
        else:
            rec = _record(item, ("question_id", "answer"), where)
            pairs.append((_id(rec["question_id"], where), _str(rec["answer"], where)))
    return _pairs_to_dict(pairs, what, "question id")


def parse_gqa_questions(obj: Any, what: str = "annotations") -> list[GQAQuestion]:
    """GQA questions json with answers -> questions (types kept when present)."""
    expected = "a GQA questions object {question_id: {'answer', ...}}"
    if isinstance(obj, dict) and ("annotations" in obj or "questions" in obj):
        raise ValueError(f"{what}: expected {expected}; this looks like a VQA file")
    if isinstance(obj, dict):
        entries = [(k, v, f"{what}[{k!r}]") for k, v in obj.items()]
    else:
        items = _list(obj, what, expected)
        entries = []
        for i, item in enumerate(items):
            rec = _record(item, ("question_id",), f"{what}[{i}]")
            entries.append((rec["question_id"], rec, f"{what}[{i}]"))
    out, seen = [], set()
    for key, rec, where in entries:
        qid = _id(key, where)
        if qid in seen:
            raise ValueError(f"{what}: question id {qid} occurs more than once")
        seen.add(qid)
        rec = _record(rec, ("answer",), where)
        types = rec.get("types") or {}
        if not isinstance(types, dict):
            raise ValueError(f"{where}.types: expected an object, got {_short(types)}")
        out.append(
            GQAQuestion(
                question_id=qid,
                answer=_str(rec["answer"], f"{where}.answer"),
                structural_type=types.get("structural"),
                semantic_type=types.get("semantic"),
            )
        )
    return out


def _examples(ids: Iterable[str], n: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def select_ids(
    expected: list[str],
    predicted: Collection[str],
    *,
    id_name: str,
    predictions_name: str,
    annotations_name: str,
    allow_subset: bool = False,
) -> list[str]:
    """Ids to score, in annotation order; raises a clear error on missing or extra ids.

    Args:
      expected: ids in the annotations (their order is the order of summation).
      predicted: ids in the predictions.
      allow_subset: score only the predicted ids instead of failing on missing ones.
    """
    expected_set = set(expected)
    extra = [k for k in predicted if k not in expected_set]
    if extra:
        raise ValueError(
            f"{predictions_name} has {len(extra)} {id_name}(s) that are not in "
            f"{annotations_name} (e.g. {_examples(extra)}): wrong annotation file or split?"
        )
    missing = [k for k in expected if k not in predicted]
    if missing and not allow_subset:
        raise ValueError(
            f"{predictions_name} lacks {len(missing)} of the {len(expected)} {id_name}s in "
            f"{annotations_name} (e.g. {_examples(missing)}); pass --allow-subset to score only "
            f"the {len(predicted)} predicted ones"
        )
    if not predicted:
        raise ValueError(f"{predictions_name} is empty: nothing to score")
    return [k for k in expected if k in predicted]
