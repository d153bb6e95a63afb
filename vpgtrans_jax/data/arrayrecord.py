"""ArrayRecord shards of (encoded image bytes + text fields), for fast random access on pods.

Record layout (one per sample): ``b"VPG1"``, a little-endian uint32 ``n``, ``n`` bytes of UTF-8
JSON with every field except the image, then the encoded image bytes (JPEG/PNG as stored on
disk; no re-encoding). Reading uses grain's ``ArrayRecordDataSource`` and never imports
TensorFlow. Its C++ reader needs files, so shards named by URL (``gs://``) are read from a local
copy (``paths.local_copy``, fetched once per host), and shards written to a URL are written
locally, then uploaded.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from vpgtrans_jax import paths as path_lib
from vpgtrans_jax.data.processors import MAX_IMAGE_PIXELS, load_image
from vpgtrans_jax.data.webdataset import expand_shards
from vpgtrans_jax.errors import BadDataError
from vpgtrans_jax.outputs import Inputs, check_separate

MAGIC = b"VPG1"
# The names ``write_shards`` gives after its prefix: final shards and their temporaries.
SHARD_SUFFIX = r"-\d{5}-of-\d{5}\.array_record|-\d{5}\.tmp"
_HEADER = struct.Struct("<I")


def encode_record(record: dict[str, Any]) -> bytes:
    """``{"image": bytes, ...json-serialisable fields}`` -> one ArrayRecord payload."""
    image = record.get("image")
    if not isinstance(image, bytes | bytearray):
        raise ValueError(f"record {record.get('key')!r}: 'image' must be encoded bytes")
    meta = {k: v for k, v in record.items() if k not in ("image", "image_path")}
    blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    return MAGIC + _HEADER.pack(len(blob)) + blob + bytes(image)


def decode_record(payload: bytes) -> dict[str, Any]:
    """Inverse of ``encode_record``."""
    if payload[:4] != MAGIC:
        raise ValueError(f"not a vpgtrans ArrayRecord payload (starts with {payload[:4]!r})")
    (n,) = _HEADER.unpack_from(payload, 4)
    meta = json.loads(payload[8 : 8 + n].decode("utf-8"))
    meta["image"] = payload[8 + n :]
    return meta


def write_shards(
    records: Iterable[dict[str, Any]], out_prefix: str, records_per_shard: int = 10_000
) -> list[str]:
    """Writes ``{out_prefix}-{k:05d}-of-{n:05d}.array_record`` shards; returns their paths.

    Records are written in order; the shard count is only known at the end, so shards are
    written under a temporary name and renamed.
    """
    # lazy: the C++ writer is only needed when converting data
    from array_record.python.array_record_module import ArrayRecordWriter

    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if path_lib.is_remote(out_prefix):  # the C++ writer needs files: write locally, then upload
        with tempfile.TemporaryDirectory() as local:
            written = write_shards(records, os.path.join(local, "s"), records_per_shard)
            out = [out_prefix + os.path.basename(p)[1:] for p in written]  # "s-00000-of-..."
            for src, dst in zip(written, out):
                path_lib.copy_file(src, dst)  # one object each: whole or absent
            return out
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    tmp_paths: list[str] = []
    writer = None
    count = 0
    for rec in records:
        if count % records_per_shard == 0:
            if writer is not None:
                writer.close()
            tmp_paths.append(f"{out_prefix}-{len(tmp_paths):05d}.tmp")
            writer = ArrayRecordWriter(tmp_paths[-1], "group_size:1")
        writer.write(encode_record(rec))
        count += 1
    if writer is not None:
        writer.close()
    n = len(tmp_paths)
    final = [f"{out_prefix}-{k:05d}-of-{n:05d}.array_record" for k in range(n)]
    for tmp, path in zip(tmp_paths, final):
        os.replace(tmp, path)
    return final


class ArrayRecordSource:
    """Random access over shards written by ``write_shards`` (paths or glob patterns)."""

    def __init__(self, paths: str | Sequence[str]):
        from grain.sources import ArrayRecordDataSource  # lazy: pulls in array_record's C++ reader

        self._paths = expand_shards(paths)
        self._source = ArrayRecordDataSource([path_lib.local_copy(p) for p in self._paths])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self._source[index])

    def __repr__(self) -> str:
        return f"ArrayRecordSource(shards={len(self._paths)}, len={len(self)})"


log = logging.getLogger(__name__)


def convert_source(
    source: Sequence[dict[str, Any]],
    out_prefix: str,
    *,
    records_per_shard: int = 10_000,
    verify: bool = False,
    max_bad_fraction: float = 0.05,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    inputs: Inputs | None = None,
) -> list[str]:
    """Copies every record of a data source into ArrayRecord shards (``scripts/prepare_data.py``).

    Images are copied byte for byte. A record whose image is missing or (with ``verify``) does
    not decode, or is larger than ``max_image_pixels`` (refused from its header, never decoded),
    is skipped and counted; more than ``max_bad_fraction`` of them is a ``BadDataError`` (after
    writing what was good). Returns the shard paths.

    ``inputs`` (flag → path, paths or glob) are the files the source reads: a shard the output
    would write (``<out_prefix>-NNNNN-of-NNNNN.array_record``) may not be one of them.
    """
    check_separate(out_prefix, inputs or {}, out_label="--out_prefix", family=SHARD_SUFFIX)
    stats = {"bad": 0, "written": 0}

    def records():
        for i in range(len(source)):
            rec = source[i]
            try:
                if rec.get("image") is None:
                    rec["image"] = path_lib.read_bytes(rec["image_path"])
                if verify:
                    load_image(rec["image"], max_image_pixels)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the conversion
                stats["bad"] += 1
                if stats["bad"] <= 20:
                    log.warning("skipping %s: %s: %s", rec.get("key"), type(e).__name__, e)
                continue
            rec.pop("image_path", None)
            stats["written"] += 1
            yield rec

    paths = write_shards(records(), out_prefix, records_per_shard)
    total = stats["bad"] + stats["written"]
    print(f"wrote {stats['written']} records in {len(paths)} shard(s) ({stats['bad']} bad skipped)")
    for path in paths:
        print(path)
    if total and stats["bad"] > max_bad_fraction * total:
        raise BadDataError(
            f"{stats['bad']} of {total} samples were bad (> --max_bad_fraction={max_bad_fraction})"
        )
    return paths
