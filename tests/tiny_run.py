"""Tiny training runs shared by the end-to-end tests: config files, the tiny stages' size,
dotted overrides, and a run that receives SIGTERM after a given step."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Mapping
from typing import Any

import ml_collections

from vpgtrans_jax.train import loop
from vpgtrans_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The size of the tiny stages the end-to-end tests run (configs/tiny_*.py, shortened), as
# dotted config keys: ``with_overrides`` applies them, and ``--config.KEY=VALUE`` passes them on.
TINY_RUN = {
    "data.synthetic_images": 64,
    "model.tiny_llm_steps": 60,
    "batch_size": 8,
    "num_steps": 6,
    "log_every": 1,
}


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of ``configs/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def with_overrides(c: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """``c`` with each dotted key (``"data.synthetic_images"``) set to its value."""
    for key, value in overrides.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def train_until(c: ml_collections.ConfigDict, workdir: str, stop_at: int) -> dict:
    """``loop.train`` with a SIGTERM delivered to this process right after step ``stop_at``."""
    original = step_lib.jit_train_step

    def wrapped(*args, **kwargs):
        fn = original(*args, **kwargs)
        calls = {"n": 0}

        def counting(*a):
            out = fn(*a)
            calls["n"] += 1
            if calls["n"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        counting.lower = fn.lower
        return counting

    loop.jit_train_step = wrapped
    try:
        return loop.train(c, workdir, progress=False)
    finally:
        loop.jit_train_step = original
