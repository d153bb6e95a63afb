"""Build a source from a kind name + keyword arguments (configs and scripts use this)."""

from __future__ import annotations

from typing import Any

KINDS = ("lavis_caption", "cc_sbu_align", "vqa", "gqa", "webdataset", "tfds", "arrayrecord")


def make_source(kind: str, **kwargs: Any) -> Any:
    """``make_source("lavis_caption", ann_paths=[...], image_root=...)`` etc.

    Kinds and their arguments: lavis_caption(ann_paths, image_root); cc_sbu_align(root);
    vqa(questions_path, annotations_path, image_root, image_pattern); gqa(questions_path,
    image_root); webdataset(shards, caption_field); tfds(name, split, data_dir, image_key,
    text_key); arrayrecord(paths).
    """
    if kind == "lavis_caption":
        from vpgtrans_jax.data.sources import LavisCaptionSource as cls
    elif kind == "cc_sbu_align":
        from vpgtrans_jax.data.sources import CcSbuAlignSource as cls
    elif kind == "vqa":
        from vpgtrans_jax.data.sources import VqaSource as cls
    elif kind == "gqa":
        from vpgtrans_jax.data.sources import GqaSource as cls
    elif kind == "webdataset":
        from vpgtrans_jax.data.webdataset import WebDatasetSource as cls
    elif kind == "tfds":
        from vpgtrans_jax.data.tfds_source import TfdsSource as cls
    elif kind == "arrayrecord":
        from vpgtrans_jax.data.arrayrecord import ArrayRecordSource as cls
    else:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments for source kind {kind!r}: {e}") from None
