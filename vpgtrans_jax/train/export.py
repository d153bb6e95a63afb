"""What a stage hands to the next one (``config.model.vpg_init``) and to evaluation.

Two directory kinds:

- the end-of-training export, ``<workdir>/export``: a model directory
  (``vpgtrans_jax.convert.model_dir``) storing the VPG parts (ln_vision, query tokens, Q-Former,
  projector) and referencing the frozen ViT and LLM to ``config.model.path`` (random-init tiny
  runs store them too). ``vpgtrans_jax.load`` opens it as a whole model.
- a parts export (``export_trained_parts``; written by ``scripts/merge_projector.py`` and the tiny
  LLM cache): ``export.json`` (format, which modules, provenance) and ``params/`` (an Orbax
  checkpoint of ``{module_name: pure param dict}``).

``apply_vpg_init`` reads either kind.
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


VPG_PARTS = ("ln_vision", "query_tokens", "qformer", "projector")


def export_model_dir(
    model: nnx.Module, out_dir: str, *, pretrained_path: str | None, created_by: str
) -> str:
    """Writes ``model`` as a model directory: VPG parts stored, ViT/LLM referenced when possible."""
    from vpgtrans_jax.convert.model_dir import save_model_dir

    stored = list(VPG_PARTS) + ([] if pretrained_path else ["vision", "llm"])
    params = {
        part: _pure(nnx.state(getattr(model, part))) for part in stored if part != "query_tokens"
    }
    params["query_tokens"] = np.asarray(model.query_tokens.get_value())
    sources = {"vision": pretrained_path, "llm": pretrained_path} if pretrained_path else None
    save_model_dir(params, out_dir, model.config, sources, overwrite=True, created_by=created_by)
    return out_dir


def _read_vpg_parts(path: str, model: nnx.Module) -> dict[str, Any]:
    """``{module: pure dict}`` from a model directory or a parts export, in ``model``'s layout."""
    from vpgtrans_jax.convert import model_dir

    if model_dir.is_model_dir(path):
        cfg = model.config
        return model_dir.load_params(
            path,
            parts=VPG_PARTS,
            qformer={"scan_layers": cfg.qformer.scan_layers},
        )
    from vpgtrans_jax.transfer.merge import load_vpg_init

    return load_vpg_init(path, qformer_scan_layers=model.config.qformer.scan_layers)


def apply_vpg_init(model: nnx.Module, path: str, mesh: Mesh, rules: sharding.Rules) -> list[str]:
    """Replaces the modules an export holds inside ``model`` (in place); returns their names.

    Shapes must match the model exactly (a projector exported for another LLM width is an error);
    a Q-Former stored in the other layer layout (scanned vs not) is converted.
    """
    parts = _read_vpg_parts(path, model)
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
