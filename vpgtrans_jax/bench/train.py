"""One training step at benchmark shapes: time, throughput, TFLOP/s, MFU, memory, and the ratio
to Hugging Face PyTorch on the same model (``scripts/bench_train.py``).

The model has random weights (``bench.shapes``; nothing downloaded). A step is the real one
(``train.step``: AdamW on the stage's trainable parts, frozen towers without gradients), jitted
on a ``(data, fsdp, tensor)`` mesh. FLOPs are analytic (``train.flops``); MFU divides the
achieved FLOP/s by the chip's dense peak (``shapes.PEAK_FLOPS``) or, on CPU, by the measured rate
of a large float32 matmul. Peak memory is the device's own counter where it has one (GPU, TPU),
else XLA's compiled footprint (arguments + outputs + temporaries).

``--compare_torch`` (stages 1 and 2): the same random BLIP-2 is built in PyTorch
(``tests/torch_reference.py``), saved and loaded by ``vpgtrans_jax.load``, so both sides hold
identical weights (their first losses are printed). Each rep times one step of ours and then one
of HF's (alternating, so load changes hit both); the report gives medians and the median of the
per-pair ratios. ``--matmul_floor`` also times the step's matrix multiplications alone, exactly
as the jaxpr of the step has them (shapes, layouts, repeats) and XLA runs them: the time below
which no step on this backend can go, and the fraction of it the step reaches.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.extend import core as jcore

from vpgtrans_jax import sharding
from vpgtrans_jax.bench import shapes
from vpgtrans_jax.bench.generate import _limit_cores
from vpgtrans_jax.checkpoint.hf import blip2
from vpgtrans_jax.checkpoint.load import load
from vpgtrans_jax.data.pipeline import make_global_batch
from vpgtrans_jax.models.vl_model import IGNORE_INDEX, VLConfig, VLModel
from vpgtrans_jax.nn.attention import resolve_implementation
from vpgtrans_jax.train import flops, optim
from vpgtrans_jax.train.step import TrainState, jit_train_step, make_train_step

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Options:
    """What to time (the defaults are ``scripts/bench_train.py``'s: the CPU comparison)."""

    stages: tuple[int, ...] = (1, 2)
    scale: str = "small"
    llm: str = "opt"
    batch: int = 8
    text_len: int = 32
    precision: str = "fp32"
    attention_impl: str = "auto"
    loss_chunk: int = 8
    scan_layers: bool = False
    remat_policy: str = "none"
    mesh: tuple[int, int, int] = (-1, 1, 1)
    reps: int = 3
    compare_torch: bool = False
    matmul_floor: bool = False
    threads: int = 0  # 0: every core this process may use


# ---- our side ------------------------------------------------------------------------------


def random_model(cfg: VLConfig, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> VLModel:
    """A randomly initialised model, created directly in its sharded layout (jitted init)."""
    abstract = nnx.eval_shape(lambda: VLModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding.state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(VLModel(cfg, rngs=nnx.Rngs(0)))[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def make_batch(cfg: VLConfig, stage: int, batch: int, text_len: int, seed: int = 0) -> dict:
    """Random pixels and right-padded text (ids never 0-3: the HF side's special ids)."""
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    ids = rng.integers(4, cfg.llm.vocab_size, (batch, text_len)).astype(np.int32)
    lengths = text_len - (np.arange(batch) % 4)  # some rows padded
    mask = (np.arange(text_len)[None, :] < lengths[:, None]).astype(np.int32)
    out = {
        "pixel_values": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32),
    }
    if stage == 3:  # the image inside the prompt, as the instruction template puts it
        out["image_offset"] = (np.arange(batch) % 5 + 1).astype(np.int32)
    return out


@dataclasses.dataclass
class Setup:
    """A jitted step with its inputs; ``run()`` does one step and returns its loss."""

    step: Any
    state: Any
    frozen: Any
    batch: dict
    cfg: VLConfig
    compiled: Any = None

    def compile(self) -> Any:
        """The compiled step (compiled once; ``run`` and the memory report share it)."""
        if self.compiled is None:
            self.compiled = self.step.lower(self.state, self.frozen, self.batch).compile()
        return self.compiled

    def run(self) -> float:
        self.state, metrics = self.compile()(self.state, self.frozen, self.batch)
        return float(metrics["loss"])  # waits for the step


def setup(model: VLModel, opts: Options, stage: int, mesh, rules=sharding.DEFAULT_RULES) -> Setup:
    graphdef, params, frozen = optim.split_trainable(model, shapes.STAGE_TRAINABLE[stage])
    tx = optim.make_optimizer(params, optax.constant_schedule(1e-4), weight_decay=0.05)
    abstract_state = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    state_sh = sharding.state_shardings(abstract_state, mesh, rules)
    frozen_sh = sharding.state_shardings(frozen, mesh, rules)
    # A copy: the step donates its state, and the model's own arrays serve the next stage.
    create = lambda p: TrainState.create(jax.tree.map(jnp.copy, p), tx)
    state = jax.jit(create, out_shardings=state_sh)(params)
    step = jit_train_step(
        make_train_step(graphdef, tx, loss_chunk=opts.loss_chunk), mesh, state_sh, frozen_sh, rules
    )
    host = make_batch(model.config, stage, opts.batch, opts.text_len)
    return Setup(step, state, frozen, make_global_batch(host, mesh), model.config)


def memory_report(s: Setup) -> tuple[float, str]:
    """(peak bytes, where the number comes from) for one compiled step."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak"
    m = s.compile().memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return float(total - m.alias_size_in_bytes), "XLA compiled footprint"


# ---- the matmul floor --------------------------------------------------------------------------


def step_matmuls(s: Setup) -> list[tuple[Any, Any, dict, int]]:
    """(lhs aval, rhs aval, dot_general params, times run) of every matmul of one step."""
    found: collections.Counter = collections.Counter()
    avals: dict = {}

    def walk(jaxpr: jcore.Jaxpr, times: int) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars)
                key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), repr(eqn.params))
                found[key] += times
                avals[key] = (lhs, rhs, dict(eqn.params))
            inner = (
                times * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else times
            )
            for param in eqn.params.values():
                for sub in param if isinstance(param, list | tuple) else [param]:
                    if isinstance(sub, jcore.ClosedJaxpr):
                        walk(sub.jaxpr, inner)
                    elif isinstance(sub, jcore.Jaxpr):
                        walk(sub, inner)

    walk(jax.make_jaxpr(s.step)(s.state, s.frozen, s.batch).jaxpr, 1)
    return [(*avals[k], n) for k, n in found.items()]


def matmul_floor(matmuls: list):
    """A function running ``matmuls`` (``step_matmuls``) alone, each as often as the step does,
    in one jitted program on constant operands (compiled and warmed here).

    Each repeat adds the running sum of the previous results to its left operand, so XLA can
    neither merge identical matmuls nor hoist them out of their loop; that add and the sum are
    one pass over an activation each, about 1% of a matmul's time at these shapes. The matmuls
    run one after another; inside the real step XLA's CPU runtime may overlap independent ones.
    """
    operands = {}
    for lhs, rhs, _, _ in matmuls:
        for a in (lhs, rhs):
            operands.setdefault((a.shape, str(a.dtype)), jnp.full(a.shape, 0.01, a.dtype))
    keys = list(operands)

    def program(arrays):
        arrays = dict(zip(keys, arrays))
        total = jnp.zeros((), jnp.float32)
        for lhs, rhs, params, n in matmuls:
            a, b = arrays[(lhs.shape, str(lhs.dtype))], arrays[(rhs.shape, str(rhs.dtype))]

            def one(_, acc, a=a, b=b, params=params):
                out = jax.lax.dot_general_p.bind(a + acc.astype(a.dtype), b, **params)
                return acc + 1e-30 * jnp.sum(out).astype(jnp.float32)

            total = jax.lax.fori_loop(0, n, one, total)
        return total

    f = jax.jit(program)
    args = [operands[k] for k in keys]
    f(args).block_until_ready()
    return lambda: f(args).block_until_ready()


# ---- the PyTorch side ------------------------------------------------------------------------


# HF parameter-name prefixes of each of our trainable parts.
_HF_PARTS = {
    "projector": ("language_projection.",),
    "qformer": ("qformer.",),
    "query_tokens": ("query_tokens",),
    "ln_vision": ("vision_model.post_layernorm.",),
}


def torch_step(pt_model, stage: int, host: dict, reference: Any):
    """A closure doing one HF training step (AdamW on the stage's parts); returns the loss."""
    import torch  # lazy: the library itself never needs torch

    if not hasattr(pt_model, "_bench_initial"):  # every stage starts from the same weights
        pt_model._bench_initial = {k: v.clone() for k, v in pt_model.state_dict().items()}
    pt_model.load_state_dict(pt_model._bench_initial)
    prefixes = tuple(p for part in shapes.STAGE_TRAINABLE[stage] for p in _HF_PARTS[part])
    trained = []
    for name, p in pt_model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            trained.append(p)
    opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.05)
    b = host["input_ids"].shape[0]
    q = pt_model.config.num_query_tokens
    ids = torch.cat([torch.full((b, q), reference.IMAGE_TOKEN),
                     torch.from_numpy(host["input_ids"]).long()], 1)  # fmt: skip
    mask = torch.cat([torch.ones(b, q, dtype=torch.long),
                      torch.from_numpy(host["attention_mask"]).long()], 1)  # fmt: skip
    labels = torch.cat([torch.full((b, q), IGNORE_INDEX),
                        torch.from_numpy(host["labels"]).long()], 1)  # fmt: skip
    pixels = torch.from_numpy(host["pixel_values"]).permute(0, 3, 1, 2).contiguous()

    def step() -> float:
        out = pt_model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return step


# ---- the report --------------------------------------------------------------------------------


def _seconds(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _knobs(opts: Options) -> dict:
    remat = None if opts.remat_policy in ("", "none") else opts.remat_policy
    return dict(attention_impl=opts.attention_impl, scan_layers=opts.scan_layers,
                remat_policy=remat)  # fmt: skip


def bench_stage(opts: Options, stage: int, mesh, model: VLModel, pt_model=None,
                reference: Any = None) -> dict:  # fmt: skip
    """Times one stage's step (and HF's when ``pt_model``); prints and returns the numbers."""
    cfg = model.config
    s = setup(model, opts, stage, mesh)
    compile_s, first_loss = _seconds(s.run)
    fl = flops.train_step_flops(cfg, shapes.STAGE_TRAINABLE[stage], opts.batch, opts.text_len)
    theirs = None
    if pt_model is not None:
        theirs = torch_step(pt_model, stage, make_batch(cfg, stage, opts.batch, opts.text_len),
                            reference)  # fmt: skip
        pt_first = theirs()
    floor_fn, mm = None, []
    if opts.matmul_floor:
        mm = step_matmuls(s)
        floor_fn = matmul_floor(mm)
    t_ours, t_pt, t_floor = [], [], []
    for _ in range(opts.reps):  # alternating, so a change of machine load hits every side
        t_ours.append(_seconds(s.run)[0])
        if theirs is not None:
            t_pt.append(_seconds(theirs)[0])
        if floor_fn is not None:
            t_floor.append(_seconds(floor_fn)[0])
    dev = jax.devices()[0]
    ours = statistics.median(t_ours)
    peak = shapes.peak_flops(dev, opts.precision)
    peak_src = dev.device_kind
    if peak is None:
        peak, peak_src = shapes.measured_matmul_peak(), "measured f32 matmul"
    n_dev = mesh.devices.size
    achieved = fl["total"] / ours / n_dev
    mem, mem_src = memory_report(s)
    impl = {t: resolve_implementation(getattr(cfg, t).attention_impl,
                                      dtype=jnp.dtype(getattr(cfg, t).dtype), head_dim=64,
                                      q_len=1024, kv_len=1024, kv_layout="bskd")
            for t in ("vision", "qformer", "llm")}  # fmt: skip
    r = dict(stage=stage, step_s=ours, samples_s=opts.batch / ours, tflops=achieved / 1e12,
             mfu=achieved / peak, flops=fl["total"], memory=mem, compile_s=compile_s,
             loss=first_loss)  # fmt: skip
    print(
        f"stage {stage}: batch {opts.batch}, text {opts.text_len}, {opts.precision}, attention "
        f"{impl}, loss_chunk {opts.loss_chunk}, scan {opts.scan_layers}, remat "
        f"{opts.remat_policy}; mesh {dict(mesh.shape)} of {dev.device_kind}\n"
        f"  ours (jax)   : {ours:.3f} s/step  {r['samples_s']:.2f} samples/s  "
        f"{r['tflops']:.3f} TFLOP/s per device  MFU {100 * r['mfu']:.1f}% (peak "
        f"{peak / 1e12:.2f} TFLOP/s, {peak_src}); compile+first step {compile_s:.1f} s\n"
        f"  FLOPs        : {fl['total'] / 1e9:.1f} GFLOP per step (analytic: "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in fl.items() if k != "total")
        + f")\n  memory       : {mem / GiB:.2f} GiB ({mem_src})",
        flush=True,
    )
    if theirs is not None:
        r["torch_s"] = statistics.median(t_pt)
        r["ratio"] = statistics.median(p / o for o, p in zip(t_ours, t_pt))
        print(
            f"  pytorch (HF) : {r['torch_s']:.3f} s/step\n"
            f"  speed-up     : {r['ratio']:.2f}x (median of per-pair HF/ours; >1: ours faster)\n"
            f"  first loss   : ours {first_loss:.4f}, HF {pt_first:.4f}",
            flush=True,
        )
    if floor_fn is not None:
        r["floor_s"] = statistics.median(t_floor)
        r["over_floor"] = statistics.median(o / f for o, f in zip(t_ours, t_floor))
        hf = ""
        if theirs is not None:
            hf = f", HF {statistics.median(p / f for p, f in zip(t_pt, t_floor)):.2f}x"
        print(
            f"  matmul floor : {r['floor_s']:.3f} s ({sum(m[3] for m in mm)} matmuls of the step "
            f"alone, as XLA runs them); step / floor (median per rep): ours "
            f"{r['over_floor']:.2f}x{hf}",
            flush=True,
        )
    return r


def run(opts: Options, reference: Any = None) -> list[dict]:
    """Benchmarks ``opts.stages``; ``reference`` (``tests/torch_reference.py``) builds the HF
    model for ``--compare_torch``. Returns one dict of numbers per stage."""
    if opts.threads:
        _limit_cores(opts.threads)
    if opts.compare_torch and 3 in opts.stages:
        raise ValueError("--compare_torch times stages 1 and 2 (HF has no stage-3 prompt layout)")
    if opts.compare_torch and reference is None:
        raise ValueError("--compare_torch needs the PyTorch reference module")
    for stage in opts.stages:
        if stage not in shapes.STAGE_TRAINABLE:
            raise ValueError(f"--stages: stage {stage} is not one of 1, 2, 3")
    cfg = shapes.vl_config(opts.scale, opts.llm, precision=opts.precision, **_knobs(opts))
    mesh = sharding.make_mesh(opts.mesh)
    cores = len(os.sched_getaffinity(0))
    print(
        f"{opts.scale}: {shapes.describe(cfg)}; {len(jax.devices())} {jax.default_backend()} "
        f"device(s), {cores} CPU cores for this process",
        flush=True,
    )
    pt_model = None
    if opts.compare_torch:
        import torch  # lazy: the library itself never needs torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        pt_model = reference.blip2_from_config(blip2.config_to_hf(cfg, reference.IMAGE_TOKEN))
        with tempfile.TemporaryDirectory() as tmp:
            pt_model.save_pretrained(tmp)
            knobs = _knobs(opts)
            model = load(tmp, mesh=mesh, vision=knobs, qformer=knobs, llm=knobs)
    else:
        model = random_model(cfg, mesh)
    return [bench_stage(opts, st, mesh, model, pt_model, reference) for st in opts.stages]
