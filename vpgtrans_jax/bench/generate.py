"""Beam-search speed: our jitted KV-cache decoding vs PyTorch ``Blip2...generate``.

Both run the same random BLIP-2 (tiny ViT/Q-Former, a small but not trivial OPT or LLaMA) with
the same settings on CPU. ``min_new_tokens = max_new_tokens`` forbids EOS, so both decode exactly
``max_new_tokens`` steps and the token ids must agree (checked). Our time excludes compilation
(one warm-up call). The two alternate, so a change in machine load hits both, and each timed
call follows an untimed call of the same kind (steady state, as in an evaluation loop); the
report gives each one's median over ``--reps`` runs and the median of the per-pair ratios.
``--threads N`` pins the process to N cores, so XLA's thread pool and torch get the same ones.

Each shape also times the *matmul floor*: a loop of only the LLM's weight matmuls for the same
rows. HF's time over the floor ("ceiling") bounds what any decoder built on XLA's matmuls could
gain on this machine.

*Decode step*: our time per decoding step without the prefill, ``(call with max_new_tokens
tokens - call with 1 token) / (max_new_tokens - 1)``. Both calls prefill the same prompts and
pick the first token, so the difference is exactly ``max_new_tokens - 1`` loop iterations (one
decoder step and one beam-search step each). Each run times the two calls and the floor back to
back; the report gives the median step and the median of the per-run step / floor ratios.

    python scripts/bench_generate.py                 # OPT, batch 4, 5 beams, 30 new tokens
    python scripts/bench_generate.py --llm llama --threads 2
    python scripts/bench_generate.py --sweep         # a table over LLM sizes and batch sizes
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vpgtrans_jax.checkpoint.load import load
from vpgtrans_jax.generation import generate
from vpgtrans_jax.nn.layers import Dense


@dataclasses.dataclass(frozen=True)
class Options:
    """What to time (the defaults are ``scripts/bench_generate.py``'s)."""

    llm: str = "opt"
    batch: int = 4
    beams: int = 5
    max_new_tokens: int = 30
    prompt_len: int = 8
    hidden: int = 256
    layers: int = 4
    vocab: int = 8192
    reps: int = 5
    sweep: bool = False
    threads: int = 1


def _text_kw(args: Options) -> dict:
    common = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        max_position_embeddings=256,
    )
    if args.llm == "opt":
        return dict(common, ffn_dim=4 * args.hidden, word_embed_proj_dim=args.hidden)
    return dict(common, intermediate_size=4 * args.hidden, num_key_value_heads=args.hidden // 64)


# (hidden, layers, vocab, batch) rows of --sweep; the third is the default.
SWEEP = (
    (64, 2, 1024, 4),
    (128, 2, 4096, 4),
    (256, 4, 8192, 4),
    (256, 4, 8192, 1),
    (256, 4, 8192, 16),
    (512, 6, 16384, 4),
)


def _limit_cores(threads: int) -> None:
    """Runs this process (torch and XLA alike) on ``threads`` CPU cores.

    XLA sizes its CPU thread pool from the cores this process may use and splits large fusions
    across it; only an affinity mask, set before JAX starts its CPU backend, holds it to the
    same cores torch gets.
    """
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise ValueError(f"--threads {threads}: this process may use only {len(cores)} cores")
    os.sched_setaffinity(0, cores[:threads])


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def matmul_floor_loop(model, rows: int, steps: int):
    """A callable that runs ``steps`` steps of only the LLM's weight matmuls for ``rows`` rows.

    Every Dense kernel of the decoder layers in order, then the output head (as ``logits``
    computes it), with nothing else: what one decoding step cannot go below on this machine with
    XLA's fp32 matmuls, whatever the rest of the step costs. Compiled and run once here.
    """
    llm = model.llm
    kernels = [m.kernel[...] for _, m in nnx.iter_graph(llm.layers) if isinstance(m, Dense)]
    width = model.config.llm.input_embed_dim

    def fit(a, n):  # columns sliced or zero-padded to n
        return a[:, :n] if a.shape[1] >= n else jnp.pad(a, ((0, 0), (0, n - a.shape[1])))

    def body(_, x):
        h = x
        for w in kernels:
            h = jnp.dot(fit(h, w.shape[0]), w)
        logits = llm.logits(fit(h, width)[:, None, :])[:, 0]
        return x + 1e-6 * fit(logits, x.shape[1])  # keeps every step dependent on the last

    loop = jax.jit(lambda x: jax.lax.fori_loop(0, steps, body, x))
    x = jnp.ones((rows, kernels[0].shape[0]), jnp.float32)

    def run() -> None:
        loop(x).block_until_ready()

    run()
    return run


def decode_step_seconds(
    full, one, floor, steps: int, reps: int
) -> tuple[float, float, float, list[Any]]:
    """Times one decoding step without the prefill, next to the matmul floor.

    Args:
      full: a call that generates ``steps`` tokens (``steps >= 2``); one: the same call with 1.
      floor: a call that runs ``steps`` matmul-floor steps (``matmul_floor_loop``).
      reps: runs; each times ``full``, ``one`` and ``floor`` back to back, every timed call right
        after an untimed one of the same kind (steady state).

    Returns:
      (median seconds per decode step, median seconds per floor step, median of the per-run
      ratios decode step / floor step, the outputs of the last ``full`` call).
    """
    if steps < 2:
        raise ValueError(f"a decode-step time needs max_new_tokens >= 2, got {steps}")
    step, fl, ratio, out = [], [], [], None
    for _ in range(reps):
        full()
        t_full, out = _seconds(full)
        one()
        t_one, _ = _seconds(one)
        floor()
        t_floor, _ = _seconds(floor)
        step.append((t_full - t_one) / (steps - 1))
        fl.append(t_floor / steps)
        ratio.append(step[-1] / fl[-1])
    return statistics.median(step), statistics.median(fl), statistics.median(ratio), out


def _compare(args: Options, F: Any) -> dict:
    """Builds one model pair and times both; returns the measured numbers."""
    import torch  # lazy: the library itself never needs torch

    pt_model = F.tiny_blip2(args.llm, seed=0, **_text_kw(args))
    with tempfile.TemporaryDirectory() as tmp:
        pt_model.save_pretrained(tmp)
        model = load(tmp)
    pixels, ids, _ = F.inputs(batch=args.batch, text_len=args.prompt_len, vocab=args.vocab)
    mask = np.ones_like(ids)
    kw = dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens,
        num_beams=args.beams,
        eos_token_id=2,
        pad_token_id=1,
    )

    def ours():
        return np.asarray(generate(model, pixels, ids, mask, **kw))  # np.asarray waits for it

    one_kw = dict(kw, max_new_tokens=1, min_new_tokens=1)

    def ours_one():
        return np.asarray(generate(model, pixels, ids, mask, **one_kw))

    q = F.NUM_QUERY
    pt_ids = torch.cat(
        [torch.full((args.batch, q), F.IMAGE_TOKEN), torch.from_numpy(ids).long()], 1
    )
    pt_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)

    def theirs():
        with torch.no_grad():
            out = pt_model.generate(pixel_values=pt_pixels, input_ids=pt_ids, **kw)
        return out[:, pt_ids.shape[1] :].numpy()

    compile_s, _ = _seconds(ours)
    t_ours, t_pt = [], []
    for _ in range(args.reps):
        # Each timed call directly follows an untimed one of the same kind: both sides are timed
        # in steady state (warm caches; this VM's cores also slow down when briefly idle).
        ours()
        t, out_ours = _seconds(ours)
        t_ours.append(t)
        theirs()
        t, out_pt = _seconds(theirs)
        t_pt.append(t)
    same = out_pt.shape == out_ours.shape and bool((out_pt == out_ours).all())
    steps = args.max_new_tokens
    floor_loop = matmul_floor_loop(model, args.batch * args.beams, steps)
    step, floor, step_ratio = float("nan"), float("nan"), float("nan")
    if steps >= 2:
        ours_one()  # compiles
        step, floor, step_ratio, _ = decode_step_seconds(
            ours, ours_one, floor_loop, steps, args.reps
        )
    else:
        floor = statistics.median(_seconds(floor_loop)[0] for _ in range(args.reps)) / steps
    return dict(
        floor=floor,
        step=step,
        step_ratio=step_ratio,
        ours=statistics.median(t_ours),
        theirs=statistics.median(t_pt),
        ratio=statistics.median(p / o for o, p in zip(t_ours, t_pt)),
        compile=compile_s,
        same=same,
        tokens=args.batch * args.max_new_tokens,
    )


def run(opts: Options, reference: Any) -> list[dict]:
    """Times every shape (one, or ``SWEEP``) and prints the report; returns the measurements.

    ``reference`` builds the PyTorch side: a module with ``tiny_blip2``, ``inputs``,
    ``NUM_QUERY`` and ``IMAGE_TOKEN`` (``tests/torch_reference.py``).
    """
    import torch  # lazy: the library itself never needs torch

    _limit_cores(opts.threads)
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(opts.threads)
    shapes = SWEEP if opts.sweep else ((opts.hidden, opts.layers, opts.vocab, opts.batch),)
    print(
        f"{opts.llm}, {opts.beams} beams, {opts.max_new_tokens} new tokens, {opts.reps} runs "
        f"each; {os.cpu_count()} CPU cores, threads {opts.threads}"
    )
    rows, results = [], []
    for hidden, layers, vocab, batch in shapes:
        shape_opts = dataclasses.replace(opts, hidden=hidden, layers=layers, vocab=vocab,
                                         batch=batch)  # fmt: skip
        r = _compare(shape_opts, reference)
        results.append({"hidden": hidden, "layers": layers, "vocab": vocab, "batch": batch, **r})
        steps = opts.max_new_tokens
        # No decoder built on XLA's fp32 matmuls can beat HF by more than this here.
        ceiling = r["theirs"] / (r["floor"] * steps)
        rows.append(
            f"| {hidden} | {layers} | {vocab} | {batch} | {r['tokens'] / r['ours']:.0f} | "
            f"{r['tokens'] / r['theirs']:.0f} | {1e3 * r['ours'] / steps:.1f} | "
            f"{1e3 * r['theirs'] / steps:.1f} | {1e3 * r['floor']:.1f} | {1e3 * r['step']:.2f} | "
            f"{r['step_ratio']:.2f}x | {r['ratio']:.2f}x | {ceiling:.1f}x | {r['same']} |"
        )
        print(
            f"hidden {hidden}, {layers} layers, vocab {vocab}; batch {batch}\n"
            f"  ours (jax)   : {r['tokens'] / r['ours']:8.1f} tokens/s  ({r['ours']:.3f} s; "
            f"compile {r['compile']:.1f} s)\n"
            f"  pytorch (HF) : {r['tokens'] / r['theirs']:8.1f} tokens/s  ({r['theirs']:.3f} s)\n"
            f"  speed-up     : {r['ratio']:.2f}x   same token ids: {r['same']}\n"
            f"  matmul floor : {1e3 * r['floor']:.2f} ms/step (the LLM's weight matmuls alone)\n"
            f"  decode step  : {1e3 * r['step']:.2f} ms (prefill excluded)   "
            f"decode step / floor: {r['step_ratio']:.2f}x\n"
            f"  ceiling      : {ceiling:.1f}x (HF time / floor: the most a decoder built on these "
            "matmuls could gain)",
            flush=True,
        )
    if opts.sweep:
        print(
            "\n| hidden | layers | vocab | batch | ours tok/s | HF tok/s | ours ms/step "
            "| HF ms/step | matmul floor ms/step | decode step ms | decode step / floor "
            "| speed-up | ceiling | same ids |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        print("\n".join(rows))
    return results
