"""Metrics sinks: ``metrics.jsonl`` and TensorBoard event files, without importing TensorFlow.

The TensorBoard writer emits the on-disk format directly: a TFRecord stream (length, masked
CRC32C, payload, masked CRC32C) of ``Event`` protocol buffers holding scalar summaries. Only three
message fields are needed, so they are encoded by hand instead of pulling in tensorboard (which
imports TensorFlow, ~10 s, whenever it is installed).

Both files may live on an object store (a ``gs://`` workdir): there they are rewritten whole at
every write (``paths.AppendFile``), which TensorBoard and ``metrics.jsonl`` readers see as a
file that grows.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Mapping

import numpy as np

from vpgtrans_jax import paths

# ---- CRC32C (Castagnoli), as TFRecord framing requires -------------------------------------------

_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format: Event{wall_time, step, file_version | summary{value{tag, value}}}


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, summary: bytes = b"", file_version: str = "") -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)  # double wall_time = 1
    msg += _varint(2 << 3 | 0) + _varint(step)  # int64 step = 2
    if file_version:
        msg += _field_bytes(3, file_version.encode())  # string file_version = 3
    if summary:
        msg += _field_bytes(5, summary)  # Summary summary = 5
    return msg


def _scalar_value(tag: str, value: float) -> bytes:
    # Summary.Value: string tag = 1; float simple_value = 2.
    inner = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
    return _field_bytes(1, inner)  # Summary: repeated Value value = 1


class TensorBoardWriter:
    """Appends scalar summaries to ``<logdir>/events.out.tfevents.<time>.<host>``."""

    def __init__(self, logdir: str):
        paths.makedirs(logdir)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = paths.join(logdir, name)
        self._f = paths.AppendFile(self.path, binary=True)
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._f.write(header + struct.pack("<I", _masked_crc(header)))
        self._f.write(record + struct.pack("<I", _masked_crc(record)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        summary = b"".join(_scalar_value(k, float(v)) for k, v in values.items())
        self._write(_event(time.time(), int(step), summary=summary))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_scalars(path: str) -> list[tuple[int, dict[str, float]]]:
    """Parses an event file written by ``TensorBoardWriter`` (for tests and quick inspection)."""
    out = []
    data = paths.read_bytes(path)
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        header = data[pos : pos + 8]
        if struct.unpack_from("<I", data, pos + 8)[0] != _masked_crc(header):
            raise ValueError(f"{path}: corrupt record header at byte {pos}")
        rec = data[pos + 12 : pos + 12 + n]
        if struct.unpack_from("<I", data, pos + 12 + n)[0] != _masked_crc(rec):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += 16 + n
        step, values = _parse_event(rec)
        if values:
            out.append((step, values))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _read_varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            val, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, val


def _parse_event(rec: bytes) -> tuple[int, dict[str, float]]:
    step, values = 0, {}
    for num, val in _fields(rec):
        if num == 2:
            step = val
        elif num == 5:
            for _, v in _fields(val):
                fields = dict(_fields(v))
                values[fields[1].decode()] = struct.unpack("<f", fields[2])[0]
    return step, values


class MetricsLogger:
    """Writes each metrics dict to ``metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        paths.makedirs(workdir)
        self._jsonl = paths.AppendFile(paths.join(workdir, "metrics.jsonl"))
        self._tb = TensorBoardWriter(paths.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: _to_float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        self._tb.scalars(step, {k: v for k, v in clean.items() if np.isfinite(v)})

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _to_float(v) -> float:
    return float(np.asarray(v))
