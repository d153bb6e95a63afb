"""Basic Flax NNX layers shared by every tower.

Every parameter is an ``nnx.Param`` carrying an ``axes`` metadata tuple of *logical* axis names
(see ``vpgtrans_jax.sharding``); the rules table in the config maps them to mesh axes. We use our
own ``axes`` key rather than Flax's ``sharding_names`` so that Flax never shards eagerly behind our
back: placement is decided in one place (``sharding.shard_state``).

Each layer takes a ``dtype`` (compute dtype) and a ``param_dtype`` (storage dtype). Normalisation
layers always compute in float32 (as the PyTorch originals do for half-precision towers) and cast
the result back to the compute dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type
Initializer = Callable[..., jax.Array]

default_kernel_init: Initializer = nnx.initializers.normal(stddev=0.02)
zeros_init: Initializer = nnx.initializers.zeros_init()
ones_init: Initializer = nnx.initializers.ones_init()


_ABSTRACT = contextvars.ContextVar("abstract_params", default=False)


@contextlib.contextmanager
def abstract_params() -> Iterator[None]:
    """Inside, ``make_param`` gives ``jax.ShapeDtypeStruct`` parameters and draws no randomness.

    Building a model here is what ``nnx.eval_shape`` gives, without tracing: under a trace every
    parameter's RNG-counter update makes Flax probe the tracer's ``sharding``, and JAX builds
    that error's message by walking the whole trace so far, so an abstract model cost time
    quadratic in its parameter count (a 200-layer config took minutes).
    """
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


def is_abstract() -> bool:
    """True inside ``abstract_params()``."""
    return _ABSTRACT.get()


def make_param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    dtype: Dtype,
    axes: Sequence[str | None],
) -> nnx.Param:
    """A parameter of ``shape`` tagged with logical ``axes`` (one name per dimension)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {tuple(axes)} do not match parameter shape {tuple(shape)}")
    if _ABSTRACT.get():
        return nnx.Param(jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)), axes=tuple(axes))
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), axes=tuple(axes))


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with ``kernel: [in, out]`` (the transpose of torch's Linear)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool = True,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernel = make_param(rngs, kernel_init, (in_features, out_features), param_dtype, axes)
        self.bias = (
            make_param(rngs, zeros_init, (out_features,), param_dtype, (axes[1],))
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """float[..., in] -> float[..., out] in the compute dtype."""
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 (torch semantics: biased variance)."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        axis_name: str | None = "norm",
        use_bias: bool = True,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(rngs, ones_init, (dim,), param_dtype, (axis_name,))
        self.bias = (
            make_param(rngs, zeros_init, (dim,), param_dtype, (axis_name,)) if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: normalise in float32, cast to the compute dtype, then scale (HF order)."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        axis_name: str | None = "norm",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(rngs, ones_init, (dim,), param_dtype, (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * normed


class Embed(nnx.Module):
    """Token (or position) embedding table ``float[num, dim]``."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: tuple[str | None, str | None] = ("vocab", "embed"),
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.embedding = make_param(
            rngs, default_kernel_init, (num_embeddings, features), param_dtype, axes
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """int[...] -> float[..., dim]."""
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection: float[..., dim] -> float[..., num]."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Activation by its Hugging Face name. ``gelu`` is the exact (erf) GELU, as in torch."""
    table: dict[str, Callable[[jax.Array], jax.Array]] = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(table)}")
    return table[name]
