"""Checks vpgtrans-jax against PyTorch on a BLIP-2 checkpoint directory.

With no --hf_dir, builds a tiny random Hugging Face BLIP-2 (offline), saves it, loads it with
``vpgtrans_jax.load`` and compares the text logits with ``Blip2ForConditionalGeneration``.

  python scripts/check_parity.py                    # tiny OPT- and LLaMA-based models
  python scripts/check_parity.py --hf_dir DIR       # your own HF BLIP-2 directory (fp32 compare)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hf_dir", help="HF BLIP-2 directory (default: build tiny random ones)")
    parser.add_argument(
        "--llm",
        choices=["opt", "llama", "both"],
        default="both",
        help="text model of the tiny random BLIP-2 (ignored with --hf_dir)",
    )
    parser.add_argument("--batch", type=int, default=2, help="batch size of the random inputs")
    parser.add_argument("--text_len", type=int, default=8, help="text length of the random inputs")
    parser.add_argument("--scan_layers", action="store_true", help="load with scanned layers")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max abs logit difference allowed"
    )
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import torch
    import transformers

    import vpgtrans_jax
    from vpgtrans_jax import torch_reference as ref

    jax.config.update("jax_default_matmul_precision", "highest")
    cases = []
    if args.hf_dir:
        pt = transformers.Blip2ForConditionalGeneration.from_pretrained(
            args.hf_dir, dtype=torch.float32
        )
        cases.append((args.hf_dir, pt.eval(), args.hf_dir))
    else:
        tmp = tempfile.mkdtemp(prefix="vpgtrans_parity_")
        for llm in ["opt", "llama"] if args.llm == "both" else [args.llm]:
            pt = ref.tiny_blip2(llm)
            path = os.path.join(tmp, llm)
            pt.save_pretrained(path)
            cases.append((f"tiny random BLIP-2 ({llm})", pt, path))

    ok = True
    for name, pt, path in cases:
        t0 = time.perf_counter()
        model = vpgtrans_jax.load(path, scan_layers=args.scan_layers)
        t_load = time.perf_counter() - t0
        vcfg = pt.config.vision_config
        pixels, ids, mask = ref.inputs(
            batch=args.batch,
            text_len=args.text_len,
            vocab=pt.config.text_config.vocab_size,
            image=vcfg.image_size,
            avoid=pt.config.image_token_index,
        )
        ours = np.asarray(model(pixels, ids, mask))
        theirs = ref.torch_logits(pt, pixels, ids, mask)[:, pt.config.num_query_tokens :]
        diff = float(np.abs(ours - theirs).max())
        passed = diff <= args.tolerance
        ok &= passed
        print(
            f"{name}: logits {ours.shape}, max |jax - torch| = {diff:.2e} "
            f"({'OK' if passed else 'FAIL'}), load {t_load:.1f}s"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
