"""Orbax storage of parameter groups; the write-then-rename output discipline is
``vpgtrans_jax.outputs.atomic_output`` (re-exported here for the checkpoint writers).

A part's parameters are written as one or more *groups*, each an Orbax checkpoint (standard
handler, nested dict of arrays with string keys) under ``params/<part>/<NNN>``. Groups let a
converter write a large tower while holding only a bounded number of tensors.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint.fill import dotted, nested
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.outputs import atomic_output

DEFAULT_GROUP_BYTES = 128 * 2**20

# A tensor larger than a group is stored as row pieces ``<path>@<i>of<n>`` in consecutive groups:
# Orbax keeps about two temporary copies of what it writes, so writing a 400 MiB embedding (or a
# whole scanned layer stack) at once would dominate a conversion's peak memory.
CHUNK_MARK = "@"


def _release_freed_memory() -> None:
    """Returns freed heap pages to the OS (glibc keeps them otherwise, inflating the peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _checkpointer():
    # Groups are host numpy data, written and read by one process on its own (process 0's
    # export of a multi-process run): no barrier with the other processes.
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=alone)


def save_group(path: str, flat: Mapping[str, np.ndarray]) -> None:
    """Writes ``{dotted path: array}`` as one Orbax checkpoint at ``path`` (must not exist)."""
    _checkpointer().save(os.path.abspath(path), args=_standard_save(nested(flat)))


def _standard_save(tree):
    return ocp.args.StandardSave(tree)


def restore_group(path: str) -> dict[str, np.ndarray]:
    """Reads one group back as ``{dotted path: numpy array}`` in the stored dtypes."""
    if not paths.isdir(path):
        raise CheckpointError(f"{path}: parameter group is missing")
    try:
        tree = _checkpointer().restore(paths.abspath(path), args=ocp.args.StandardRestore())
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for a bad dir
        raise CheckpointError(f"{path}: unreadable Orbax parameter group ({e})") from e
    return {k: np.asarray(v) for k, v in dotted(tree).items()}


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
        if value.nbytes > self.budget and value.ndim and value.shape[0] > 1:
            n = min(value.shape[0], -(-value.nbytes // self.budget))
            for i, piece in enumerate(np.array_split(value, n, axis=0)):
                self.add(part, f"{path}{CHUNK_MARK}{i}of{n}", piece)
            return
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


def assemble_pieces(
    groups: Iterator[dict[str, np.ndarray]], where: str
) -> Iterator[dict[str, np.ndarray]]:
    """Re-joins tensors stored as row pieces (see ``CHUNK_MARK``) across a part's groups.

    Yields each group's whole tensors as soon as they are complete.
    """
    pending: dict[str, dict[int, np.ndarray]] = {}
    counts: dict[str, int] = {}

    def take(key: str, value: np.ndarray, out: dict[str, np.ndarray]) -> None:
        base, mark, suffix = key.rpartition(CHUNK_MARK)
        if not mark or "of" not in suffix:
            out[key] = value
            return
        i, n = (int(x) for x in suffix.split("of"))
        pending.setdefault(base, {})[i] = value
        counts[base] = n
        if len(pending[base]) == n:
            pieces = pending.pop(base)
            # A piece may itself have been split (a layer larger than a group): recurse.
            take(base, np.concatenate([pieces[j] for j in range(n)], axis=0), out)

    for flat in groups:
        out: dict[str, np.ndarray] = {}
        for key, value in flat.items():
            take(key, value, out)
        if out:
            yield out
    if pending:
        missing = {k: sorted(set(range(counts[k])) - set(v)) for k, v in pending.items()}
        raise CheckpointError(f"{where}: tensors with missing pieces {missing}")


__all__ = [
    "DEFAULT_GROUP_BYTES",
    "GroupWriter",
    "save_group",
    "restore_group",
    "assemble_pieces",
    "atomic_output",
]
