"""Beam-search speed: our jitted KV-cache decoding vs PyTorch ``Blip2...generate``.

Both run the same random BLIP-2 (tiny ViT/Q-Former, a small but not trivial OPT or LLaMA) with
the same settings on CPU. ``min_new_tokens = max_new_tokens`` forbids EOS, so both decode exactly
``max_new_tokens`` steps and the token ids must agree (checked). Our time excludes compilation
(one warm-up call); both report the median of ``--reps`` runs.

    python scripts/bench_generate.py                 # OPT, batch 4, 5 beams, 30 new tokens
    python scripts/bench_generate.py --llm llama --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _text_kw(args) -> dict:
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


def _timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--llm", choices=("opt", "llama"), default="opt")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--max_new_tokens", type=int, default=30)
    p.add_argument("--prompt_len", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for both: torch intra-op threads; XLA runs single-threaded when 1 "
        "(default 1: a fair, low-noise comparison on a shared machine)",
    )
    args = p.parse_args(argv)
    if args.threads == 1:  # must be set before JAX initialises its CPU backend
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()

    import jax
    import numpy as np
    import torch

    import vpgtrans_jax
    from vpgtrans_jax import torch_reference as F

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(args.threads)
    pt_model = F.tiny_blip2(args.llm, seed=0, **_text_kw(args))
    with tempfile.TemporaryDirectory() as tmp:
        pt_model.save_pretrained(tmp)
        model = vpgtrans_jax.load(tmp)
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
        return np.asarray(model.generate(pixels, ids, mask, **kw))  # np.asarray waits for it

    q = F.NUM_QUERY
    pt_ids = torch.cat(
        [torch.full((args.batch, q), F.IMAGE_TOKEN), torch.from_numpy(ids).long()], 1
    )
    pt_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)

    def theirs():
        with torch.no_grad():
            out = pt_model.generate(pixel_values=pt_pixels, input_ids=pt_ids, **kw)
        return out[:, pt_ids.shape[1] :].numpy()

    start = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - start
    t_ours, out_ours = _timed(ours, args.reps)
    t_pt, out_pt = _timed(theirs, args.reps)
    same = out_pt.shape == out_ours.shape and bool((out_pt == out_ours).all())
    tokens = args.batch * args.max_new_tokens
    print(
        f"{args.llm}: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch "
        f"{args.batch}, {args.beams} beams, {args.max_new_tokens} new tokens; "
        f"{os.cpu_count()} CPU cores, torch threads {args.threads}"
    )
    print(
        f"  ours (jax)   : {tokens / t_ours:8.1f} tokens/s  ({t_ours:.3f} s; "
        f"compile {compile_s:.1f} s)"
    )
    print(f"  pytorch (HF) : {tokens / t_pt:8.1f} tokens/s  ({t_pt:.3f} s)")
    print(f"  speed-up     : {t_pt / t_ours:.2f}x   same token ids: {same}")


if __name__ == "__main__":
    main()
