"""Per-sample decode + augment + tokenise, as a grain ``RandomMap`` that never raises on bad data.

A record whose image is missing, unreadable or corrupt, or whose (processed) text is empty, comes
out as a *bad row*: zero pixels, ``_bad`` set to the reason. Training batches drop those rows
(``pipeline.py`` counts them); generation batches keep them with ``valid = 0`` so every host
still produces the same number of fixed-shape batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from vpgtrans_jax.data import processors, text

MODES = ("train", "generate")
TEXT_PROCESSORS = ("caption", "question", "none")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How one record becomes model inputs.

    mode: ``"train"`` (``blip2_image_train`` + target ``prompt + text + end`` with loss masks) or
      ``"generate"`` (``blip_image_eval`` + left-padded prompt).
    prompt: train: prefix before the target, loss-masked (stage 3 template, or ``""``);
      generate: template whose ``{}`` receives the processed text field (``"Question: {}
      Answer:"``), or a fixed prompt (``""`` for captioning).
    text_field: record field holding the caption/question (``None``: no text, e.g. captioning
      eval). text_processor: ``"caption"`` (blip_caption), ``"question"`` (blip_question) or
      ``"none"`` (as is; the instruction data).
    meta_keys: record fields copied into generation batches (e.g. ``("question_id",)``).
    """

    mode: str = "train"
    image_size: int = 224
    max_len: int = 32
    prompt: str = ""
    text_field: str | None = "text"
    text_processor: str = "caption"
    max_words: int = 50
    end: str = "\n"
    min_scale: float = 0.5
    max_scale: float = 1.0
    flip_prob: float = 0.5
    meta_keys: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"SampleConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.text_processor not in TEXT_PROCESSORS:
            raise ValueError(
                f"SampleConfig.text_processor must be one of {TEXT_PROCESSORS}, "
                f"got {self.text_processor!r}"
            )
        if self.mode == "train" and self.text_field is None:
            raise ValueError("SampleConfig.text_field is required in train mode (the target)")
        if self.max_len < 1 or self.image_size < 1:
            raise ValueError(f"max_len and image_size must be >= 1, got {self}")


def _null_like(value: Any) -> Any:
    """Placeholder of the same type for padding rows: -1, "", [] or None."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return -1
    if isinstance(value, str):
        return ""
    if isinstance(value, list | tuple):
        return []
    return None


class SampleProcessor(grain.transforms.RandomMap):
    """``record -> {"pixel_values": float32[S, S, 3], "input_ids": int32[T], "attention_mask":
    int32[T], ("labels": int32[T],) meta..., "_bad": str, "_key": str, "_source": str}``.

    Padding records (``{"_pad": True}``, from eval padding) give an all-padding row, ``_bad`` "".
    """

    def __init__(self, config: SampleConfig, tokenizer: Any):
        self.config = config
        self.tokenizer = tokenizer

    def _text(self, record: dict[str, Any]) -> str:
        cfg = self.config
        if cfg.text_field is None:
            return ""
        if cfg.text_field not in record:
            raise KeyError(f"record has no field {cfg.text_field!r} (has {sorted(record)})")
        raw = record[cfg.text_field]
        if not isinstance(raw, str):
            raise TypeError(f"field {cfg.text_field!r} must be a string, got {type(raw).__name__}")
        if cfg.text_processor == "caption":
            return processors.blip_caption(raw, cfg.max_words)
        if cfg.text_processor == "question":
            return processors.blip_question(raw, cfg.max_words)
        return raw.strip()

    def _image(self, record: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        image = record.get("image")
        if image is None:
            image = record.get("image_path")
        if image is None:
            raise ValueError("record has neither 'image' bytes nor 'image_path'")
        if isinstance(image, np.ndarray):  # already-decoded uint8 arrays (some TFDS sets)
            from PIL import Image

            image = Image.fromarray(image)
        if cfg.mode == "train":
            return processors.blip2_image_train(
                image, rng, cfg.image_size, cfg.min_scale, cfg.max_scale, cfg.flip_prob
            )
        return processors.blip_image_eval(image, cfg.image_size)

    def _empty(self) -> dict[str, Any]:
        cfg = self.config
        s, t = cfg.image_size, cfg.max_len
        row = {
            "pixel_values": np.zeros((s, s, 3), np.float32),
            "input_ids": np.full(t, text.pad_id(self.tokenizer), np.int32),
            "attention_mask": np.zeros(t, np.int32),
        }
        if cfg.mode == "train":
            row["labels"] = np.full(t, text.IGNORE_INDEX, np.int32)
        if text.IMAGE_PLACEHOLDER in cfg.prompt:
            row["image_offset"] = np.int32(0)
        return row

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.config
        info = {
            "_bad": "",
            "_key": str(element.get("key", "")),
            "_source": str(element.get("_source", "")),
        }
        meta = {k: element.get(k) for k in cfg.meta_keys}
        if element.get("_pad"):
            meta = {k: _null_like(element.get("_template", {}).get(k)) for k in cfg.meta_keys}
            return {**self._empty(), **meta, "valid": np.int32(0), **info}
        try:
            txt = self._text(element)
            if cfg.mode == "train" and not txt:
                raise ValueError("empty text after processing")
            pixels = self._image(element, rng)
            if cfg.mode == "train":
                toks = text.encode_train(self.tokenizer, txt, cfg.max_len, cfg.prompt, cfg.end)
            else:
                prompt = cfg.prompt.format(txt) if "{}" in cfg.prompt else cfg.prompt
                toks = text.encode_generation(self.tokenizer, prompt, cfg.max_len)
        except Exception as e:  # noqa: BLE001 - any failure on one sample makes it a bad row
            info["_bad"] = f"{type(e).__name__}: {e}"
            return {**self._empty(), **meta, "valid": np.int32(0), **info}
        return {"pixel_values": pixels, **toks, **meta, "valid": np.int32(1), **info}
