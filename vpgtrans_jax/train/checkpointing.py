"""Orbax checkpoints of a training run: train state + data-iterator state + metadata, together.

Only the ``TrainState`` (trainable params, optimiser state, counters) is written; frozen towers are
referenced by their source in the metadata (``model_source``), never copied. Saves are
asynchronous.

Integrity: once a checkpoint is complete, process 0 records the SHA-256 of every file in it
(``<step>/vpgtrans_checksums.json``). Restoring verifies them first, so a flipped byte is caught
before Orbax reads anything. A checkpoint that fails its checksums or cannot be read (e.g. a
preemption in the middle of a write) is skipped with a one-line warning and moved into
``<workdir>/corrupt_checkpoints/`` (kept, not deleted, and no longer in the way of the run
re-saving that step); the next older one is tried. Checkpoints that exist but none of which can
be restored are an error, never a silent restart from step 0. A write that fails (full disk,
quota) is a ``CheckpointError`` naming the step, the directory and the reason.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vpgtrans_jax import paths
from vpgtrans_jax.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKSUMS = "vpgtrans_checksums.json"
CORRUPT_DIR = "corrupt_checkpoints"


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for one workdir.

    Layout: ``<workdir>/checkpoints/<step>/{state,data,meta,vpgtrans_checksums.json}``.
    """

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        self.workdir = paths.abspath(workdir)  # a path or a URL (gs://): Orbax takes both
        self.directory = paths.join(self.workdir, "checkpoints")
        self.every_steps = every_steps
        self.async_save = async_save
        self.is_main = jax.process_index() == 0
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
            # Half-written steps of a crashed run; the workdir lock rules out a live writer.
            cleanup_tmp_directories=True,
        )
        _drop_orbax_teardown_noise()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unrecorded: list[int] = []  # saved steps whose checksums are not written yet

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(
        self, step: int, state: Any, data_state: dict | None, meta: dict, *, force: bool = False
    ) -> bool:
        """Saves (asynchronously) when ``force`` or on the save interval; returns whether it did.

        ``data_state`` is the data iterator's JSON-serialisable ``get_state()``.
        """
        if not force and not self.should_save(step):
            return False
        if step in self.manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        with self._writing(step):  # also finishes (and fails on) the previous async save
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._record_checksums()
        self._unrecorded.append(step)
        if not self.async_save:  # complete already
            self._record_checksums()
        return True

    def wait(self) -> None:
        with self._writing(self._unrecorded[-1] if self._unrecorded else None):
            self.manager.wait_until_finished()
        self._record_checksums()

    @contextmanager
    def _writing(self, step: int | None) -> Iterator[None]:
        try:
            yield
        except (OSError, ValueError, RuntimeError) as e:
            _quiet_orbax_teardown()  # the failed write leaves Orbax's other writes in flight
            what = f"checkpoint step {step}" if step is not None else "a checkpoint"
            raise CheckpointError(
                f"writing {what} to {self.directory} failed: {write_error_reason(e)}; the run "
                "resumes from the last complete checkpoint once this is fixed"
            ) from e

    def _record_checksums(self) -> None:
        """Writes the checksums of every finished save not recorded yet (process 0 only)."""
        steps, self._unrecorded = self._unrecorded, []
        if not self.is_main:
            return
        for step in steps:
            root = paths.join(self.directory, str(step))
            if paths.isdir(root):  # pruned by max_to_keep meanwhile otherwise
                _write_json(paths.join(root, CHECKSUMS), file_digests(root))

    def verify(self, step: int) -> str | None:
        """None when ``step``'s files match their recorded checksums (or none were recorded:
        a checkpoint from before checksums, or one cut off right after Orbax finished); else
        what is wrong. Process 0 decides for all processes."""
        root = paths.join(self.directory, str(step))
        problem = _checksum_problem(root) if self.is_main else None
        if jax.process_count() > 1:
            bad = int(multihost_utils.broadcast_one_to_all(np.int32(problem is not None)))
            problem = (problem or "it failed its checksums on process 0") if bad else None
        return problem

    def restore(
        self, abstract_state: Any, with_data: bool = True
    ) -> tuple[Any, dict | None, dict, int] | None:
        """Restores the newest intact checkpoint into ``abstract_state``'s structure/shardings.

        Returns ``(state, data_state, meta, step)``, or None when the workdir has no checkpoint.
        Raises CheckpointError when there are checkpoints but none can be restored.
        """
        steps = self.all_steps()
        failed: list[tuple[int, str]] = []
        for step in reversed(steps):
            problem = self.verify(step)
            if problem is not None:
                log.warning(
                    "checkpoint at step %d in %s is corrupt (%s); trying an older one",
                    step,
                    self.directory,
                    problem,
                )
                failed.append((step, problem))
                continue
            items = {
                "state": ocp.args.StandardRestore(abstract_state),
                "meta": ocp.args.JsonRestore(),
            }
            if with_data:
                items["data"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                _quiet_orbax_teardown()
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s); trying an older one",
                    step,
                    self.directory,
                    reason,
                )
                failed.append((step, reason))
                continue
            self._set_aside([s for s, _ in failed])
            data_state = restored["data"] if with_data else None
            return restored["state"], data_state, dict(restored["meta"]), step
        if failed:
            details = "; ".join(f"step {s}: {r[:120]}" for s, r in failed)
            raise CheckpointError(
                f"none of the {len(failed)} checkpoint(s) in {self.directory} can be restored "
                f"({details}); move that directory away to start over"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves skipped (corrupt/unreadable) steps out of the run, into ``corrupt_checkpoints``:
        kept for inspection, and the run can save those steps again."""
        if not steps:
            return
        if self.is_main:
            dest_root = paths.join(self.workdir, CORRUPT_DIR)
            paths.makedirs(dest_root)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                dest = paths.join(dest_root, f"{step}-{stamp}")
                paths.move(paths.join(self.directory, str(step)), dest)
                log.warning("moved the skipped checkpoint of step %d to %s", step, dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpointing: skipped steps moved")
        self.manager.reload()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def file_digests(root: str) -> dict[str, str]:
    """``{path relative to root: sha256 hex}`` of every file under ``root`` but the checksums."""
    out = {}
    for rel in paths.walk_files(root):
        if rel == CHECKSUMS:
            continue
        with paths.open_file(paths.join(root, rel), "rb") as f:
            out[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def _checksum_problem(root: str) -> str | None:
    path = paths.join(root, CHECKSUMS)
    if not paths.exists(path):
        return None
    try:
        recorded = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} unreadable: {e}"
    for rel, digest in recorded.items():
        file = paths.join(root, rel)
        if not paths.isfile(file):
            return f"{rel} is missing"
        with paths.open_file(file, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                return f"{rel} changed since it was written"
    return None


def _write_json(path: str, obj: Any) -> None:
    paths.write_text(path, json.dumps(obj, indent=0))


def write_error_reason(e: BaseException) -> str:
    """A short reason for a failed write: the OS error when there is one (tensorstore reports it
    as ``[os_error_code='28']`` inside a long message), else the first line of the message."""
    code = getattr(e, "errno", None)
    if code is None:
        found = re.search(r"os_error_code='?(\d+)", str(e))
        code = int(found.group(1)) if found else None
    if code is not None:
        reason = os.strerror(code)
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason += " (free some space or raise the limit)"
        return reason
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first[:300]


def steps_on_disk(workdir: str) -> list[int]:
    """Finished checkpoint steps in ``<workdir>/checkpoints`` (without opening Orbax)."""
    root = paths.join(workdir, "checkpoints")
    if not paths.isdir(root):
        return []
    return sorted(int(n) for n in paths.listdir(root) if n.isdigit())


def recorded_config(workdir: str) -> dict | None:
    """The config saved in the metadata of the newest readable checkpoint, or None."""
    _drop_orbax_teardown_noise()
    manager = ocp.CheckpointManager(
        paths.join(workdir, "checkpoints"), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                return json.loads(meta["meta"]["config"])
            except Exception:  # noqa: BLE001 - an unreadable one: try the previous
                _quiet_orbax_teardown()
        return None
    finally:
        manager.close()


def _is_orbax_teardown_noise(unraisable: Any) -> bool:
    """A failed Orbax restore (or write) leaves array reads (writes) in flight; when its event
    loop is gone, their callbacks report ``Event loop is closed`` and the abandoned coroutines
    their own failure."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


_previous_hook = None


def _drop_orbax_teardown_noise() -> None:
    """Drops that noise (unraisable errors Python would print and ignore anyway) for the rest of
    the process: it arrives while Orbax is still unwinding, and its callbacks can fire long after
    the failed call returned. Every other unraisable error still prints."""
    global _previous_hook
    if _previous_hook is None:
        _previous_hook = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if not _is_orbax_teardown_noise(unraisable):
                _previous_hook(unraisable)

        sys.unraisablehook = hook


def _quiet_orbax_teardown() -> None:
    """After a failed Orbax call: the abandoned coroutines report now, while the filter is on."""
    _drop_orbax_teardown_noise()
    gc.collect()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree carrying the target shardings, for sharded restore."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
