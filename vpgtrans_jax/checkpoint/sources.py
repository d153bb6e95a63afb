"""Tensor sources read one shard at a time: safetensors and ``.bin`` directories, ``.pth`` files.

A source lists its tensors grouped by shard (``shards()``), reads one tensor as a numpy array
(``read``) and forgets a shard once it is converted (``release``), so a conversion holds at most one
source shard plus the tensors it is writing. Safetensors are read with plain file reads (never
memory-mapped), so untouched bytes never count against the process. Pickles are only ever opened
with ``torch.load(..., weights_only=True)``; torch is imported only for them.
"""

from __future__ import annotations

import abc
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint.safetensors import SafetensorsFile
from vpgtrans_jax.errors import CheckpointError


class TensorSource(abc.ABC):
    """Base class: ``{key: tensor}`` read shard by shard.

    Attributes:
      name: what error messages and the conversion summary call this source (a path).
    """

    name: str = "source"
    random_access: bool = False  # reading any tensor at any time costs only that tensor

    @abc.abstractmethod
    def shards(self) -> list[tuple[str, list[str]]]:
        """``(shard file, keys in it)`` in reading order."""

    @abc.abstractmethod
    def read(self, key: str) -> np.ndarray:
        """The tensor stored under ``key``, as a numpy array in its stored dtype."""

    def release(self, shard: str) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Frees whatever holding ``shard`` cost (a no-op for file reads)."""

    def keys(self) -> list[str]:
        return [k for _, ks in self.shards() for k in ks]

    def shape(self, key: str) -> tuple[int, ...] | None:
        """``key``'s shape when the index tells it without reading the tensor, else None."""
        return None

    def __contains__(self, key: object) -> bool:  # without reading the tensor
        return key in self.shard_of()

    def shard_of(self) -> dict[str, str]:
        return {k: s for s, ks in self.shards() for k in ks}


class SafetensorsDir(TensorSource):
    """A HF directory with ``model.safetensors`` or ``model.safetensors.index.json`` + shards."""

    def __init__(self, directory: str):
        self.name = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # shard -> its header's shapes
        if os.path.exists(index):
            self._keys = _keys_by_shard(_read_index(index))
            self._order = sorted(self._keys)
        else:
            self._order = ["model.safetensors"]
            self._shapes["model.safetensors"] = _shapes_of(self._open("model.safetensors"))
            self._keys = {"model.safetensors": list(self._shapes["model.safetensors"])}
        self._where = {k: s for s, ks in self._keys.items() for k in ks}
        self.random_access = True
        self._files: dict[str, SafetensorsFile] = {}

    def _open(self, shard: str) -> SafetensorsFile:
        path = os.path.join(self.name, shard)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: shard named in the index is missing")
        return SafetensorsFile(path)

    def shards(self) -> list[tuple[str, list[str]]]:
        return [(s, self._keys[s]) for s in self._order]

    def read(self, key: str) -> np.ndarray:
        shard = self.shard_of_key(key)
        if shard not in self._files:
            self._files[shard] = self._open(shard)
        f = self._files[shard]
        if key not in f.entries:
            raise CheckpointError(f"{f.path}: the index says it holds {key!r} but it does not")
        return f.read(key)

    def shard_of_key(self, key: str) -> str:
        return self._where[key]

    def shape(self, key: str) -> tuple[int, ...] | None:
        shard = self._where.get(key)
        if shard is None:
            return None
        if shard not in self._shapes:  # the header only: no tensor is read
            self._shapes[shard] = _shapes_of(self._open(shard))
        return self._shapes[shard].get(key)

    def release(self, shard: str) -> None:
        self._files.pop(shard, None)


class TorchBinDir(TensorSource):
    """A HF directory with ``pytorch_model.bin`` or ``pytorch_model.bin.index.json`` + shards."""

    def __init__(self, directory: str):
        self.name = directory
        index = os.path.join(directory, "pytorch_model.bin.index.json")
        if os.path.exists(index):
            self._declared = _keys_by_shard(_read_index(index))
            self._order = sorted(self._declared)
        else:
            self._order = ["pytorch_model.bin"]
            self._declared = None
        self._loaded: dict[str, Mapping[str, Any]] = {}
        self._where: dict[str, str] | None = None

    def _load(self, shard: str) -> Mapping[str, Any]:
        if shard not in self._loaded:
            self._loaded = {shard: load_torch_pickle(os.path.join(self.name, shard))}
        return self._loaded[shard]

    def shards(self) -> list[tuple[str, list[str]]]:
        if self._declared is None:
            return [(s, list(self._load(s))) for s in self._order]
        return [(s, self._declared[s]) for s in self._order]

    def read(self, key: str) -> np.ndarray:
        if self._where is None:  # built once: a scan per read made reading quadratic
            self._where = {k: s for s, ks in self.shards() for k in ks}
        shard = self._where[key]
        sd = self._load(shard)
        if key not in sd:
            raise CheckpointError(
                f"{self.name}/{shard}: the index says it holds {key!r} but it does not"
            )
        return torch_to_numpy(sd[key], f"{self.name}/{shard}:{key}")

    def release(self, shard: str) -> None:
        self._loaded.pop(shard, None)


class MappingSource(TensorSource):
    """An in-memory ``{key: tensor}`` (torch or numpy) as one shard, e.g. a loaded ``.pth``."""

    def __init__(self, mapping: Mapping[str, Any], name: str):
        self._m, self.name = mapping, name
        self.random_access = True

    def shards(self) -> list[tuple[str, list[str]]]:
        return [(self.name, list(self._m))]

    def read(self, key: str) -> np.ndarray:
        return torch_to_numpy(self._m[key], f"{self.name}:{key}")

    def shape(self, key: str) -> tuple[int, ...] | None:
        shape = getattr(self._m.get(key), "shape", None)
        return None if shape is None else tuple(int(d) for d in shape)


class RenamedSource(TensorSource):
    """``base`` seen through ``rename(key) -> new key or None`` (None hides the key)."""

    def __init__(self, base: TensorSource, rename: Callable[[str], str | None]):
        self.base, self.name = base, base.name
        self.random_access = base.random_access
        self._to_base: dict[str, str] = {}
        self._shards = []
        for shard, keys in base.shards():
            new = []
            for k in keys:
                r = rename(k)
                if r is not None:
                    self._to_base[r] = k
                    new.append(r)
            self._shards.append((shard, new))

    def shards(self) -> list[tuple[str, list[str]]]:
        return self._shards

    def read(self, key: str) -> np.ndarray:
        return self.base.read(self._to_base[key])

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.base.shape(self._to_base[key]) if key in self._to_base else None

    def release(self, shard: str) -> None:
        self.base.release(shard)


class ChainSource(TensorSource):
    """Several sources one after another (keys must not repeat)."""

    def __init__(self, sources: Iterable[TensorSource]):
        self.sources = list(sources)
        self.name = " + ".join(s.name for s in self.sources)
        self.random_access = all(s.random_access for s in self.sources)
        self._owner: dict[str, TensorSource] = {}
        for s in self.sources:
            for k in s.keys():
                if k in self._owner:
                    raise CheckpointError(
                        f"tensor {k!r} is in both {self._owner[k].name} and {s.name}"
                    )
                self._owner[k] = s

    def shards(self) -> list[tuple[str, list[str]]]:
        return [(f"{i}:{sh}", ks) for i, s in enumerate(self.sources) for sh, ks in s.shards()]

    def read(self, key: str) -> np.ndarray:
        return self._owner[key].read(key)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self._owner[key].shape(key) if key in self._owner else None

    def release(self, shard: str) -> None:
        i, sh = shard.split(":", 1)
        self.sources[int(i)].release(sh)


def _plain_name(name: Any) -> bool:
    """A file name inside the directory: no separators, not ``.``/``..``."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and (os.sep not in name)
    )


def _keys_by_shard(where: Mapping[str, str]) -> dict[str, list[str]]:
    """An index's ``{tensor: shard}`` → ``{shard: [tensors]}`` (index order kept)."""
    out: dict[str, list[str]] = {}
    for key, shard in where.items():
        out.setdefault(shard, []).append(key)
    return out


def _shapes_of(f: SafetensorsFile) -> dict[str, tuple[int, ...]]:
    return {k: f.shape(k) for k in f.entries}


def open_hf_weights(directory: str) -> TensorSource:
    """The weights of a HF model directory (safetensors preferred over ``.bin``); a ``gs://``
    directory is read from a local copy (``paths.local_copy``)."""
    directory = paths.local_copy(directory)
    for name, cls in (
        ("model.safetensors.index.json", SafetensorsDir),
        ("model.safetensors", SafetensorsDir),
        ("pytorch_model.bin.index.json", TorchBinDir),
        ("pytorch_model.bin", TorchBinDir),
    ):
        if os.path.exists(os.path.join(directory, name)):
            return cls(directory)
    found = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    raise CheckpointError(
        f"{directory}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
        f"pytorch_model.bin.index.json (found {found[:12]})"
    )


def read_json(path: str) -> Any:
    """A JSON file's contents; a missing or malformed file is one CheckpointError line."""
    try:
        with paths.open_file(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a config") from e


def _read_index(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            where = json.load(f)["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid shard index ({e})") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: not a valid shard index (JSON nested too deeply)") from e
    if not isinstance(where, dict) or not all(_plain_name(v) for v in where.values()):
        raise CheckpointError(
            f"{path}: weight_map must map tensor names to shard file names in its directory"
        )
    return where


def load_torch_pickle(path: str) -> Mapping[str, Any]:
    """``torch.load(path, weights_only=True)`` (memory-mapped when possible), with clear errors.

    A pickle that needs code execution (classes, functions) is refused, never executed.
    """
    try:
        import torch  # lazy: torch is optional; only pickled checkpoints need it
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a torch pickle needs torch installed") from e

    if paths.is_remote(path):  # torch reads (memory-maps) files: a local copy of a URL
        path = paths.local_copy(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(16)
        # torch.save writes a zip archive, or (legacy format) a pickle, whose first byte is the
        # PROTO opcode; anything else (a text file, HTML, JSON) is not a checkpoint at all. A
        # cut zip archive fails is_zipfile but is a damaged checkpoint, reported below as such.
        if head[:1] != pickle.PROTO and not head.startswith(b"PK\x03\x04"):
            raise CheckpointError(
                f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; it starts "
                f"with {head!r})"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle: the file needs code execution beyond plain tensors and "
            f"containers, and pickles are only loaded with torch.load(weights_only=True) ({first})"
        ) from e
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in torch with any type
        raise CheckpointError(
            f"{path}: cannot read the torch checkpoint: truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def torch_to_numpy(t: Any, where: str) -> np.ndarray:
    """A torch tensor (any float dtype incl. bfloat16) or array-like → numpy, dtype preserved."""
    if hasattr(t, "detach"):
        import torch  # lazy: only reached with a torch tensor in hand

        t = t.detach().cpu()
        # Copies, so no array outlives the (possibly memory-mapped) shard it came from.
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        return t.numpy().copy()
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "__array__"):  # jax arrays and other array-likes
        return np.asarray(t)
    raise CheckpointError(f"{where}: expected a tensor, got {type(t).__name__}")


__all__ = [
    "TensorSource",
    "SafetensorsDir",
    "TorchBinDir",
    "MappingSource",
    "RenamedSource",
    "ChainSource",
    "open_hf_weights",
    "load_torch_pickle",
    "torch_to_numpy",
    "read_json",
]
