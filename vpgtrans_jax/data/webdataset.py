"""Random access into WebDataset tar shards (``key.jpg`` + ``key.txt`` and/or ``key.json``).

Shards may be files or URLs (``gs://bucket/sbu/*.tar``): on an object store the index pass
streams each shard once, and each member is then one ranged read.

LAION-COCO and SBU ship this way. The shards are indexed once (tar headers only, no payload
reads); records are then read by seeking to the member's data offset, so any element can be
fetched in O(1) from any worker process.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from typing import Any

from vpgtrans_jax import paths
from vpgtrans_jax.data.sources import own_prompt_fields

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """Globs (``dir/*.tar``, ``gs://bucket/dir/*.tar``) or lists of paths -> sorted existing
    shard paths."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[str] = []
    for p in patterns:
        found = paths.glob(p)
        if not found:
            raise FileNotFoundError(f"no WebDataset shard matches {p!r}")
        out += found
    return out


class WebDatasetSource:
    """Samples grouped by key across shards; ``__getitem__`` returns ``{"image": bytes,
    "text": str, "captions": [str], "key": "shard:key"}``.

    Text is ``key.txt``, or ``key.json[caption_field]`` when there is no ``.txt``. A sample
    without any image member is still listed (its ``image`` is ``None``) so the pipeline counts
    it as bad instead of silently changing the dataset length.
    """

    def __init__(self, shards: str | Sequence[str], caption_field: str = "caption"):
        self._paths = expand_shards(shards)
        self._caption_field = caption_field
        # (shard index, key, {ext: (offset, size)})
        self._index: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for s, path in enumerate(self._paths):
            members: dict[str, dict[str, tuple[int, int]]] = {}
            with paths.open_file(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    base = os.path.basename(m.name)
                    key, _, ext = base.partition(".")
                    prefix = os.path.dirname(m.name)
                    full_key = f"{prefix}/{key}" if prefix else key
                    members.setdefault(full_key, {})[ext.lower()] = (m.offset_data, m.size)
            self._index += [(s, k, v) for k, v in members.items()]

    def __len__(self) -> int:
        return len(self._index)

    def _read(self, path: str, offset: int, size: int) -> bytes:
        return paths.read_range(path, offset, size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, key, exts = self._index[index]
        path = self._paths[s]
        rec: dict[str, Any] = {"key": f"{paths.basename(path)}:{key}", "image": None}
        for ext in IMAGE_EXTS:
            if ext in exts:
                rec["image"] = self._read(path, *exts[ext])
                break
        text = ""
        meta: dict[str, Any] = {}
        if "json" in exts:
            try:
                meta = json.loads(self._read(path, *exts["json"]))
            except ValueError:
                meta = {}  # a broken .json only matters if it was the caption's source
            meta = meta if isinstance(meta, dict) else {}
        if "txt" in exts:
            text = self._read(path, *exts["txt"]).decode("utf-8", errors="replace")
        elif isinstance(meta.get(self._caption_field), str):
            text = meta[self._caption_field]
        rec["text"] = text
        rec["captions"] = [text]
        rec["image_id"] = meta.get("image_id", key)
        rec.update(own_prompt_fields(meta))
        return rec

    def __repr__(self) -> str:
        return f"WebDatasetSource(shards={len(self._paths)}, len={len(self)})"
