"""Beam-search speed: our jitted KV-cache decoding vs PyTorch ``Blip2...generate`` on the same
random BLIP-2, with identical token ids checked, and each shape's matmul floor and ceiling
(method: ``vpgtrans_jax/bench/generate.py``; figures: docs/evaluation.md).

    python scripts/bench_generate.py                 # OPT, batch 4, 5 beams, 30 new tokens
    python scripts/bench_generate.py --llm llama --threads 2
    python scripts/bench_generate.py --sweep         # a table over LLM sizes and batch sizes
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from tests import torch_reference  # noqa: E402
from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench.generate import Options, run  # noqa: E402

_D = Options()
_LLM = flags.DEFINE_enum("llm", _D.llm, ["opt", "llama"], "LLM family")
_BATCH = flags.DEFINE_integer("batch", _D.batch, "prompts per call")
_BEAMS = flags.DEFINE_integer("beams", _D.beams, "beam size")
_NEW = flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "tokens generated per prompt")
_PROMPT = flags.DEFINE_integer("prompt_len", _D.prompt_len, "prompt tokens")
_HIDDEN = flags.DEFINE_integer("hidden", _D.hidden, "LLM width")
_LAYERS = flags.DEFINE_integer("layers", _D.layers, "LLM layers")
_VOCAB = flags.DEFINE_integer("vocab", _D.vocab, "LLM vocabulary")
_REPS = flags.DEFINE_integer("reps", _D.reps, "timed runs per side")
_SWEEP = flags.DEFINE_bool("sweep", False, "time every (hidden, layers, vocab, batch) of SWEEP")
_THREADS = flags.DEFINE_integer(
    "threads", _D.threads, "CPU cores for both sides (the process is pinned to that many)"
)


def main(argv: list[str]) -> None:
    opts = Options(llm=_LLM.value, batch=_BATCH.value, beams=_BEAMS.value,
                   max_new_tokens=_NEW.value, prompt_len=_PROMPT.value, hidden=_HIDDEN.value,
                   layers=_LAYERS.value, vocab=_VOCAB.value, reps=_REPS.value,
                   sweep=_SWEEP.value, threads=_THREADS.value)  # fmt: skip
    run(opts, torch_reference)


if __name__ == "__main__":
    cli.run(main)
