"""One training step of stage 1/2/3 at benchmark shapes: step time, samples/s, TFLOP/s, MFU, peak
memory; ``--compare_torch`` times HF PyTorch BLIP-2 on the same weights for a ratio, and
``--matmul_floor`` the step's matmuls alone (method: ``vpgtrans_jax/bench/train.py``; figures:
docs/performance.md).

    python scripts/bench_train.py --compare_torch --matmul_floor  # ViT-B + Q-Former + OPT-125m
    python scripts/bench_train.py --scale real --llm llama --precision bf16 --batch 32 --stages 2
    python scripts/bench_train.py --scale tiny --stages 1,2,3      # a quick end-to-end check
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench import shapes  # noqa: E402
from vpgtrans_jax.bench.train import Options, run  # noqa: E402

_D = Options()
_STAGES = flags.DEFINE_list("stages", [str(s) for s in _D.stages], "stages to time (1, 2, 3)")
_SCALE = flags.DEFINE_enum("scale", _D.scale, list(shapes.SCALES), "model shapes")
_LLM = flags.DEFINE_enum("llm", _D.llm, ["opt", "llama"], "LLM family")
_BATCH = flags.DEFINE_integer("batch", _D.batch, "global batch")
_TEXT = flags.DEFINE_integer("text_len", _D.text_len, "text tokens per sample")
_PREC = flags.DEFINE_enum("precision", _D.precision, ["fp32", "bf16"], "bf16: frozen towers bf16")
_ATTN = flags.DEFINE_string("attention_impl", _D.attention_impl, "einsum|xla|cudnn|pallas|auto")
_CHUNK = flags.DEFINE_integer("loss_chunk", _D.loss_chunk, "loss positions per chunk (0: whole)")
_SCAN = flags.DEFINE_bool("scan_layers", _D.scan_layers, "scan the layer stacks")
_REMAT = flags.DEFINE_string("remat_policy", _D.remat_policy, "jax.checkpoint_policies name")
_MESH = flags.DEFINE_list("mesh", [str(s) for s in _D.mesh], "data,fsdp,tensor (one -1)")
_REPS = flags.DEFINE_integer("reps", _D.reps, "timed steps per side")
_TORCH = flags.DEFINE_bool("compare_torch", False, "also time HF PyTorch (stages 1, 2)")
_FLOOR = flags.DEFINE_bool("matmul_floor", False, "also time the step's matmuls alone")
_THREADS = flags.DEFINE_integer("threads", 0, "pin the process to this many cores (0: all)")


def main(argv: list[str]) -> None:
    reference = None
    if _TORCH.value:
        from tests import torch_reference as reference  # lazy: torch only for --compare_torch
    opts = Options(stages=tuple(int(s) for s in _STAGES.value), scale=_SCALE.value,
                   llm=_LLM.value, batch=_BATCH.value, text_len=_TEXT.value,
                   precision=_PREC.value, attention_impl=_ATTN.value, loss_chunk=_CHUNK.value,
                   scan_layers=_SCAN.value, remat_policy=_REMAT.value,
                   mesh=tuple(int(m) for m in _MESH.value), reps=_REPS.value,
                   compare_torch=_TORCH.value, matmul_floor=_FLOOR.value,
                   threads=_THREADS.value)  # fmt: skip
    run(opts, reference)


if __name__ == "__main__":
    cli.run(main)
