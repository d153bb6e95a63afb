"""The jit-compiled training step: gradient accumulation, NaN/inf guard, sharded in and out.

Only the trainable state is differentiated: frozen towers get no weight gradients (XLA never
builds them) and no optimiser state, while the frozen LLM still back-propagates to its inputs
(the soft prompt) because the projector's gradient needs it. In stage 1 nothing upstream of the
projector is differentiated, so the ViT and Q-Former run forward only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from vpgtrans_jax import sharding

Batch = dict[str, jax.Array]

BATCH_KEYS = (
    "pixel_values",
    "input_ids",
    "attention_mask",
    "labels",
    "image_offset",
    "prompt_lengths",
)


@struct.dataclass
class TrainState:
    """Everything that changes during training (frozen weights live outside, read-only).

    Attributes:
      step: int32 number of applied (finite) updates.
      params: trainable ``nnx.State``.
      opt_state: optimiser state for ``params`` only.
      bad_steps: int32 consecutive non-finite steps (reset by a finite one).
      skipped_steps: int32 total skipped (non-finite) steps.
    """

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    bad_steps: jax.Array
    skipped_steps: jax.Array

    @classmethod
    def create(cls, params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
        zero = jnp.zeros((), jnp.int32)
        return cls(
            step=zero, params=params, opt_state=tx.init(params), bad_steps=zero, skipped_steps=zero
        )


def _split_micro(batch: Batch, accum_steps: int) -> Batch:
    """[B, ...] → [accum_steps, B / accum_steps, ...]; micro-batch j holds rows j, j + A, ...

    Strided (not contiguous) micro-batches keep each device's rows on that device when the batch
    axis is sharded, so the split costs no communication.
    """

    def one(x):
        if x.shape[0] % accum_steps:
            raise ValueError(
                f"global batch {x.shape[0]} is not divisible by accum_steps={accum_steps}"
            )
        return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(one, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    accum_steps: int = 1,
    loss_chunk: int = 0,
) -> Callable[[TrainState, nnx.State, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``step(state, frozen, batch) -> (state, metrics)`` (not yet jitted).

    ``loss_chunk`` > 0 computes the loss that many text positions at a time (``VLModel.loss``'s
    ``logits_chunk``): the float32 [B, T, vocab] logits never exist.

    The loss is the token-weighted mean cross-entropy over the whole global batch: each
    micro-batch contributes its summed NLL, divided once by the total number of text tokens, so
    the result does not depend on how the batch is split into micro-batches or devices.
    """

    def nll_sum(params, frozen, micro):
        model = nnx.merge(graphdef, params, frozen)
        # Optional per-row inputs, passed only when the data provides them.
        extra = {
            arg: micro[key]
            for key, arg in (
                ("prompt_lengths", "prompt_lengths"),
                ("image_offset", "image_offsets"),
            )
            if key in micro
        }
        if loss_chunk:
            extra["logits_chunk"] = loss_chunk
        _, aux = model.loss(
            micro["pixel_values"],
            micro["input_ids"],
            micro["attention_mask"],
            micro["labels"],
            **extra,
        )
        return aux["nll_sum"], aux["num_tokens"]

    grad_fn = jax.value_and_grad(nll_sum, has_aux=True)

    def step(state: TrainState, frozen: nnx.State, batch: Batch):
        micro_batches = _split_micro(batch, accum_steps)
        zeros = jax.tree.map(jnp.zeros_like, state.params)

        def accumulate(carry, micro):
            g_sum, l_sum, n_sum = carry
            (nll, n), g = grad_fn(state.params, frozen, micro)
            g_sum = jax.tree.map(jnp.add, g_sum, g)
            return (g_sum, l_sum + nll, n_sum + n), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (g_sum, l_sum, n_sum), _ = jax.lax.scan(accumulate, init, micro_batches)
        denom = jnp.maximum(n_sum, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        loss = l_sum / denom

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # Non-finite step: keep params and optimiser state exactly as they were.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + finite.astype(jnp.int32),
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "num_tokens": n_sum,
            "finite": finite,
        }
        return new_state, metrics

    return step


def jit_train_step(
    step_fn: Callable,
    mesh: Mesh,
    state_sh: Any,
    frozen_sh: Any,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable:
    """``jax.jit`` with explicit shardings; donates the train state (updated in place)."""
    batch_spec = sharding.logical_to_spec(("activation_batch",), rules, mesh)
    batch_sh = NamedSharding(mesh, batch_spec)

    def traced(state, frozen, batch):
        with sharding.use_mesh(mesh, rules):
            return step_fn(state, frozen, batch)

    return jax.jit(
        traced,
        in_shardings=(state_sh, frozen_sh, batch_sh),
        out_shardings=(state_sh, NamedSharding(mesh, jax.sharding.PartitionSpec())),
        donate_argnums=(0,),
    )
