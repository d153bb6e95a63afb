"""Builds the model a training config describes and places it on the mesh."""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vpgtrans_jax import paths, sharding
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.fill import abstract, expected_params, fill_abstract
from vpgtrans_jax.checkpoint.load import load
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.models.vl_model import VLConfig, VLModel
from vpgtrans_jax.train.config_base import KNOBS

log = logging.getLogger(__name__)


def _knobs(c: ml_collections.ConfigDict, tower: str) -> dict[str, Any]:
    k = {name: c.model[tower][name] for name in KNOBS}
    k["remat_policy"] = None if k["remat_policy"] in ("", "none", None) else k["remat_policy"]
    return k


def rules_of(c: ml_collections.ConfigDict) -> sharding.Rules:
    if not c.sharding_rules:
        return sharding.DEFAULT_RULES
    return tuple((name, None if t is None else t) for name, t in c.sharding_rules)


def random_model_config(c: ml_collections.ConfigDict) -> VLConfig:
    """``VLConfig`` from ``config.model.arch`` + the per-tower knobs (``model.init='random'``)."""
    arch = c.model.arch
    llm_cls = registry.family(c.model.llm_type).config_cls

    def make(cls, fields, tower):
        try:
            return cls(**{**fields.to_dict(), **_knobs(c, tower)})
        except TypeError as e:
            raise ValueError(f"config.model.arch.{tower}: {e}") from None

    return VLConfig(
        vision=make(VisionConfig, arch.vision, "vision"),
        qformer=make(QFormerConfig, arch.qformer, "qformer"),
        llm=make(llm_cls, arch.llm, "llm"),
        num_query_tokens=arch.num_query_tokens,
        ln_vision_eps=arch.ln_vision_eps,
    )


def random_vpg(cfg: VLConfig, seed: int) -> dict[str, np.ndarray]:
    """Freshly initialised VPG parts (ln_vision, query tokens, Q-Former, projector) of ``cfg``:
    ``{"<part>.<path>": float array}``, as ``VLModel(cfg)`` initialises them with ``seed``.

    A real-size model is traced under ``jit`` and only the VPG parts are computed (XLA drops the
    rest), so this is cheap for a ViT-g and a 7B LLM too (the from-scratch baseline of a
    transfer); a small one is built directly (compiling would take longer).
    """
    cfg = cfg.with_knobs(vision={"scan_layers": False}, llm={"scan_layers": False})

    def init() -> dict[str, jax.Array]:
        model = VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))
        flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
        return {
            ".".join(map(str, path)): v.get_value() for path, v in flat if str(path[0]) in VPG_PARTS
        }

    shapes = expected_params(abstract(lambda: VLModel(cfg, rngs=nnx.Rngs(params=0))))
    size = sum(int(np.prod(shape)) for shape, _ in shapes.values())
    out = init() if size < _EAGER_INIT_PARAMS else jax.jit(init)()
    return {k: np.asarray(v) for k, v in out.items()}


_EAGER_INIT_PARAMS = 20_000_000  # below this, random_vpg builds the model without compiling


def _replace_part(model: VLModel, name: str, flat: dict[str, np.ndarray], where: str,
                  mesh: Mesh, rules: sharding.Rules) -> None:  # fmt: skip
    """Sets part ``name`` of ``model`` (in place) from ``{"<name>.<path>": array}``."""
    current = getattr(model, name)
    if isinstance(current, nnx.Variable):  # query_tokens is a bare Param
        value = np.asarray(flat[name])
        if value.shape != current.get_value().shape:
            raise ValueError(
                f"{where}: {name} has shape {value.shape}, the model expects "
                f"{current.get_value().shape}"
            )
        sh = sharding.state_shardings({name: current}, mesh, rules)[name]
        current.set_value(jax.device_put(value.astype(current.get_value().dtype), sh.get_value()))
        return
    prefix = name + "."
    own = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    shardings = sharding.state_shardings(nnx.state(current), mesh, rules)
    filled = fill_abstract(current, own, source=f"{where}:{name}", shardings=shardings)
    nnx.update(current, nnx.state(filled))


def apply_vpg_init(model: VLModel, path: str, mesh: Mesh, rules: sharding.Rules) -> list[str]:
    """Replaces the VPG parts (ln_vision, query tokens, Q-Former, projector) of ``model`` with
    those of checkpoint ``path`` (in place); returns their names.

    ``path`` is anything holding a VL model: a stage's ``<workdir>/export``, a projector merge
    (``scripts/merge_projector.py``), a HF BLIP-2 directory. Shapes must match the model exactly
    (a projector exported for another LLM width is an error); a Q-Former stored in the other
    layer layout (scanned vs not) is converted.
    """
    q_layout = {"scan_layers": model.config.qformer.scan_layers}
    _, flat = model_dir.read_parts(path, VPG_PARTS, qformer=q_layout)
    for name in VPG_PARTS:
        _replace_part(model, name, flat, path, mesh, rules)
    return list(VPG_PARTS)


def apply_llm_init(model: VLModel, path: str, mesh: Mesh, rules: sharding.Rules) -> None:
    """Replaces ``model.llm`` (in place) with the LLM of checkpoint ``path`` in the model's
    layout and dtypes."""
    _, flat = model_dir.read_parts(path, ["llm"], llm={"scan_layers": model.config.llm.scan_layers})
    _replace_part(model, "llm", flat, path, mesh, rules)


def build_model(c: ml_collections.ConfigDict, mesh: Mesh) -> tuple[VLModel, dict[str, Any]]:
    """The model placed on ``mesh``, and a JSON description of where its weights came from."""
    rules = rules_of(c)
    if c.model.init == "random":
        cfg = random_model_config(c)
        model = VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(c.seed)))
        source = {"init": "random", "seed": c.seed, "config": cfg.to_dict()}
        sharding.shard_model(model, mesh, rules)
        if c.model.llm_init:
            apply_llm_init(model, c.model.llm_init, mesh, rules)
            source["llm"] = paths.abspath(c.model.llm_init)
    else:
        model = load(
            c.model.path,
            mesh=mesh,
            rules=rules,
            vision=_knobs(c, "vision"),
            qformer=_knobs(c, "qformer"),
            llm=_knobs(c, "llm"),
        )
        source = {"init": "pretrained", "path": paths.abspath(c.model.path)}
    if c.model.vpg_init:
        replaced = apply_vpg_init(model, c.model.vpg_init, mesh, rules)
        source["vpg_init"] = {"path": paths.abspath(c.model.vpg_init), "modules": replaced}
        log.info("initialised %s from %s", ", ".join(replaced), c.model.vpg_init)
    return model, source
