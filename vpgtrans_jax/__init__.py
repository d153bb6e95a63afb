"""vpgtrans-jax: VPGTrans (visual prompt generator transfer across LLMs) in JAX/Flax NNX.

Main entry points: ``vpgtrans_jax.load(path)`` → ``VLModel``; ``VLConfig``; ``sharding.make_mesh``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Resolved lazily: importing a light submodule (layers, data, eval) must not build every model.
_LAZY = {
    "load": ("vpgtrans_jax.checkpoint.load", "load"),
    "VLModel": ("vpgtrans_jax.models.vl_model", "VLModel"),
    "VLConfig": ("vpgtrans_jax.models.vl_model", "VLConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vpgtrans_jax' has no attribute {name!r}")


__all__ = ["load", "VLModel", "VLConfig", "__version__"]
