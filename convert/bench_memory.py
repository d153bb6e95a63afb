"""Peak resident memory of ``hf_to_orbax.py`` on a generated random OPT-1.3B-shaped checkpoint.

Writes a random fp16 ``OPTForCausalLM`` directory (3 safetensors shards + index) under ``--work``,
converts it in a child process and prints the child's peak RSS next to the largest shard. Nothing
is downloaded; delete ``--work`` afterwards (several GB).

  python convert/bench_memory.py --work /tmp/bench_memory [--dtype bfloat16] [--extra=--scan-layers]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench.memory import run  # noqa: E402

_WORK = flags.DEFINE_string("work", None, "scratch directory (needs ~8 GB free)")
_DTYPE = flags.DEFINE_string("dtype", "float32", "--dtype passed to hf_to_orbax.py")
_EXTRA = flags.DEFINE_multi_string("extra", [], "a further hf_to_orbax.py flag (repeatable)")
flags.mark_flag_as_required("work")


def main(argv: list[str]) -> None:
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_to_orbax.py")
    run(_WORK.value, tool, _DTYPE.value, tuple(_EXTRA.value))


if __name__ == "__main__":
    cli.run(main)
