"""Parameters as plain ``{dotted path: array}`` dicts, and filling an abstract model with them.

Paths are our ``nnx.state`` paths joined by dots (``qformer.layers.0.ffn.fc1.kernel``); they are
what checkpoints store and what the import engine emits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.nn.layers import abstract_params


def dotted(tree: Mapping) -> dict[str, Any]:
    """A nested dict (string or int keys) → ``{"a.0.b": leaf}``."""
    return {".".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def nested(flat: Mapping[str, Any]) -> dict:
    """``{"a.0.b": leaf}`` → a nested dict with string keys (the inverse of ``dotted``)."""
    return traverse_util.unflatten_dict({tuple(k.split(".")): v for k, v in flat.items()})


def flat_params(params: Any) -> dict[str, np.ndarray]:
    """A module, an ``nnx.State`` or a nested dict of arrays/Variables → ``{path: numpy array}``."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        return {
            ".".join(map(str, p)): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
            for p, v in nnx.to_flat_state(params)
        }
    if isinstance(params, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in params.items():
            if isinstance(v, (Mapping, nnx.State, nnx.Module)):
                out.update({f"{k}.{p}": a for p, a in flat_params(v).items()})
            else:
                out[str(k)] = np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
        return out
    raise TypeError(f"expected a module, nnx.State or nested dict, got {type(params).__name__}")


def abstract(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """Builds a model without allocating its parameters (shapes and dtypes only).

    Equal to ``nnx.eval_shape(factory)`` but untraced, so its cost is linear in the number of
    parameters (``nn.layers.abstract_params`` says why tracing was quadratic).
    """
    with abstract_params():
        return factory()


def expected_params(model: nnx.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Our path → (shape, dtype) of every parameter of a (possibly abstract) model."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = var.get_value()
        out[".".join(map(str, path))] = (tuple(v.shape), np.dtype(v.dtype))
    return out


def fill_abstract(
    abstract_model: nnx.Module,
    params: Mapping,
    *,
    source: str = "checkpoint",
    shardings: nnx.State | None = None,
) -> nnx.Module:
    """A concrete model: ``abstract_model``'s structure with the arrays of ``params``.

    Args:
      params: ``{dotted path: array}`` or the same nested.
      shardings: ``sharding.state_shardings`` of the abstract state; each array is then placed
        straight onto the mesh, one tensor at a time.

    Every parameter must be present with the expected shape; arrays are cast to each parameter's
    declared dtype. Raises CheckpointError listing missing/unexpected paths or shape mismatches.
    """
    graphdef, state = nnx.split(abstract_model)
    flat_expected = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}
    given = dotted(params)
    missing = sorted(set(flat_expected) - set(given))
    unexpected = sorted(set(given) - set(flat_expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: parameter tree mismatch; missing {missing[:20]}"
            f"{' …' if len(missing) > 20 else ''}, unexpected {unexpected[:20]}"
            f"{' …' if len(unexpected) > 20 else ''}"
        )
    bad = [
        f"{path}: expected {tuple(var.get_value().shape)}, got {tuple(np.shape(given[path]))}"
        for path, var in flat_expected.items()
        if tuple(np.shape(given[path])) != tuple(var.get_value().shape)
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch: " + "; ".join(bad[:20]))
    flat_shardings = (
        {".".join(map(str, p)): v for p, v in nnx.to_flat_state(shardings)} if shardings else {}
    )

    def fill(path, var):
        key = ".".join(map(str, path))
        host = np.asarray(given[key]).astype(var.get_value().dtype)
        if key in flat_shardings:
            sh = flat_shardings[key]
            sh = sh.get_value() if isinstance(sh, nnx.Variable) else sh
            return var.replace(jax.device_put(host, sh))
        return var.replace(jnp.asarray(host))

    new_state = nnx.from_flat_state(
        [(path, fill(path, var)) for path, var in nnx.to_flat_state(state)]
    )
    return nnx.merge(graphdef, new_state)


__all__ = ["dotted", "nested", "flat_params", "abstract", "expected_params", "fill_abstract"]
