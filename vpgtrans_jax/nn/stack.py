"""Stacks of identical transformer blocks: a Python list, or one scanned module.

``scan_layers=True`` stores every parameter with a leading ``layers`` axis (logical name
``"layers"``) and runs the blocks with ``jax.lax.scan``: compile time stops growing with depth,
which matters for the 39-block ViT-g and 32-layer 7B LLMs. ``scan_layers=False`` keeps an
``nnx.List`` of blocks (``layers.0``, ``layers.1``, ...), handy for debugging and for checkpoints
that mirror the per-layer PyTorch layout. Both give the same numbers.

``remat_policy`` names a ``jax.checkpoint_policies`` entry (e.g. ``"nothing_saveable"``,
``"dots_with_no_batch_dims_saveable"``); ``None``/``"none"`` disables rematerialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from vpgtrans_jax.nn.layers import is_abstract

Body = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]


def checkpoint_policy(name: str | None) -> Callable[..., bool] | None:
    """Resolves a remat policy name; raises with the valid names when unknown."""
    if name is None or name == "none":
        return None
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None or not callable(policy):
        valid = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"unknown remat_policy {name!r}; expected 'none' or one of {valid}")
    # Factories such as save_only_these_names need arguments and are not usable by name alone.
    if name.startswith(("save_", "offload_", "save_and_offload")):
        raise ValueError(f"remat_policy {name!r} needs arguments; pick a ready-made policy")
    return policy


def build_layers(
    factory: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs, *, scan: bool
) -> nnx.Module:
    """Creates ``num_layers`` blocks with ``factory(rngs)``, stacked when ``scan`` is set."""
    if not scan:
        return nnx.List([factory(rngs) for _ in range(num_layers)])
    if is_abstract():  # shapes only: one block's, with the leading layer axis
        graphdef, state = nnx.split(factory(rngs))
        state = jax.tree.map(lambda s: jax.ShapeDtypeStruct((num_layers, *s.shape), s.dtype), state)
        return _tag_layer_axis(nnx.merge(graphdef, state))
    keys = jax.random.split(rngs.params(), num_layers)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory(nnx.Rngs(params=0))))
    state = jax.vmap(lambda k: nnx.state(factory(nnx.Rngs(params=k))))(keys)
    return _tag_layer_axis(nnx.merge(graphdef, state))


def _tag_layer_axis(stacked: nnx.Module) -> nnx.Module:
    """Prefixes every parameter's logical axes with ``"layers"`` (the stacked axis)."""
    for _, var in nnx.iter_graph(stacked):
        if isinstance(var, nnx.Variable):
            axes = var.get_metadata().get("axes")
            if axes is not None:
                var.set_metadata("axes", ("layers", *axes))
    return stacked


def apply_layers(
    layers: nnx.Module,
    body: Body,
    carry: Any,
    xs: Any = None,
    *,
    scan: bool,
    remat_policy: str | None = None,
) -> tuple[Any, Any]:
    """Runs ``carry, y_l = body(block_l, carry, xs[l])`` over the blocks.

    Args:
      layers: what ``build_layers`` returned with the same ``scan``.
      body: pure function of (block, carry, per-layer input); must not mutate the block.
      carry: the running hidden state (any pytree).
      xs: per-layer inputs stacked on axis 0 (e.g. a layer's KV cache), or None. Without
        ``scan`` it may also be a ``list`` with one entry per layer; the outputs are then a list
        too, and no per-layer slice or restack copies are made.

    Returns:
      (final carry, per-layer outputs: stacked on axis 0, a list when ``xs`` is a list, or None
      when body returns None).
    """
    policy = checkpoint_policy(remat_policy)
    use_remat = remat_policy not in (None, "none")
    per_layer = isinstance(xs, list)
    if per_layer and scan:
        raise ValueError(
            f"per-layer inputs (a list of {len(xs)}) need scan=False: scanned stacks take "
            "inputs stacked on axis 0 (e.g. KVCache.stack())"
        )
    if per_layer and len(xs) != len(layers):
        raise ValueError(f"per-layer inputs need one entry per layer: {len(xs)} for {len(layers)}")

    if scan:
        graphdef, state = nnx.split(layers)

        def step(c, inp):
            s_l, x_l = inp
            return body(nnx.merge(graphdef, s_l), c, x_l)

        if use_remat:
            step = jax.checkpoint(step, policy=policy, prevent_cse=False)
        return jax.lax.scan(step, carry, (state, xs))

    ys = []
    for i, block in enumerate(layers):
        if per_layer:
            x_l = xs[i]
        else:
            x_l = None if xs is None else jax.tree.map(lambda a, i=i: a[i], xs)
        if use_remat:
            graphdef, state = nnx.split(block)

            def step(s, c, x, graphdef=graphdef):
                return body(nnx.merge(graphdef, s), c, x)

            carry, y = jax.checkpoint(step, policy=policy)(state, carry, x_l)
        else:
            carry, y = body(block, carry, x_l)
        ys.append(y)
    if all(y is None for y in ys):
        return carry, None
    if per_layer:
        return carry, ys
    return carry, jax.tree.map(lambda *a: jax.numpy.stack(a), *ys)
