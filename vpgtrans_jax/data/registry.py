"""Build a source from a kind name + keyword arguments (configs and scripts use this)."""

from __future__ import annotations

from typing import Any

from vpgtrans_jax.data.arrayrecord import ArrayRecordSource
from vpgtrans_jax.data.sources import CcSbuAlignSource, GqaSource, LavisCaptionSource, VqaSource
from vpgtrans_jax.data.tfds_source import TfdsSource
from vpgtrans_jax.data.webdataset import WebDatasetSource

SOURCES: dict[str, type] = {
    "lavis_caption": LavisCaptionSource,
    "cc_sbu_align": CcSbuAlignSource,
    "vqa": VqaSource,
    "gqa": GqaSource,
    "webdataset": WebDatasetSource,
    "tfds": TfdsSource,  # imports TensorFlow Datasets only when built
    "arrayrecord": ArrayRecordSource,
}
KINDS = tuple(SOURCES)


def make_source(kind: str, **kwargs: Any) -> Any:
    """``make_source("lavis_caption", ann_paths=[...], image_root=...)`` etc.

    Kinds and their arguments: lavis_caption(ann_paths, image_root); cc_sbu_align(root);
    vqa(questions_path, annotations_path, image_root, image_pattern); gqa(questions_path,
    image_root); webdataset(shards, caption_field); tfds(name, split, data_dir, image_key,
    text_key); arrayrecord(paths).
    """
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
    try:
        return SOURCES[kind](**kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments for source kind {kind!r}: {e}") from None
