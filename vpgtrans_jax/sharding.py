"""Logical axis names → device mesh axes.

Parameters carry logical axis names in their ``axes`` metadata (``layers.make_param``) and key
activations are annotated with ``constrain(x, names)``. One rules table maps each logical name to
zero, one or several mesh axes among ``data``, ``fsdp`` and ``tensor``:

- ``data``: pure data parallelism (parameters replicated).
- ``fsdp``: data parallelism with parameters and optimiser state sharded (ZeRO-3 style).
- ``tensor``: Megatron-style tensor parallelism over heads / MLP / vocab.

The mesh uses ``AxisType.Auto`` on purpose: the models place a few constraints on key
activations and let the XLA partitioner propagate everything else. Explicit axes would require
sharding-in-types annotations on every einsum of the frozen 7B towers for no gain here.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

# Logical name → mesh axes. Params: "embed" (model width, FSDP-sharded), "heads"/"kv_heads"
# (fused head×head_dim projections), "mlp", "vocab"; everything else replicated. Activations use
# "activation_*" names so weights and activations can be sharded independently.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_heads", "tensor"),
)

# Logical names of the activations the models annotate (one definition for every tower).
BATCH = ("activation_batch",)
HIDDEN = ("activation_batch", "activation_length", "activation_embed")  # float[B, T, D]
HEADS = ("activation_batch", "activation_length", "activation_heads", None)  # float[B, T, H, Dh]
MLP = ("activation_batch", "activation_length", "activation_mlp")  # float[B, T, F]
LOGITS = ("activation_batch", "activation_length", "activation_vocab")  # float[B, T, V]


def maybe_initialize_distributed() -> None:
    """Connects the processes of a multi-process launch before JAX touches any device.

    Training and evaluation call it first (a second call does nothing). Explicit:
    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (multi-GPU hosts;
    several processes on one machine in the tests). Auto-detected by JAX: TPU pod slices
    (``TPU_WORKER_HOSTNAMES``), SLURM, Open MPI.
    """
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
            process_id=int(env.get("JAX_PROCESS_ID", "0")),
        )
        return
    multi_worker_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    slurm = int(env.get("SLURM_NTASKS", "1")) > 1
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if multi_worker_tpu or slurm or mpi:
        jax.distributed.initialize()


def make_mesh(
    shape: Sequence[int] = (-1, 1, 1),
    axis_names: Sequence[str] = MESH_AXES,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh. One ``-1`` entry takes the remaining devices.

    Example: ``make_mesh((2, 2, 2))`` on 8 devices; ``make_mesh((-1, 1, 1))`` is pure data parallel.
    """
    devices = list(jax.devices() if devices is None else devices)
    original_shape = tuple(shape)
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {tuple(shape)} does not match axis names {tuple(axis_names)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if len(devices) % rest:
            raise ValueError(f"{len(devices)} devices cannot fill mesh shape {tuple(shape)}")
        shape[shape.index(-1)] = len(devices) // rest
    if -1 not in original_shape and math.prod(shape) < len(devices):
        # An explicit smaller mesh (e.g. (1, 1, 1) for a single-device reference run) takes the
        # first devices.
        devices = devices[: math.prod(shape)]
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, {len(devices)} available"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types, devices=devices)


def rules_to_dict(rules: Rules) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, target in rules:
        if target is None:
            out[name] = ()
        elif isinstance(target, str):
            out[name] = (target,)
        else:
            out[name] = tuple(target)
    return out


def logical_to_spec(
    axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec`` on ``mesh``.

    A mesh axis is used at most once (the first dimension that asks for it wins), mesh axes absent
    from ``mesh`` or of size 1 are dropped, and when ``shape`` is given a dimension that the mesh
    axes do not divide evenly is left replicated rather than padded.
    """
    table = rules_to_dict(rules)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(axes):
        targets = table.get(name, ()) if name is not None else ()
        chosen = tuple(
            a for a in targets if a in mesh.shape and mesh.shape[a] > 1 and a not in used
        )
        if chosen and shape is not None and shape[i] % math.prod(mesh.shape[a] for a in chosen):
            chosen = ()
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    return PartitionSpec(*spec)


def _axes_of(var: nnx.Variable) -> tuple[str | None, ...] | None:
    return var.get_metadata().get("axes")


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedSharding for every leaf of an ``nnx.State`` from its ``axes`` metadata.

    Leaves without ``axes`` (RNG counters, step counts) are replicated.
    """

    def one(var):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        shape = np.shape(value)
        axes = _axes_of(var) if isinstance(var, nnx.Variable) else None
        if axes is None or len(axes) != len(shape):
            spec = PartitionSpec()
        else:
            spec = logical_to_spec(axes, rules, mesh, shape)
        sh = NamedSharding(mesh, spec)
        return var.replace(sh) if isinstance(var, nnx.Variable) else sh

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Moves every variable of ``model`` onto ``mesh`` according to ``rules`` (in place)."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model


# ---- activation constraints -------------------------------------------------------------------

_ctx = threading.local()


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """While active (at trace time), ``constrain`` places sharding constraints on activations."""
    prev = getattr(_ctx, "value", None)
    _ctx.value = (mesh, tuple(rules))
    try:
        yield
    finally:
        _ctx.value = prev


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Annotates activation ``x`` with logical ``axes``; a no-op outside ``use_mesh``."""
    ctx = getattr(_ctx, "value", None)
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = logical_to_spec(axes, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
