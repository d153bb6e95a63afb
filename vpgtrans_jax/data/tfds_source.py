"""Any TFDS dataset as a random-access source, through ``tfds.data_source`` (ArrayRecord).

TensorFlow (imported by tensorflow_datasets) costs seconds to import, so it is imported here
only, when a ``TfdsSource`` is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _get_path(example: Mapping[str, Any], path: str) -> Any:
    """``"captions/text"`` -> ``example["captions"]["text"]``."""
    value: Any = example
    for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            have = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise KeyError(f"TFDS feature {path!r} not found (at {part!r}; available: {have})")
        value = value[part]
    return value


def _to_texts(value: Any) -> list[str]:
    """TFDS text comes as bytes, str or (0-d / 1-d object) arrays of them."""
    arr = np.asarray(value, dtype=object).reshape(-1)
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in arr]


class TfdsSource:
    """Wraps ``tfds.data_source(name, split=split, data_dir=data_dir)``.

    ``image_key`` names the image feature (returned undecoded, as encoded bytes, so the pipeline
    decodes and augments it like every other source); ``text_key`` the caption feature
    (``"/"``-separated for nested features, e.g. ``"captions/text"``; a sequence gives all
    references, ``text`` is the first). ``extra_keys`` are copied through as-is.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        text_key: str = "caption",
        extra_keys: tuple[str, ...] = (),
    ):
        import tensorflow_datasets as tfds  # lazy: TensorFlow takes ~10 s to import

        self._name, self._split = name, split
        self._image_key, self._text_key, self._extra = image_key, text_key, extra_keys
        self._source = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self._source[index]
        image = _get_path(ex, self._image_key)
        if isinstance(image, np.ndarray) and image.dtype == object:
            image = image.item()
        texts = _to_texts(_get_path(ex, self._text_key))
        rec = {
            "image": image,
            "text": texts[0] if texts else "",
            "captions": texts,
            "image_id": f"{self._name}/{self._split}/{index}",
            "key": f"tfds:{self._name}/{self._split}[{index}]",
        }
        for k in self._extra:
            rec[k] = _get_path(ex, k)
        return rec

    def __repr__(self) -> str:
        return f"TfdsSource({self._name!r}, split={self._split!r}, len={len(self)})"
