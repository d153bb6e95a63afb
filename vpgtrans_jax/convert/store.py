"""Orbax storage of parameter groups, and the temporary-directory-then-rename output discipline.

A part's parameters are written as one or more *groups*, each an Orbax checkpoint (standard
handler, nested dict of arrays with string keys) under ``params/<part>/<NNN>``. Groups let a
converter write a large tower while holding only a bounded number of tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np

from vpgtrans_jax.checkpoint_io import CheckpointError

DEFAULT_GROUP_BYTES = 128 * 2**20


def _release_freed_memory() -> None:
    """Returns freed heap pages to the OS (glibc keeps them otherwise, inflating the peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def nest(flat: Mapping[str, np.ndarray]) -> dict:
    """``{"a.0.b": x}`` → ``{"a": {"0": {"b": x}}}`` (string keys throughout)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_group(path: str, flat: Mapping[str, np.ndarray]) -> None:
    """Writes ``{dotted path: array}`` as one Orbax checkpoint at ``path`` (must not exist)."""
    _checkpointer().save(os.path.abspath(path), args=_standard_save(nest(flat)))


def _standard_save(tree):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(tree)


def restore_group(path: str) -> dict[str, np.ndarray]:
    """Reads one group back as ``{dotted path: numpy array}`` in the stored dtypes."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: parameter group is missing")
    try:
        tree = _checkpointer().restore(os.path.abspath(path), args=ocp.args.StandardRestore())
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for a bad dir
        raise CheckpointError(f"{path}: unreadable Orbax parameter group ({e})") from e
    return {k: np.asarray(v) for k, v in flatten(tree).items()}


class GroupWriter:
    """Collects converted tensors per part and writes a group whenever ``budget`` bytes are pending.

    ``groups()`` gives, after ``close()``, ``{part: [group names]}``.
    """

    def __init__(self, root: str, budget: int = DEFAULT_GROUP_BYTES):
        self.root, self.budget = root, budget
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._bytes = 0
        self._groups: dict[str, list[str]] = {}

    def add(self, part: str, path: str, value: np.ndarray) -> None:
        if self._bytes and self._bytes + value.nbytes > self.budget:
            self.flush()  # a large tensor goes into a group of its own
        self._pending.setdefault(part, {})[path] = value
        self._bytes += value.nbytes
        if self._bytes >= self.budget:
            self.flush()

    def flush(self) -> None:
        for part, flat in self._pending.items():
            names = self._groups.setdefault(part, [])
            name = f"{len(names):03d}"
            save_group(os.path.join(self.root, "params", part, name), flat)
            names.append(name)
        self._pending, self._bytes = {}, 0
        _release_freed_memory()

    def close(self) -> dict[str, list[str]]:
        self.flush()
        return self._groups


@contextlib.contextmanager
def atomic_output(out: str, *, overwrite: bool = False, is_dir: bool = True) -> Iterator[str]:
    """Yields a temporary path beside ``out``; on success renames it to ``out``, else deletes it.

    An existing ``out`` is an error unless ``overwrite``; then it is replaced only after the new
    output is complete.
    """
    out = os.path.abspath(out.rstrip("/"))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(out)
    if is_dir:
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", dir=parent)
        os.close(fd)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rename(out, os.path.join(old, base))
        os.rename(tmp, out)
        _remove(old)
    else:
        os.rename(tmp, out)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


__all__ = [
    "DEFAULT_GROUP_BYTES",
    "GroupWriter",
    "save_group",
    "restore_group",
    "atomic_output",
    "nest",
    "flatten",
]
