"""Reading Hugging Face checkpoint directories tensor by tensor.

Safetensors files are memory-mapped and parsed here directly (header JSON + raw bytes), so that
bfloat16 works through ``ml_dtypes`` without torch, and a tensor is only read when asked for:
loading a sharded 7B checkpoint never holds more than the tensors being converted.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

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


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, truncated, corrupt or of the wrong kind."""


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
                if n > size - 8:
                    raise CheckpointError(
                        f"{path}: header length {n} exceeds the file size {size} (truncated or "
                        "not a safetensors file)"
                    )
                header = json.loads(f.read(n))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        data_len = size - self._start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            try:
                begin, end = (int(x) for x in info["data_offsets"])
                dtype = np.dtype(_ST_DTYPES[info["dtype"]])
                shape = tuple(int(s) for s in info["shape"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad header entry for {key!r} ({e})") from e
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


class ShardedCheckpoint(Mapping[str, np.ndarray]):
    """Lazy mapping over every tensor of a HF directory (single file or sharded with an index)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._files: dict[str, SafetensorsFile] = {}
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
            self._where = dict(weight_map)
        elif os.path.exists(single):
            self._where = {k: "model.safetensors" for k in self._open("model.safetensors")}
        else:
            found = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
            raise CheckpointError(
                f"{directory}: no model.safetensors or model.safetensors.index.json "
                f"(found {found[:10]})"
            )

    def _open(self, filename: str) -> SafetensorsFile:
        if filename not in self._files:
            path = os.path.join(self.directory, filename)
            if not os.path.exists(path):
                raise CheckpointError(f"{path}: shard named in the index is missing")
            self._files[filename] = SafetensorsFile(path)
        return self._files[filename]

    def __getitem__(self, name: str) -> np.ndarray:
        f = self._open(self._where[name])
        if name not in f:
            raise CheckpointError(f"{f.path}: index says it holds {name!r} but it does not")
        return f[name]

    def __contains__(self, key: object) -> bool:  # without reading the tensor
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
