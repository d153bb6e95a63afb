"""Tokenisation into fixed-shape training and generation arrays.

Training (``encode_train``): ``prompt + text + end`` (end = ``"\\n"``, the VPGTrans target end),
tokenised with the tokenizer's own special tokens (BOS for OPT/LLaMA), truncated on the right to
``max_len`` and right-padded to ``max_len``. ``labels`` equal ``input_ids`` except ``-100`` on
padding and on the prompt's tokens (BOS included, as in LAVIS's ``prompt_length``). Labels are
*not* shifted: position t's label is token t; the loss shifts. The model prepends the query
positions itself.

Generation (``encode_generation``): the prompt, right-truncated to ``max_len`` like LAVIS, then
*left*-padded to ``max_len`` so every row's last position is the last prompt token.

``collate`` stacks per-sample arrays and, when ``buckets`` are given, trims the padding to the
smallest bucket length that fits the batch, so shapes come from a small fixed set and jitted
steps compile once per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vpgtrans_jax import paths

IGNORE_INDEX = -100


def load_tokenizer(path: str) -> Any:
    """Loads a Hugging Face tokenizer directory offline (no hub access); a URL (``gs://``) is
    read from a local copy."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(paths.local_copy(path), local_files_only=True)


def check_tokenizer_fits(tokenizer: Any, vocab_size: int, model: str = "the model") -> None:
    """Refuses a tokenizer that can produce ids the LLM has no embedding for.

    ``len(tokenizer)`` (added tokens included) must not exceed the LLM's ``vocab_size``: an id
    past it gives NaN logits, hence zeros from ``generate`` and empty answers. A smaller
    tokenizer is normal (OPT pads its vocabulary to 50272 for 50265 tokens). Every place that
    pairs a tokenizer with a model calls this (training, evaluation, ``generate_text``, chat).
    """
    n = len(tokenizer)
    if n > vocab_size:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name} has {n} tokens but {model}'s LLM vocabulary has {vocab_size}: "
            f"ids >= {vocab_size} would give NaN logits; use the tokenizer of that LLM"
        )


def pad_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (LLaMA has no pad token; VPGTrans pads with EOS)."""
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither pad_token nor eos_token")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


IMAGE_PLACEHOLDER = "<ImageHere>"


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_train(
    tokenizer: Any, text: str, max_len: int, prompt: str = "", end: str = "\n"
) -> dict[str, np.ndarray]:
    """One training example -> ``input_ids``, ``attention_mask``, ``labels`` ``int32[max_len]``.

    ``prompt`` tokens (with BOS) get label -100; so does padding. BOS is a target when there is
    no prompt, as in the original (it is predicted from the last visual query position).

    A prompt containing ``<ImageHere>`` (the MiniGPT-4 / VL-Vicuna stage-3 template) places the
    soft prompt there: as in MiniGPT-4, the part before it is tokenised with BOS, the part after
    it and the target without special tokens, and ``image_offset`` (int32 scalar) says how many
    text tokens precede the image.
    """
    if IMAGE_PLACEHOLDER in prompt:
        before, after = prompt.split(IMAGE_PLACEHOLDER, 1)
        head = _ids(tokenizer, before)
        prompt_ids = head + _plain_ids(tokenizer, after)
        ids = (prompt_ids + _plain_ids(tokenizer, text + end))[:max_len]
        out = _pack(tokenizer, ids, len(prompt_ids), max_len)
        out["image_offset"] = np.int32(min(len(head), max_len))
        return out
    ids = _ids(tokenizer, prompt + text + end)[:max_len]
    prompt_len = len(_ids(tokenizer, prompt)) if prompt else 0
    return _pack(tokenizer, ids, prompt_len, max_len)


def _pack(tokenizer: Any, ids: list[int], prompt_len: int, max_len: int) -> dict[str, np.ndarray]:
    """Right-pads ``ids`` to ``max_len``; labels -100 on the prompt and the padding."""
    n = len(ids)
    input_ids = np.full(max_len, pad_id(tokenizer), np.int32)
    input_ids[:n] = ids
    mask = np.zeros(max_len, np.int32)
    mask[:n] = 1
    labels = np.where(mask == 1, input_ids, IGNORE_INDEX).astype(np.int32)
    labels[: min(prompt_len, max_len)] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def encode_generation(tokenizer: Any, prompt: str, max_len: int) -> dict[str, np.ndarray]:
    """One generation prompt -> left-padded ``input_ids``, ``attention_mask`` ``int32[max_len]``.

    Prompts are cut to ``max_len`` tokens on the right (as LAVIS). A prompt containing
    ``<ImageHere>`` is tokenised as in training (``encode_train``: the part before it with BOS,
    the rest without special tokens) and also gets ``image_offset`` (int32 scalar): how many
    columns, padding included, precede the soft prompt (``generate(image_offsets=...)``).
    """
    head = None
    if IMAGE_PLACEHOLDER in prompt:
        before, after = prompt.split(IMAGE_PLACEHOLDER, 1)
        head = _ids(tokenizer, before)
        ids = (head + _plain_ids(tokenizer, after))[:max_len]
    else:
        ids = _ids(tokenizer, prompt)[:max_len]
    input_ids = np.full(max_len, pad_id(tokenizer), np.int32)
    mask = np.zeros(max_len, np.int32)
    if ids:
        input_ids[max_len - len(ids) :] = ids
        mask[max_len - len(ids) :] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if head is not None:
        out["image_offset"] = np.int32(max_len - len(ids) + min(len(head), len(ids)))
    return out


def bucket_length(needed: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= needed (buckets ascending); the largest if none fits."""
    for b in sorted(buckets):
        if b >= needed:
            return b
    return max(buckets)


def collate(
    examples: Sequence[dict[str, Any]],
    buckets: Sequence[int] | None = None,
    left_padded: bool = False,
) -> dict[str, np.ndarray]:
    """Stacks per-example arrays into a batch (same keys in every example).

    With ``buckets``, sequence arrays (``input_ids``, ``attention_mask``, ``labels``) are cut to
    ``bucket_length(longest row)``: trailing columns for right padding, leading columns for left
    padding (those columns are padding in every row, so nothing is lost).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    keys = list(examples[0])
    for i, ex in enumerate(examples):
        if list(ex) != keys:
            raise ValueError(f"example {i} has keys {sorted(ex)}, expected {sorted(keys)}")
    batch = {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in keys}
    if buckets and "attention_mask" in batch:
        mask = batch["attention_mask"]
        longest = int(mask.sum(axis=1).max())
        t = bucket_length(longest, buckets)
        if t > mask.shape[1]:
            raise ValueError(f"bucket length {t} exceeds the padded length {mask.shape[1]}")
        if left_padded:
            return keep_last_columns(batch, t)
        for k in _SEQUENCE_KEYS:
            if k in batch:
                batch[k] = batch[k][:, :t]
    return batch


_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def keep_last_columns(batch: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """A left-padded batch cut to its last ``t`` columns; ``image_offset`` moves with the cut."""
    cut = batch["input_ids"].shape[1] - t
    out = dict(batch)
    for k in _SEQUENCE_KEYS:
        if k in out:
            out[k] = out[k][:, cut:]
    if "image_offset" in out:
        out["image_offset"] = np.maximum(out["image_offset"] - cut, 0).astype(np.int32)
    return out


def train_batch(
    tokenizer: Any,
    texts: Sequence[str],
    max_len: int,
    prompt: str = "",
    end: str = "\n",
    buckets: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Texts -> right-padded ``input_ids``/``attention_mask``/``labels`` ``int32[B, T]``."""
    rows = [encode_train(tokenizer, t, max_len, prompt, end) for t in texts]
    return collate(rows, buckets)


def generation_batch(
    tokenizer: Any, prompts: Sequence[str], max_len: int, buckets: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Prompts -> left-padded ``input_ids``/``attention_mask`` ``int32[B, T]``.

    When any prompt has ``<ImageHere>`` the batch also holds ``image_offset`` int32[B] (0, i.e.
    the soft prompt first, for the prompts without it), counted in the returned columns.
    """
    rows = [encode_generation(tokenizer, p, max_len) for p in prompts]
    if any("image_offset" in r for r in rows):
        rows = [{"image_offset": np.int32(0), **r} for r in rows]
    return collate(rows, buckets, left_padded=True)
