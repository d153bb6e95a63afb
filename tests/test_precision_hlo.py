"""Precision as the stage configs promise: in the stage-1 and stage-2 train steps the frozen
towers (ViT, LLM) run their matmuls in bf16, get no weight gradients and no optimiser state,
and the trained parts keep float32 master weights.

The program is inspected as JAX hands it to XLA (the step's jaxpr, ops named by the model's
``vision`` / ``llm`` scopes). XLA's CPU backend later widens bf16 dots to f32 (it has no bf16
matmul), so the CPU-compiled HLO cannot show what a GPU or TPU runs.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.extend import core as jcore

from tests import tiny_vl
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.train import builder, config_base, optim, presets
from vpgtrans_jax.train import step as step_lib

FROZEN = ("vision", "llm")


def _stage_model_config(stage: str, llm_type: str):
    """A real stage config's dtype knobs (base_config) on the tiny architecture."""
    c = config_base.base_config()
    knobs = {t: c.model[t].to_dict() for t in ("vision", "qformer", "llm")}
    presets.tiny(c, llm_type)  # tiny shapes (and fp32 knobs, replaced next)
    for tower, k in knobs.items():
        c.model[tower].update(k)
    {"warmup": presets.warmup_stage, "finetune": presets.finetune_stage}[stage](c)
    return builder.random_model_config(c), tuple(c.trainable)


def _dots(jaxpr: jcore.Jaxpr, prefix: str = ""):
    """(name stack, input dtypes, output shape) of every dot_general, sub-jaxprs included."""
    for eqn in jaxpr.eqns:
        name = f"{prefix}/{eqn.source_info.name_stack}"
        if eqn.primitive.name == "dot_general":
            yield name, tuple(str(v.aval.dtype) for v in eqn.invars), eqn.outvars[0].aval.shape
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from _dots(sub.jaxpr, name)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from _dots(sub, name)


def _tower(name: str) -> str | None:
    return next((t for t in FROZEN if re.search(rf"\b{t}\b", name)), None)


def _inspect(cfg, trainable):
    model = VLModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, frozen = optim.split_trainable(model, trainable)
    tx = optax.adamw(1e-3)
    state = step_lib.TrainState.create(params, tx)
    step = step_lib.make_train_step(graphdef, tx, loss_chunk=4)
    jaxpr = jax.make_jaxpr(step)(state, frozen, tiny_vl.batch(2, 8, image_size=64))
    return state, frozen, list(_dots(jaxpr.jaxpr))


def _weight_shapes(state: nnx.State) -> dict[str, set[tuple[int, ...]]]:
    out: dict[str, set[tuple[int, ...]]] = {t: set() for t in FROZEN}
    for path, var in nnx.to_flat_state(state):
        if str(path[0]) in FROZEN and var.get_value().ndim >= 2:
            out[str(path[0])].add(tuple(var.get_value().shape))
    return out


@pytest.mark.parametrize("stage,llm_type", [("warmup", "opt"), ("finetune", "llama")])
def test_frozen_towers_bf16_no_gradients_fp32_masters(stage, llm_type):
    cfg, trainable = _stage_model_config(stage, llm_type)
    state, frozen, dots = _inspect(cfg, trainable)
    in_tower = {t: [d for d in dots if _tower(d[0]) == t] for t in FROZEN}
    assert all(in_tower.values()), "the tower scopes name no matmul: the check would be vacuous"
    f32 = [d for t in FROZEN for d in in_tower[t] if "float32" in d[1]]
    assert not f32, f"frozen-tower matmuls in f32: {f32[:3]}"
    # A frozen weight's gradient is a matmul in its tower with that weight's shape.
    shapes = _weight_shapes(frozen)
    grads = [d for t in FROZEN for d in in_tower[t] if tuple(d[2]) in shapes[t]]
    assert not grads, f"weight gradients of frozen towers: {grads[:3]}"
    # Trained parts: fp32 masters and their optimiser moments; nothing of the frozen towers.
    for path, var in nnx.to_flat_state(state.params):
        assert str(path[0]) in trainable and var.get_value().dtype == np.float32, path
    for path, var in nnx.to_flat_state(frozen):
        if str(path[0]) in FROZEN:
            assert var.get_value().dtype == jax.numpy.bfloat16, path
    opt_paths = [str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert not [p for p in opt_paths if re.search(r"'(vision|llm)'", p)], opt_paths[:5]
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_opt <= 2 * n_params + 8  # two AdamW moments (and a step count) per trained weight


def test_check_sees_gradients_and_f32_when_they_exist():
    """Control: training the ViT in f32 shows f32 matmuls and weight gradients in its scope."""
    cfg, _ = _stage_model_config("warmup", "opt")
    cfg = cfg.with_knobs(vision={"dtype": "float32", "param_dtype": "float32"})
    _, frozen, dots = _inspect(cfg, ("vision", "projector"))
    vision = [d for d in dots if _tower(d[0]) == "vision"]
    assert any("float32" in d[1] for d in vision)
    model = VLModel(cfg, rngs=nnx.Rngs(0))
    shapes = {tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(model.vision))
              if v.get_value().ndim >= 2}  # fmt: skip
    assert any(tuple(d[2]) in shapes for d in vision)
