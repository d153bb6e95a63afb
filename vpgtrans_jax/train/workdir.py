"""A training workdir: one run at a time, and the config that made it.

``claim(workdir, config)`` runs before anything else touches the workdir:

- **Lock.** Each process of the run holds ``<workdir>/.train.lock.<process index>`` with
  ``fcntl.flock``. A second ``train.py`` on the same workdir is refused at once, naming the
  holder. The kernel drops the lock when its process exits, however it exits (``kill -9``
  included), so a crashed run never leaves it stuck. With several processes (a pod), process
  ``i`` of a second job collides with process ``i`` of the first, so every process of the second
  job is refused, and the processes of one job never collide with each other. This needs a
  filesystem with ``flock`` (local disks; NFS emulates it with POSIX locks).
- **Lock on an object store** (``gs://`` workdir): there is no ``flock``, so the lock is an
  object created only if absent (GCS ``ifGenerationMatch=0``, ``paths.create_exclusive``). The
  holder rewrites it every ``HEARTBEAT_S`` seconds and deletes it when it stops. A VM killed
  outright cannot delete it, so a lock whose heartbeat is older than ``STALE_S`` is taken over
  with a warning (deleted only if unchanged since it was read, so two new runs cannot both take
  it): a preempted pod's rerun starts at most ``STALE_S`` after the old run died.
- **Config.** The first start writes ``<workdir>/config.json``. A rerun whose config differs in a
  field that changes the training is refused with a one-line diff. Fields in ``HARMLESS`` may
  differ (the new values are recorded). ``config.force_new_run=True`` moves the earlier run
  aside into ``<workdir>/earlier_runs/run-<n>/`` (never deleted) and starts at step 0. A rerun
  with the same config resumes, with or without ``force_new_run``, so a preempted forced run
  restarted with the same command resumes too.

Only process 0 writes (``config.json``, moving an earlier run); every process reads the same
file and reaches the same decision.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from vpgtrans_jax import paths
from vpgtrans_jax.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EARLIER_RUNS = "earlier_runs"
# What a run writes into its workdir: moved together when a new run is forced.
RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "tensorboard", "export", CONFIG_FILE)

# Fields that may change between the runs of one workdir: they decide when and how results are
# recorded, or how the same computation is laid out, never what is computed.
HARMLESS = (
    "log_every",  # how often metrics are written
    "checkpoint_every",  # when checkpoints are written; resuming is exact from any of them
    "keep_checkpoints",  # how many are kept (lowering it prunes this run's oldest, as asked)
    "async_checkpoint",  # whether writes overlap the next steps
    "export_final",  # whether <workdir>/export is written at the end
    "export_every_epochs",  # which per-epoch exports are written; the training is the same
    "max_bad_steps",  # when a streak of skipped steps stops the run; no update changes
    "data.max_bad_fraction",  # when bad data stops the run; bad samples are skipped either way
    "force_new_run",  # the switch itself
    "chat_template",  # what the export records for the chat, not what is trained
    "mesh_shape",  # layout only: equal results up to float rounding (a resume on another slice)
    "sharding_rules",
    "model.vision.remat_policy",  # memory/compute trade-off, same values
    "model.qformer.remat_policy",
    "model.llm.remat_policy",
    "model.vision.attention_impl",  # which kernel computes attention; same values up to rounding
    "model.qformer.attention_impl",
    "model.llm.attention_impl",
    "loss_chunk",  # how the same loss is summed (chunks of positions); equal up to rounding
)
# Fields added after workdirs were first recorded: one missing from an earlier record had this
# value (what the code did then), so a rerun with it resumes.
ADDED_FIELDS = {"model.tiny_llm_corpus": "captions"}
_MAX_SHOWN = 6
# Object-store locks: the holder refreshes its lock this often; one not refreshed for STALE_S is
# a dead run's (its VM was killed before it could delete the lock).
HEARTBEAT_S = 60.0
STALE_S = 300.0


class RunLock:
    """This process's hold on a workdir; ``release()`` (or exiting the process) frees it."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


class RemoteRunLock:
    """This process's lock object on an object store (module docstring), kept fresh by a
    heartbeat thread; ``release()`` stops it and deletes the object."""

    def __init__(self, path: str, owner: str):
        self.path, self._owner = path, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                paths.write_text(self.path, _lock_text(self._owner))
            except OSError as e:  # a transient store error: the next beat retries
                log.warning("could not refresh the workdir lock %s: %s", self.path, e)

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            paths.remove(self.path)
        except OSError as e:
            log.warning("could not delete the workdir lock %s: %s", self.path, e)

    def __enter__(self) -> RemoteRunLock:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _lock_text(owner: str) -> str:
    return json.dumps({"owner": owner, "heartbeat": time.time()})


def _remote_lock(path: str, workdir: str) -> RemoteRunLock:
    owner = (
        f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    for _ in range(2):
        if paths.create_exclusive(path, _lock_text(owner).encode()):
            return RemoteRunLock(path, owner)
        gen = paths.generation(path)
        try:
            held = json.loads(paths.read_text(path))
            holder, beat = str(held["owner"]), float(held["heartbeat"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, beat = "unknown process", 0.0  # unreadable: only its age can free it
        age = time.time() - beat
        if age < STALE_S or gen is None:
            raise TrainingError(
                f"--workdir {workdir} is in use by another training run ({holder}, last seen "
                f"{max(age, 0):.0f}s ago); wait for it to finish or use another --workdir"
            )
        if paths.delete_if_unchanged(path, gen):
            log.warning("took over the lock %s of a run not seen for %.0fs (%s)", path, age, holder)
    raise TrainingError(f"--workdir {workdir}: another run took its lock {path} meanwhile")


def ensure_dir(workdir: str) -> str:
    """``workdir`` as an absolute path (or URL), created if needed; a file or an uncreatable path
    is a TrainingError naming it."""
    path = paths.abspath(workdir)
    if paths.is_remote(path):
        if paths.isfile(path):
            raise TrainingError(f"--workdir {path} is a file, not a directory")
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise TrainingError(f"--workdir {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create --workdir {path}: {e.strerror or e}") from None
    return path


def lock(workdir: str, process_index: int = 0) -> RunLock | RemoteRunLock:
    """Takes ``<workdir>/.train.lock.<process_index>`` or raises TrainingError naming the holder."""
    path = paths.join(workdir, f".train.lock.{process_index}")
    if paths.is_remote(path):
        return _remote_lock(path, workdir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise TrainingError(f"--workdir {workdir} is not writable ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise TrainingError(
            f"--workdir {workdir} is in use by another training run ({holder}); wait for it to "
            "finish or use another --workdir"
        ) from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode(), 0)
    return RunLock(path, fd)


def flat_config(c: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """``{"optim.init_lr": 1e-4, ...}``: leaves as JSON values (tuples become lists)."""
    tree = json.loads(c.to_json_best_effort()) if hasattr(c, "to_json_best_effort") else c
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def config_diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded value, current value)`` for every field that differs (sorted)."""
    missing = object()
    keys = sorted(set(recorded) | set(current))
    return [
        (k, recorded.get(k, missing), current.get(k, missing))
        for k in keys
        if recorded.get(k, missing) != current.get(k, missing)
    ]


def _show(value: Any) -> str:
    text = "(absent)" if not isinstance(value, str | int | float | list | dict | None) else None
    text = text or json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(diff: list[tuple[str, Any, Any]]) -> str:
    shown = [f"{k} {_show(a)} -> {_show(b)}" for k, a, b in diff[:_MAX_SHOWN]]
    more = f" and {len(diff) - _MAX_SHOWN} more" if len(diff) > _MAX_SHOWN else ""
    return "; ".join(shown) + more


def _write_config(workdir: str, flat_json: str) -> None:
    paths.write_text(paths.join(workdir, CONFIG_FILE), flat_json)


def _move_aside(workdir: str) -> str:
    """Moves the earlier run's entries into ``earlier_runs/run-<n>``; returns that path."""
    root = paths.join(workdir, EARLIER_RUNS)
    paths.makedirs(root)
    n = 1
    while paths.exists(paths.join(root, f"run-{n}")):
        n += 1
    dest = paths.join(root, f"run-{n}")
    paths.makedirs(dest)
    for name in RUN_ENTRIES:
        src = paths.join(workdir, name)
        if os.path.lexists(src) if not paths.is_remote(src) else paths.exists(src):
            paths.move(src, paths.join(dest, name))
    return dest


def check_config(
    workdir: str,
    c: ml_collections.ConfigDict,
    *,
    is_main: bool = True,
    saved_steps: list[int] = (),
    recorded_in_checkpoints: Callable[[], dict | None] = lambda: None,
) -> None:
    """Compares ``c`` with the config that made ``workdir`` (module docstring); records it.

    ``saved_steps``: the earlier run's checkpoints. Without any, it left nothing to resume, so a
    different config moves its files aside without ``force_new_run``. ``recorded_in_checkpoints``
    gives the config saved with the newest checkpoint (workdirs from before ``config.json``).
    """
    path = paths.join(workdir, CONFIG_FILE)
    current = flat_config(c)
    recorded: dict | None = None
    if paths.exists(path):
        try:
            recorded = json.loads(paths.read_text(path))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{path}: unreadable ({e}); it records the config that made this workdir: "
                "restore it, or use a fresh --workdir"
            ) from None
        recorded = flat_config(recorded)
    elif saved_steps:
        recorded = recorded_in_checkpoints()
        recorded = flat_config(recorded) if recorded is not None else None
    if recorded is not None:
        recorded = {**{k: v for k, v in ADDED_FIELDS.items() if k in current}, **recorded}
        diff = [d for d in config_diff(recorded, current) if d[0] not in HARMLESS]
        if diff and saved_steps and not c.force_new_run:
            raise ConfigError(
                f"--workdir {workdir} holds a run made by another config: {describe(diff)}. "
                "Rerun with that config to resume it, use a fresh --workdir, or pass "
                f"--config.force_new_run=True to move that run into {EARLIER_RUNS}/ and start "
                "over"
            )
        if diff and is_main:
            dest = _move_aside(workdir)
            log.warning("new run: the earlier one (%s) is now in %s", describe(diff), dest)
    if is_main:
        _write_config(workdir, c.to_json_best_effort(indent=1))


__all__ = [
    "HARMLESS",
    "CONFIG_FILE",
    "EARLIER_RUNS",
    "RunLock",
    "RemoteRunLock",
    "ensure_dir",
    "lock",
    "check_config",
    "config_diff",
    "flat_config",
    "describe",
]
