"""The ready device check (``scripts/device_check.sh``): stage-1 and stage-2 steps at ViT-g +
LLaMA-7B shapes in bf16 with the platform's best attention kernel, at the largest batch that
fits, and greedy decoding tokens/s at batch 1 and 32; one row (with the chip's name) appended
to docs/performance.md. ``--scale tiny`` runs the same path on CPU in seconds.

Decoding speed is the rate of the decode steps alone: two generations of different lengths are
timed (after a compile; median of 3) and the difference is divided into the extra tokens, so the
prefill and the dispatch cost cancel (where the difference drowns in noise, as at tiny scale,
the whole call's rate is reported).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import time

import jax
import numpy as np

from vpgtrans_jax import sharding
from vpgtrans_jax.bench import shapes
from vpgtrans_jax.bench import train as bench_train
from vpgtrans_jax.generation import generate

TABLE_HEADER = (
    "| date | device | scale | stage 1: batch, s/step, MFU | stage 2: batch, s/step, MFU "
    "| peak memory GiB | decode tok/s batch 1 | decode tok/s batch 32 |\n"
    "|---|---|---|---|---|---|---|---|"
)
MARKER = "<!-- device-check rows -->"


def _out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def fit_stage(opts: bench_train.Options, stage: int, mesh, model, batches) -> dict | None:
    """``bench_train.bench_stage`` at the first of ``batches`` that fits in memory."""
    for b in batches:
        try:
            return bench_train.bench_stage(dataclasses.replace(opts, batch=b), stage, mesh, model)
        except Exception as e:  # noqa: BLE001 - an OOM means: try the next, smaller batch
            if not _out_of_memory(e):
                raise
            print(f"stage {stage}: batch {b} does not fit; trying a smaller one", flush=True)
    return None


def decode_rate(model, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Greedy decode steps' tokens/s at ``batch`` rows (module docstring)."""
    rng = np.random.default_rng(0)
    size = model.config.vision.image_size
    pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    ids = rng.integers(4, model.config.llm.vocab_size, (batch, prompt_len)).astype(np.int32)
    kw = dict(eos_token_id=2, pad_token_id=1)

    def timed(n: int) -> float:
        run = lambda: np.asarray(generate(model, pixels, ids, max_new_tokens=n,
                                          min_new_tokens=n, **kw))  # fmt: skip
        run()  # compile
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    short, long = timed(new_tokens // 4), timed(new_tokens)
    extra = new_tokens - new_tokens // 4
    if long <= 1.05 * short:  # too small to separate from the prefill: the whole call's rate
        return batch * new_tokens / long
    return batch * extra / (long - short)


def check(scale: str, out_md: str, batches: tuple[int, ...], new_tokens: int = 64) -> dict:
    """Runs the check and appends its row to ``out_md``; returns the numbers."""
    opts = bench_train.Options(scale=scale, llm="llama", precision="bf16",
                               attention_impl="auto", scan_layers=True, reps=2)  # fmt: skip
    cfg = shapes.vl_config(scale, "llama", precision="bf16", attention_impl="auto",
                           scan_layers=True)  # fmt: skip
    mesh = sharding.make_mesh((-1, 1, 1))
    model = bench_train.random_model(cfg, mesh)
    dev = jax.devices()[0]
    print(f"device check: {dev.device_kind}, {shapes.describe(cfg)}", flush=True)
    stages = {st: fit_stage(opts, st, mesh, model, batches) for st in (1, 2)}
    decode = {b: decode_rate(model, b, 16, new_tokens) for b in (1, 32)}
    for b, rate in decode.items():
        print(f"decode: batch {b}: {rate:.1f} tokens/s", flush=True)

    def cell(r):
        if r is None:
            return "no batch fits"
        batch = round(r["samples_s"] * r["step_s"])
        return f"{batch}, {r['step_s']:.3f}, {100 * r['mfu']:.1f}%"

    mem = max((r["memory"] for r in stages.values() if r), default=0.0) / 2**30
    row = (
        f"| {datetime.date.today()} | {dev.device_kind} ({len(jax.devices())}x) | {scale} | "
        f"{cell(stages[1])} | {cell(stages[2])} | {mem:.1f} | {decode[1]:.1f} | "
        f"{decode[32]:.1f} |"
    )
    append_row(out_md, row)
    print(f"appended to {out_md}:\n{row}", flush=True)
    return {"stages": stages, "decode": decode, "row": row}


def append_row(path: str, row: str) -> None:
    """Adds ``row`` under the device-check table of ``path`` (the table is created if absent)."""
    text = open(path).read() if os.path.exists(path) else ""
    if MARKER not in text:
        text = text.rstrip("\n") + f"\n\n## Device check results\n\n{TABLE_HEADER}\n{MARKER}\n"
    text = text.replace(MARKER, f"{row}\n{MARKER}", 1)
    with open(path, "w") as f:
        f.write(text)
