"""Per-device memory of the stage-2 step at real shapes on N devices, from XLA's memory analysis
of the compiled (never run) step, for each remat policy and mesh layout, and the chips it fits
(method: ``vpgtrans_jax/bench/plan.py``; table: docs/performance.md).

    python scripts/plan_memory.py --devices 8                      # LLaMA-7B, extrapolated depth
    python scripts/plan_memory.py --devices 16 --llm opt --layers real
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _devices_flag() -> None:
    """N host devices for the compile, set before JAX starts (``--devices N``, default 8)."""
    n = "8"
    for i, a in enumerate(sys.argv):
        if a.startswith("--devices="):
            n = a.split("=", 1)[1]
        elif a == "--devices" and i + 1 < len(sys.argv):
            n = sys.argv[i + 1]
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags_env = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags_env} --xla_force_host_platform_device_count={n}".strip()


_devices_flag()

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.bench import shapes  # noqa: E402
from vpgtrans_jax.bench.plan import LAYOUTS, PlanOptions, run  # noqa: E402

_D = PlanOptions()
flags.DEFINE_integer("devices", 8, "devices of the planned mesh (host devices on this CPU)")
_LLM = flags.DEFINE_enum("llm", _D.llm, ["opt", "llama"], "LLM family")
_SCALE = flags.DEFINE_enum("scale", _D.scale, list(shapes.SCALES), "model shapes")
_BATCH = flags.DEFINE_integer("batch_per_device", _D.batch_per_device, "samples per device")
_TEXT = flags.DEFINE_integer("text_len", _D.text_len, "text tokens per sample")
_LAYOUTS = flags.DEFINE_list("layouts", list(_D.layouts), f"mesh layouts: {sorted(LAYOUTS)}")
_REMAT = flags.DEFINE_list("remat", list(_D.remat_policies), "remat policies ('none' = off)")
_LAYERS = flags.DEFINE_enum("layers", _D.layers, ["extrapolate", "real"], "how depth is handled")


def main(argv: list[str]) -> None:
    opts = PlanOptions(llm=_LLM.value, scale=_SCALE.value, batch_per_device=_BATCH.value,
                       text_len=_TEXT.value, layouts=tuple(_LAYOUTS.value),
                       remat_policies=tuple(_REMAT.value), layers=_LAYERS.value)  # fmt: skip
    run(opts)


if __name__ == "__main__":
    cli.run(main)
