"""The one safetensors reader and writer of the project (no torch, bfloat16 via ``ml_dtypes``).

A file is parsed here directly: the header JSON is validated up front, and a tensor is read with
a plain positioned file read only when asked for (never memory-mapped), so loading a sharded 7B
checkpoint holds no more than the tensors being converted. The writer produces files and sharded
directories that ``transformers`` / ``safetensors`` open, as ``save_pretrained`` names them.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from vpgtrans_jax.errors import CheckpointError

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit


def _count(x: Any) -> int:
    """A non-negative JSON integer (a size or an offset)."""
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"expected a non-negative integer, got {x!r}")
    return x


class SafetensorsFile(Mapping[str, np.ndarray]):
    """Lazy read-only mapping ``name -> np.ndarray`` over one ``.safetensors`` file.

    The header is validated up front (every tensor's byte range must lie inside the file and
    agree with its shape and dtype), so truncated or corrupt files fail before anything is
    converted. A tensor is read only when asked for, into a fresh array: nothing else of the file
    stays resident.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise CheckpointError(f"{path}: file too short to be safetensors (truncated?)")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8 or n > MAX_HEADER_BYTES:
                    raise CheckpointError(
                        f"{path}: header length {n} exceeds the file size {size} or the "
                        f"{MAX_HEADER_BYTES}-byte limit (truncated or not a safetensors file)"
                    )
                header = json.loads(f.read(n))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        except RecursionError as e:
            raise CheckpointError(
                f"{path}: not a safetensors file (its header JSON is nested too deeply)"
            ) from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise CheckpointError(f"{path}: safetensors __metadata__ is not a JSON object")
        self._start = 8 + n
        data_len = size - self._start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            try:
                begin, end = (_count(x) for x in info["data_offsets"])
                dtype = np.dtype(_ST_DTYPES[info["dtype"]])
                shape = tuple(_count(s) for s in info["shape"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad header entry for {key!r} ({e!r})") from e
            if end > data_len or end - begin != dtype.itemsize * int(np.prod(shape)):
                raise CheckpointError(
                    f"{path}: tensor {key!r} needs bytes {begin}:{end} but the data section has "
                    f"{data_len} bytes or the size disagrees with its shape (truncated or corrupt)"
                )
            self.entries[key] = (dtype, shape, begin, end)

    def read(self, key: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[key]
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            got = f.readinto(view)
        if end - begin and got != end - begin:
            raise CheckpointError(f"{self.path}: short read for {key!r} (truncated file?)")
        return out

    __getitem__ = read

    def __contains__(self, key: object) -> bool:  # without reading the tensor
        return key in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


# ---- writing ----

_ST_NAMES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
}  # fmt: skip


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """One safetensors file (header JSON + raw little-endian bytes, in insertion order)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, a in tensors.items():
        if a.dtype not in _ST_NAMES:
            raise CheckpointError(f"{k}: dtype {a.dtype} cannot be written to safetensors")
        header[k] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}  # fmt: skip
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).data)


class ShardedSafetensorsWriter:
    """Buffers tensors and writes a shard when ``max_bytes`` would be exceeded.

    ``close()`` names the shards ``model-0000i-of-0000N.safetensors`` with an index, or
    ``model.safetensors`` when one shard is enough (as ``save_pretrained`` does).
    """

    def __init__(self, directory: str, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self._buf: dict[str, np.ndarray] = {}
        self._bytes = 0
        self._shards: list[list[str]] = []
        self._seen: set[str] = set()
        self._total = 0

    def add(self, key: str, a: np.ndarray) -> None:
        if key in self._seen:
            raise CheckpointError(f"tensor {key!r} written twice")
        self._seen.add(key)
        if self._buf and self._bytes + a.nbytes > self.max_bytes:
            self._flush()
        self._buf[key] = a
        self._bytes += a.nbytes
        self._total += a.nbytes

    def _flush(self) -> None:
        write_safetensors(self._tmp_name(len(self._shards)), self._buf)
        self._shards.append(list(self._buf))
        self._buf, self._bytes = {}, 0

    def _tmp_name(self, i: int) -> str:
        return os.path.join(self.directory, f"shard-{i:05d}.tmp")

    def close(self) -> list[str]:
        if self._buf or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.rename(self._tmp_name(0), os.path.join(self.directory, "model.safetensors"))
            return ["model.safetensors"]
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, (name, keys) in enumerate(zip(names, self._shards)):
            os.rename(self._tmp_name(i), os.path.join(self.directory, name))
            weight_map.update({k: name for k in keys})
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self._total}, "weight_map": weight_map}, f,
                      indent=2)  # fmt: skip
        return names


__all__ = ["MAX_HEADER_BYTES", "SafetensorsFile", "write_safetensors", "ShardedSafetensorsWriter"]
