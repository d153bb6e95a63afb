"""Orbax checkpoints of a training run: train state + data-iterator state + metadata, together.

Only the ``TrainState`` (trainable params, optimiser state, counters) is written; frozen towers are
referenced by their source in the metadata (``model_source``), never copied. Saves are
asynchronous; restoring tries the latest step and falls back to older ones with a warning when a
checkpoint is unreadable (e.g. a preemption in the middle of a write).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for one workdir.

    Layout: ``<workdir>/checkpoints/<step>/{state,data,meta}``.
    """

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

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
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(
        self, abstract_state: Any, with_data: bool = True
    ) -> tuple[Any, dict | None, dict, int] | None:
        """Restores the newest readable checkpoint into ``abstract_state``'s structure/shardings.

        Returns ``(state, data_state, meta, step)`` or None when the workdir has no checkpoint.
        """
        for step in reversed(self.all_steps()):
            items = {
                "state": ocp.args.StandardRestore(abstract_state),
                "meta": ocp.args.JsonRestore(),
            }
            if with_data:
                items["data"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s); trying an older one",
                    step,
                    self.directory,
                    e,
                )
                continue
            data_state = restored["data"] if with_data else None
            return restored["state"], data_state, dict(restored["meta"]), step
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree carrying the target shardings, for sharded restore."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
