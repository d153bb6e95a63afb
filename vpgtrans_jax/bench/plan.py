"""Memory planning past this machine: compile (never run) the stage-2 step at real shapes for a
mesh of N devices and read XLA's per-device memory analysis (``scripts/plan_memory.py``).

Nothing is allocated: the model, optimiser state and batch are abstract
(``jax.ShapeDtypeStruct`` with their shardings) and ``jit(...).lower(...).compile()`` only
plans buffers. On a CPU host ``--xla_force_host_platform_device_count=N`` provides the N
devices. Each setting (remat policy x mesh layout) is compiled, and the report says on which
chips (``shapes.DEVICE_MEMORY``) it fits.

Two estimates are possible. ``layers="real"`` compiles the whole model. ``layers="extrapolate"``
compiles three shallow copies with scanned layers (ViT/LLM depth (a, b), (2a, b), (a, 2b)) and
extends the per-layer increments linearly to the real depths: with scanned stacks every layer
adds the same weights, optimiser state and saved activations, so the model is exact up to
XLA's buffer-assignment choices.

The CPU backend plans its own fusions and has no bf16 matmul (it widens those operands to f32),
so a TPU or GPU compile differs; the figures are estimates of that order, not a guarantee.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vpgtrans_jax import sharding
from vpgtrans_jax.bench import shapes
from vpgtrans_jax.models.vl_model import VLConfig, VLModel
from vpgtrans_jax.train import optim
from vpgtrans_jax.train.step import TrainState, jit_train_step, make_train_step

GiB = 2**30
LAYOUTS = {"data": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tensor": (1, -1, 2)}


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    llm: str = "llama"
    scale: str = "real"
    stage: int = 2
    batch_per_device: int = 4
    text_len: int = 32
    layouts: tuple[str, ...] = ("data", "fsdp")
    remat_policies: tuple[str, ...] = ("none", "nothing_saveable")
    layers: str = "extrapolate"  # or "real"
    loss_chunk: int = 8


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)  # fmt: skip


def step_memory(cfg: VLConfig, opts: PlanOptions, mesh_shape: tuple[int, int, int]) -> dict:
    """Per-device bytes of the compiled step: arguments, outputs, temporaries and their total."""
    mesh = sharding.make_mesh(mesh_shape)
    rules = sharding.DEFAULT_RULES
    model = nnx.eval_shape(lambda: VLModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, frozen = optim.split_trainable(model, shapes.STAGE_TRAINABLE[opts.stage])
    tx = optim.make_optimizer(params, optax.constant_schedule(1e-4), weight_decay=0.05)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    state_sh = sharding.state_shardings(state, mesh, rules)
    frozen_sh = sharding.state_shardings(frozen, mesh, rules)
    n = mesh.devices.size
    b, t, size = opts.batch_per_device * n, opts.text_len, cfg.vision.image_size
    batch_sh = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    batch = {
        "pixel_values": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32, sharding=batch_sh),
        **{k: jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=batch_sh)
           for k in ("input_ids", "attention_mask", "labels")},
    }  # fmt: skip
    step = jit_train_step(make_train_step(graphdef, tx, loss_chunk=opts.loss_chunk), mesh,
                          state_sh, frozen_sh, rules)  # fmt: skip
    t0 = time.perf_counter()
    compiled = step.lower(_abstract(state, state_sh), _abstract(frozen, frozen_sh), batch).compile()
    m = compiled.memory_analysis()
    out = dict(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes - m.alias_size_in_bytes,  # the donated state is reused
        temp=m.temp_size_in_bytes,
        compile_s=time.perf_counter() - t0,
    )
    out["total"] = out["arguments"] + out["outputs"] + out["temp"]
    return out


def _with_depth(cfg: VLConfig, vision: int, llm: int) -> VLConfig:
    return dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, num_layers=vision),
        llm=dataclasses.replace(cfg.llm, num_layers=llm),
    )


def estimate(cfg: VLConfig, opts: PlanOptions, mesh_shape: tuple[int, int, int]) -> dict:
    """``step_memory`` of the real depths, compiled whole or extrapolated (module docstring)."""
    if opts.layers == "real":
        return {**step_memory(cfg, opts, mesh_shape), "method": "compiled"}
    a, b = 2, 2
    base = step_memory(_with_depth(cfg, a, b), opts, mesh_shape)
    more_v = step_memory(_with_depth(cfg, 2 * a, b), opts, mesh_shape)
    more_l = step_memory(_with_depth(cfg, a, 2 * b), opts, mesh_shape)
    out = {"method": f"extrapolated from depths ({a},{b}), ({2 * a},{b}), ({a},{2 * b})"}
    for k in ("arguments", "outputs", "temp", "total"):
        per_v = (more_v[k] - base[k]) / a
        per_l = (more_l[k] - base[k]) / b
        out[k] = base[k] + per_v * (cfg.vision.num_layers - a) + per_l * (cfg.llm.num_layers - b)
    out["compile_s"] = base["compile_s"] + more_v["compile_s"] + more_l["compile_s"]
    return out


def fits(total: float, headroom: float = 0.9) -> list[str]:
    """The chips of ``shapes.DEVICE_MEMORY`` with room for ``total`` bytes (10% kept free for the
    runtime and fragmentation)."""
    return [k for k, v in shapes.DEVICE_MEMORY.items() if total <= headroom * v]


def run(opts: PlanOptions) -> list[dict]:
    """Compiles every (remat policy, layout) and prints one table row each; returns the rows."""
    if opts.layers not in ("real", "extrapolate"):
        raise ValueError(f"--layers must be 'real' or 'extrapolate', got {opts.layers!r}")
    unknown = sorted(set(opts.layouts) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"--layouts: unknown {unknown}; expected some of {sorted(LAYOUTS)}")
    n = len(jax.devices())
    base = shapes.vl_config(opts.scale, opts.llm, precision="bf16", attention_impl="auto",
                            scan_layers=True)  # fmt: skip
    print(
        f"stage {opts.stage}, {opts.scale}: {shapes.describe(base)}; bf16 frozen towers, scanned "
        f"layers, {n} devices ({jax.default_backend()}), batch {opts.batch_per_device}/device, "
        f"text {opts.text_len}, loss_chunk {opts.loss_chunk}\n\n"
        "| remat | mesh (data, fsdp, tensor) | arguments + outputs GiB | temp GiB | total GiB "
        "| fits (90% of) | how |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    rows = []
    for remat in opts.remat_policies:
        cfg = base.with_knobs(
            **{t: {"remat_policy": None if remat == "none" else remat}
               for t in ("vision", "qformer", "llm")}
        )  # fmt: skip
        for layout in opts.layouts:
            shape = LAYOUTS[layout]
            if shape[2] > 1 and n % shape[2]:
                continue
            mesh = tuple(n // shape[2] if s == -1 else s for s in shape)
            r = estimate(cfg, opts, mesh)
            r.update(remat=remat, mesh=mesh, fits=fits(r["total"]))
            rows.append(r)
            print(
                f"| {remat} | {mesh} | {(r['arguments'] + r['outputs']) / GiB:.2f} | "
                f"{r['temp'] / GiB:.2f} | "
                f"{r['total'] / GiB:.3f} | {', '.join(r['fits']) or 'none'} | {r['method']}, "
                f"{r['compile_s']:.0f} s |",
                flush=True,
            )
    return rows
