"""Checkpoint conversion and this project's model directory format (docs/checkpoints.md).

Public API:
  ``save_model_dir(params, out, config, sources)``: write a VL model or some of its parts.
  ``load_model_dir(path, **overrides)`` → ``VLModel`` (also reached through ``vpgtrans_jax.load``).
  ``load_params(path, parts)``: nested numpy arrays of some parts.
  ``read_config(path)``, ``read_manifest(path)``.
  ``hf_to_orbax``, ``lavis_to_orbax``, ``orbax_to_hf``, ``orbax_to_lavis``: the ``convert/`` tools.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "save_model_dir": "model_dir",
    "load_model_dir": "model_dir",
    "load_params": "model_dir",
    "read_config": "model_dir",
    "read_manifest": "model_dir",
    "hf_to_orbax": "tools",
    "lavis_to_orbax": "tools",
    "orbax_to_hf": "tools",
    "orbax_to_lavis": "tools",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vpgtrans_jax.convert.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vpgtrans_jax.convert' has no attribute {name!r}")


__all__ = sorted(_LAZY)
