"""The training loop of every stage: resume, sharded steps, logging, checkpoints, preemption."""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from vpgtrans_jax import paths, sharding
from vpgtrans_jax.data import text
from vpgtrans_jax.data.pipeline import make_global_batch
from vpgtrans_jax.errors import TrainingError
from vpgtrans_jax.train import checkpointing, optim
from vpgtrans_jax.train import workdir as workdir_lib
from vpgtrans_jax.train.builder import build_model, rules_of
from vpgtrans_jax.train.config_base import check_warmup, validate
from vpgtrans_jax.train.data_setup import build_sources, build_train_iterator
from vpgtrans_jax.train.export import export_info, export_model_dir
from vpgtrans_jax.train.metrics_writer import MetricsLogger
from vpgtrans_jax.train.step import BATCH_KEYS, TrainState, jit_train_step, make_train_step

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip, for MFU (device_kind prefixes as JAX reports them).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device: jax.Device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for prefix, value in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return value
    return None


class _StopFlag:
    """SIGTERM/SIGINT request a checkpoint and a clean exit at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signal = signum
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def total_steps(c: ml_collections.ConfigDict, num_samples: int) -> int:
    if c.num_steps > 0:
        return int(c.num_steps)
    return max(1, math.ceil(c.num_epochs * num_samples / c.batch_size))


def epoch_end_steps(c: ml_collections.ConfigDict, num_samples: int, steps: int) -> dict[int, int]:
    """``{step: k}``: the step that completes epoch ``k``, for every multiple ``k`` of
    ``config.export_every_epochs`` that the run reaches (epoch ``k`` ends once
    ``k * num_samples`` samples were drawn, rounded up to a whole step, as ``total_steps``)."""
    every = int(c.export_every_epochs)
    out: dict[int, int] = {}
    if every <= 0:
        return out
    k = every
    while (end := max(1, math.ceil(k * num_samples / c.batch_size))) <= steps:
        out[end] = k
        k += every
    return out


def epoch_export_dir(workdir: str, epoch: int) -> str:
    """Where ``train`` exports the model after ``epoch`` epochs (``config.export_every_epochs``)."""
    return paths.join(workdir, "exports", f"epoch_{epoch}")


def train(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the stage that ``c`` describes in ``workdir``; returns a summary dict.

    The workdir is locked for the run and must have been made by the same config (or one that
    differs only in ``workdir.HARMLESS`` fields): ``vpgtrans_jax/train/workdir.py``.
    """
    validate(c)
    sharding.maybe_initialize_distributed()
    workdir = workdir_lib.ensure_dir(workdir)
    with workdir_lib.lock(workdir, jax.process_index()):
        workdir_lib.check_config(
            workdir,
            c,
            is_main=jax.process_index() == 0,
            saved_steps=checkpointing.steps_on_disk(workdir),
            recorded_in_checkpoints=lambda: checkpointing.recorded_config(workdir),
        )
        if jax.process_count() > 1:  # process 0 may have moved an earlier run aside
            multihost_utils.sync_global_devices("train: workdir ready")
        return _train(c, workdir, progress)


def _train(c: ml_collections.ConfigDict, workdir: str, progress: bool) -> dict[str, Any]:
    t_start = time.time()
    is_main = jax.process_index() == 0
    rules = rules_of(c)
    mesh = sharding.make_mesh(tuple(c.mesh_shape))
    n_proc = jax.process_count()
    if c.batch_size % (n_proc * c.accum_steps):
        raise ValueError(
            f"config.batch_size={c.batch_size} must divide by processes ({n_proc}) x "
            f"accum_steps ({c.accum_steps})"
        )
    per_host_batch = c.batch_size // n_proc

    tokenizer_dir, sources = build_sources(c)
    num_samples = sum(len(s) for _, s, _ in sources)
    steps = total_steps(c, num_samples)
    check_warmup(c, steps)
    tokenizer = text.load_tokenizer(tokenizer_dir)
    pid = jax.process_index()
    data_it = build_train_iterator(c, tokenizer, sources, per_host_batch, pid, n_proc)
    epoch_ends = epoch_end_steps(c, num_samples, steps)

    model, model_source = build_model(c, mesh)
    text.check_tokenizer_fits(tokenizer, model.config.llm.vocab_size, f"config.model ({c.stage})")
    graphdef, params, frozen = optim.split_trainable(model, tuple(c.trainable))
    del model
    schedule = optim.make_schedule(
        c.optim.schedule,
        init_lr=c.optim.init_lr,
        total_steps=steps,
        warmup_steps=min(c.optim.warmup_steps, steps),
        warmup_lr=c.optim.warmup_lr,
        min_lr=c.optim.min_lr,
    )
    tx = optim.make_optimizer(
        params,
        schedule,
        weight_decay=c.optim.weight_decay,
        b1=c.optim.b1,
        b2=c.optim.b2,
        eps=c.optim.eps,
        grad_clip_norm=c.optim.grad_clip_norm or None,
        lr_multipliers=dict(c.optim.lr_multipliers),
    )
    abstract_state = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    state_sh = sharding.state_shardings(abstract_state, mesh, rules)
    frozen_sh = sharding.state_shardings(frozen, mesh, rules)
    state = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=state_sh)(params)
    del params

    ckpt = checkpointing.Checkpointer(
        workdir,
        every_steps=c.checkpoint_every,
        max_to_keep=c.keep_checkpoints,
        async_save=c.async_checkpoint,
    )
    start_step = 0
    restored = ckpt.restore(checkpointing.abstract_with_shardings(abstract_state, state_sh))
    if restored is not None:
        state, data_state, _, start_step = restored
        if data_state is not None:
            data_it.set_state(data_state)
        log.info("resumed from step %d in %s", start_step, ckpt.directory)

    step_fn = jit_train_step(
        make_train_step(graphdef, tx, accum_steps=c.accum_steps, loss_chunk=c.loss_chunk),
        mesh,
        state_sh,
        frozen_sh,
        rules,
    )
    meta = {"config": config_json(c), "model_source": model_source}
    logger = MetricsLogger(workdir, enabled=is_main)
    n_params = {
        "trainable": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "frozen": int(sum(np.prod(x.shape) for x in jax.tree.leaves(frozen))),
    }
    log.info("params: %s; %d steps of global batch %d", n_params, steps, c.batch_size)

    flops_per_step: float | None = None
    peak = peak_flops(jax.devices()[0])
    bar = None
    if progress and is_main:
        bar = tqdm(total=steps, initial=start_step, desc=f"{c.stage}", dynamic_ncols=True)

    step = start_step
    window: list[dict[str, float]] = []
    t_window = time.time()
    last_metrics: dict[str, float] = {}
    stopped_by = None
    with _StopFlag() as stop:
        while step < steps:
            host_batch = next(data_it)
            batch = {
                k: v for k, v in make_global_batch(host_batch, mesh).items() if k in BATCH_KEYS
            }
            if flops_per_step is None:
                flops_per_step = _step_flops(step_fn, state, frozen, batch)
            state, metrics = step_fn(state, frozen, batch)
            step += 1
            window.append(metrics)
            if int(state.bad_steps) >= c.max_bad_steps:
                ckpt.wait()
                raise TrainingError(
                    f"{int(state.bad_steps)} consecutive steps had a non-finite loss or gradient "
                    f"(config.max_bad_steps={c.max_bad_steps}); last loss "
                    f"{float(metrics['loss'])}. Lower the LR or check the data; the last good "
                    f"checkpoint is in {ckpt.directory}"
                )
            # Epoch exports, except one that the final export would duplicate.
            if step in epoch_ends and not (step == steps and c.export_final):
                on_host = _model_on_host(graphdef, state.params, frozen, n_proc)  # collective
            if step in epoch_ends and is_main and not (step == steps and c.export_final):
                export_model_dir(
                    on_host,
                    epoch_export_dir(workdir, epoch_ends[step]),
                    pretrained_path=model_source.get("path"),
                    created_by=f"scripts/train.py (stage {c.stage}, epoch {epoch_ends[step]}, "
                    f"step {step})",
                    info={"epoch": epoch_ends[step], "step": step, **export_info(c)},
                )
            stop_signal = _agreed_stop(stop.signal, n_proc)
            if step % c.log_every == 0 or step == steps or stop_signal:
                # A stop flushes its partial window, so the rows of an interrupted run and of
                # its resume together cover every step once (window_steps says how many).
                dt = time.time() - t_window
                last_metrics = _summarise(
                    window, dt, c.batch_size, schedule(int(state.step)), flops_per_step, peak
                )
                last_metrics.update(data_it.metrics(), skipped_steps=int(state.skipped_steps))
                logger.write(step, last_metrics)
                window, t_window = [], time.time()
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{last_metrics['loss']:.4f}",
                        lr=f"{last_metrics['lr']:.2e}",
                        sps=f"{last_metrics['samples_per_s']:.1f}",
                    )
            if bar is not None:
                bar.update(1)
            if ckpt.should_save(step):  # the data state is only gathered when it is saved
                ckpt.save(step, state, data_it.get_state(), meta)
            if stop_signal:
                stopped_by = signal.Signals(stop_signal).name
                break
    ckpt.save(step, state, data_it.get_state(), meta, force=True)
    ckpt.wait()
    if bar is not None:
        bar.close()
    if step > 0 and int(state.skipped_steps) >= step:
        raise TrainingError(
            f"all {step} steps were skipped: every loss or gradient was non-finite (NaN/inf), "
            f"so nothing was learned; lower the LR or check the data (checkpoints in "
            f"{ckpt.directory})"
        )
    export_dir = None
    if stopped_by is None and c.export_final:
        on_host = _model_on_host(graphdef, state.params, frozen, n_proc)  # collective
    if stopped_by is None and c.export_final and is_main:
        export_dir = export_model_dir(
            on_host,
            paths.join(workdir, "export"),
            pretrained_path=model_source.get("path"),
            created_by=f"scripts/train.py (stage {c.stage}, step {step})",
            info=export_info(c),
        )
    summary = {
        "stage": c.stage,
        "steps": step,
        "total_steps": steps,
        "samples": step * c.batch_size,
        "final_loss": last_metrics.get("loss"),
        "skipped_steps": int(state.skipped_steps),
        "wall_time_s": time.time() - t_start,
        "flops_per_step": flops_per_step,
        "stopped_by": stopped_by,
        "export": export_dir,
        "params": n_params,
        "dataset_size": num_samples,
        # epoch -> step and model directory ("export/" when the epoch ends with the run).
        "epoch_exports": {
            str(k): {
                "step": end,
                "path": export_dir
                if end == steps and c.export_final
                else epoch_export_dir(workdir, k),
            }
            for end, k in epoch_ends.items()
            if end <= step
        },
    }
    logger.close()
    ckpt.close()
    data_it.close()
    if is_main:
        print(
            f"[{c.stage}] {'stopped by ' + stopped_by + ' at' if stopped_by else 'done:'} "
            f"step {step}/{steps}, loss {summary['final_loss']}, "
            f"{summary['wall_time_s']:.1f}s, checkpoints in {ckpt.directory}"
            + (f", export in {export_dir}" if export_dir else "")
        )
    else:  # each worker's log says where it stopped (all stop at the same step)
        print(f"[{c.stage}] process {pid}/{n_proc}: {stopped_by or 'done'} at step {step}/{steps}")
    return summary


def _model_on_host(graphdef, params, frozen, n_proc: int) -> nnx.Module:
    """The model to export. With several processes its arrays span them (process 0 cannot read
    the other shards), so every process joins an all-gather to host memory first."""
    if n_proc > 1:
        params, frozen = multihost_utils.process_allgather((params, frozen), tiled=True)
    return nnx.merge(graphdef, params, frozen)


def _agreed_stop(local_signal: int | None, n_proc: int) -> int:
    """The stop request all processes act on after this step: a signal that reached any of them
    (a preempted pod worker, a Ctrl-C on one host) stops every process at the same step, so they
    save one checkpoint together. 0 = go on. One tiny host all-gather per step with several
    processes; none with one."""
    if n_proc == 1:
        return int(local_signal or 0)
    signals = multihost_utils.process_allgather(np.int32(local_signal or 0))
    return int(np.max(signals))


def _step_flops(step_fn, state, frozen, batch) -> float | None:
    """FLOPs of one step from XLA's cost analysis of the (unpartitioned) lowered program."""
    try:
        cost = step_fn.lower(state, frozen, batch).cost_analysis()
    except Exception as e:  # noqa: BLE001 - cost analysis is best-effort reporting only
        log.info("cost analysis unavailable: %s", e)
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def _summarise(window, dt, batch_size, lr, flops_per_step, peak) -> dict[str, float]:
    losses = np.array([float(m["loss"]) for m in window])
    finite = np.isfinite(losses)
    out = {
        "loss": float(losses[finite].mean()) if finite.any() else float("nan"),
        # The window's size: a mean over these steps (the first window after a resume, and the
        # last one of a stopped run, hold fewer than log_every), and over loss_steps of them for
        # the loss (the finite ones), so curves of several runs join exactly.
        "window_steps": len(window),
        "loss_steps": int(finite.sum()),
        "grad_norm": float(np.mean([float(m["grad_norm"]) for m in window])),
        "lr": float(lr),
        "samples_per_s": len(window) * batch_size / max(dt, 1e-9),
        "steps_per_s": len(window) / max(dt, 1e-9),
    }
    if flops_per_step:
        achieved = flops_per_step * out["steps_per_s"]
        out["tflops_per_s"] = achieved / 1e12
        if peak:
            out["mfu"] = achieved / (peak * jax.device_count())
    return out


def config_json(c: ml_collections.ConfigDict) -> str:
    """The config as JSON (for checkpoint metadata); ``str`` if something is not serialisable."""
    try:
        return c.to_json()
    except (TypeError, ValueError):
        return str(c)
