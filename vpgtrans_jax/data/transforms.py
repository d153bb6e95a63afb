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
from vpgtrans_jax.data.sources import PROMPT_FIELDS

MODES = ("train", "generate")
TEXT_PROCESSORS = ("caption", "question", "none")
SLOT = "{}"  # where a template prompt takes the sample's instruction (or, generating, question)


def own_prompt(record: dict[str, Any]) -> str | None:
    """The sample's own ``prompt`` (or ``instruction``) field, or None when it has none."""
    for field in PROMPT_FIELDS:
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
        return value
    return None


def fill_prompt(template: str, inner: str) -> str:
    """``template`` with its ``{}`` replaced by ``inner`` (other braces are left alone)."""
    return template.replace(SLOT, inner, 1)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How one record becomes model inputs.

    mode: ``"train"`` (``blip2_image_train`` + target ``prompt + text + end`` with loss masks) or
      ``"generate"`` (``blip_image_eval`` + left-padded prompt).
    prompt: train: prefix before the target, loss-masked (``""``, a fixed prompt, or the stage-3
      template whose ``{}`` takes the sample's instruction); generate: template whose ``{}``
      receives the processed text field (``"Question: {} Answer:"``), or a fixed prompt (``""``
      for captioning).
    instructions: train: the choices for a template's ``{}`` when a sample brings no ``prompt``
      / ``instruction`` of its own; one is drawn per sample from the pipeline's per-element
      generator (deterministic per seed and position, so a resume is exact).
      A sample's own prompt fills ``{}`` of a template, and replaces a plain prompt; generating,
      it replaces the template (whose ``{}`` then receives the question).
    max_image_pixels: larger images are bad samples, refused before decoding.
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
    instructions: tuple[str, ...] = ()
    max_image_pixels: int = processors.MAX_IMAGE_PIXELS

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
                image,
                rng,
                cfg.image_size,
                cfg.min_scale,
                cfg.max_scale,
                cfg.flip_prob,
                cfg.max_image_pixels,
            )
        return processors.blip_image_eval(image, cfg.image_size, cfg.max_image_pixels)

    def _prompt(self, record: dict[str, Any], text_value: str, rng: np.random.Generator) -> str:
        """This sample's prompt (``SampleConfig``: prompt, instructions)."""
        cfg = self.config
        own = own_prompt(record)
        if cfg.mode == "generate":
            template = cfg.prompt if own is None else own
            return fill_prompt(template, text_value) if SLOT in template else template
        if SLOT not in cfg.prompt:
            return cfg.prompt if own is None else own
        if own is None:
            if not cfg.instructions:
                raise ValueError(
                    f"the prompt template {cfg.prompt!r} needs an instruction: the sample has no "
                    f"{' / '.join(PROMPT_FIELDS)} field and config.data.instructions is empty"
                )
            # Drawn after the image's augmentation, whose draws stay as without instructions.
            own = cfg.instructions[int(rng.integers(len(cfg.instructions)))]
        return fill_prompt(cfg.prompt, own)

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
            prompt = self._prompt(element, txt, rng)
            if cfg.mode == "train":
                toks = text.encode_train(self.tokenizer, txt, cfg.max_len, prompt, cfg.end)
            else:
                toks = text.encode_generation(self.tokenizer, prompt, cfg.max_len)
        except Exception as e:  # noqa: BLE001 - any failure on one sample makes it a bad row
            info["_bad"] = f"{type(e).__name__}: {e}"
            return {**self._empty(), **meta, "valid": np.int32(0), **info}
        return {"pixel_values": pixels, **toks, **meta, "valid": np.int32(1), **info}
