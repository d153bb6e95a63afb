"""Trained-part exports: what a stage hands to the next one (``config.model.vpg_init``).

An export directory holds ``export.json`` (format, the model config, which modules it holds,
where the frozen towers came from, training provenance) and ``params/`` (an Orbax checkpoint of
``{module_name: pure param dict}`` for e.g. ``ln_vision``, ``query_tokens``, ``qformer``,
``projector``). Frozen towers are referenced, never copied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from vpgtrans_jax import sharding, weights

EXPORT_FORMAT = "vpgtrans-jax/trained-parts"
EXPORT_VERSION = 1


def _pure(tree: Any) -> Any:
    """Plain nested dict of numpy arrays from an ``nnx.State`` / dict of states / arrays."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if isinstance(tree, dict):
        return {k: _pure(v) for k, v in tree.items()}
    if isinstance(tree, nnx.Variable):
        return np.asarray(tree.get_value())
    return np.asarray(tree)


def export_trained_parts(params: Any, out_dir: str, meta: dict[str, Any]) -> str:
    """Writes ``params`` (``nnx.State`` or ``{module: state}``; keys = module names) to ``out_dir``.

    Written to a temporary sibling directory and renamed at the end, so a crash never leaves a
    half-written export behind.
    """
    pure = _pure(params)
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export_tmp_", dir=parent)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "params"), pure)
        ckptr.wait_until_finished()
        info = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "modules": sorted(pure),
            **meta,
        }
        with open(os.path.join(tmp, "export.json"), "w") as f:
            json.dump(info, f, indent=1)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_export(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(export.json contents, {module: pure param dict of numpy arrays})``."""
    info_path = os.path.join(path, "export.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(
            f"{path}: no export.json; expected a directory written by scripts/train.py "
            "(<workdir>/export) or scripts/merge_projector.py"
        )
    with open(info_path) as f:
        info = json.load(f)
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{info_path}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"))
    return info, jax.tree.map(np.asarray, restored)


def apply_vpg_init(model: nnx.Module, path: str, mesh: Mesh, rules: sharding.Rules) -> list[str]:
    """Replaces the modules an export holds inside ``model`` (in place); returns their names.

    Shapes must match the model exactly (a projector exported for another LLM width is an error);
    a Q-Former stored in the other layer layout (scanned vs not) is converted.
    """
    from vpgtrans_jax.transfer.merge import load_vpg_init

    parts = load_vpg_init(path, qformer_scan_layers=model.config.qformer.scan_layers)
    for name, pure in parts.items():
        if not hasattr(model, name):
            raise ValueError(f"{path}: export holds module {name!r} that the model does not have")
        current = getattr(model, name)
        if isinstance(current, nnx.Variable):  # query_tokens is a bare Param
            value = np.asarray(pure)
            if value.shape != current.get_value().shape:
                raise ValueError(
                    f"{path}: {name} has shape {value.shape}, model expects "
                    f"{current.get_value().shape}"
                )
            sh = sharding.state_shardings({name: current}, mesh, rules)[name]
            current.set_value(
                jax.device_put(value.astype(current.get_value().dtype), sh.get_value())
            )
            continue
        shardings = sharding.state_shardings(nnx.state(current), mesh, rules)
        filled = weights.fill_abstract(current, pure, source=f"{path}:{name}", shardings=shardings)
        nnx.update(current, nnx.state(filled))
    return sorted(parts)
