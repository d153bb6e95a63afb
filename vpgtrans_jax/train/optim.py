"""Trainable/frozen split, learning-rate schedules and the AdamW optimiser of every stage.

Frozen is explicit: ``split_trainable`` partitions the model state by top-level module name into
trainable params (which get gradients and optimiser state) and everything else (which gets
neither). Weight decay follows LAVIS: none on biases, norms, 1-D tensors and the query tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vpgtrans_jax.models.parts import PARTS


def trainable_filter(names: Sequence[str]):
    """nnx filter: Params whose path starts with one of ``names`` (top-level module names)."""
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown trainable module(s) {unknown}; choose from {PARTS}")
    if not names:
        raise ValueError("at least one module must be trainable")
    wanted = tuple(names)

    def filt(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and bool(path) and str(path[0]) in wanted

    return filt


def split_trainable(model: nnx.Module, names: Sequence[str]):
    """Returns ``(graphdef, trainable_state, frozen_state)``."""
    return nnx.split(model, trainable_filter(names), ...)


def make_schedule(
    kind: str,
    *,
    init_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
) -> optax.Schedule:
    """``constant`` (after an optional linear warm-up) or ``warmup_cosine``.

    ``warmup_cosine``: linear from ``warmup_lr`` to ``init_lr`` over ``warmup_steps``, then cosine
    from ``init_lr`` to ``min_lr`` at ``total_steps`` (LAVIS ``linear_warmup_cosine_lr``, by step).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    warm = optax.linear_schedule(warmup_lr, init_lr, max(warmup_steps, 1))
    if kind == "constant":
        main = optax.constant_schedule(init_lr)
    elif kind == "warmup_cosine":
        decay = max(total_steps - warmup_steps, 1)
        main = lambda step: (
            min_lr
            + (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, decay) / decay))
        )
    else:
        raise ValueError(f"unknown lr schedule {kind!r}; expected 'constant' or 'warmup_cosine'")
    if warmup_steps == 0:
        return main
    return optax.join_schedules([warm, main], [warmup_steps])


def _decay_mask(params: nnx.State) -> nnx.State:
    """True where weight decay applies: kernels/matrices, not biases, norms or query tokens."""

    def one(path, var):
        names = [str(p) for p in path]
        no_decay = (
            var.get_value().ndim < 2
            or names[-1] in ("bias", "scale", "q_bias", "v_bias")
            or "query_tokens" in names
            or any("norm" in n.lower() for n in names)
        )
        return var.replace(not no_decay)

    return _map_paths(one, params)


def _map_paths(fn, state: nnx.State) -> nnx.State:
    """Applies ``fn(path, variable) -> variable`` to every variable of ``state``."""
    return nnx.from_flat_state([(p, fn(p, v)) for p, v in nnx.to_flat_state(state)])


def scale_by_module(
    params: nnx.State, multipliers: Mapping[str, float]
) -> optax.GradientTransformation:
    """Multiplies the updates of each top-level module by its factor (1 when absent)."""
    factors = _map_paths(lambda p, v: v.replace(float(multipliers.get(str(p[0]), 1.0))), params)

    def update(updates, state, params=None):
        del params
        scaled = jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors)
        return scaled, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(
    params: nnx.State,
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip_norm: float | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) with optional global-norm clipping and per-module LR factors.

    ``lr_multipliers`` maps a top-level module name (e.g. ``"projector"``) to a factor on the
    schedule (the VPGTrans stage-1 projector uses 5x the stage-2 LR). AdamW's update is linear in
    the learning rate, so scaling a module's final update is the same as scaling its LR.
    """
    multipliers = dict(lr_multipliers or {})
    unknown = sorted(set(multipliers) - set(PARTS))
    if unknown:
        raise ValueError(f"lr_multipliers has unknown module(s) {unknown}")
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
    )
    if any(f != 1.0 for f in multipliers.values()):
        parts.append(scale_by_module(params, multipliers))
    return optax.chain(*parts)
