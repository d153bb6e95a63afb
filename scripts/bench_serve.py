"""Load test of the OpenAI-compatible server: batched vs one request at a time.

  python scripts/bench_serve.py                       # tiny chat model, 32 clients, 20 s rounds
  python scripts/bench_serve.py --model DIR --clients 8 --seconds 60 --rounds 3

Prints requests/s, tokens/s, p50/p99 latency and time-to-first-token of each mode, and the
ratio of their tokens/s (docs/serving.md records measured figures).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.serve import bench, server  # noqa: E402

_MODEL = flags.DEFINE_string("model", "", "model directory (default: the tiny chat model)")
_CLIENTS = flags.DEFINE_integer("clients", 32, "concurrent clients")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "length of one round of one mode")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "rounds per mode (the modes alternate)")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 32, "max_tokens of every request")
_BATCH = flags.DEFINE_integer("max_batch", 32, "the batching server's batch size")
_GATHER = flags.DEFINE_float("gather_ms", 5.0, "how long a batch waits for more requests")
_WARM = flags.DEFINE_float("warm_up_seconds", 5.0, "unmeasured load before the rounds")
_OUT = flags.DEFINE_string("out", "", "also write the figures to this JSON file")


def main(argv: list[str]) -> None:
    served = server.load_served(_MODEL.value)
    result = bench.bench_serve(
        served, clients=_CLIENTS.value, seconds=_SECONDS.value, rounds=_ROUNDS.value,
        max_tokens=_MAX_TOKENS.value, max_batch=_BATCH.value, warm_up_seconds=_WARM.value,
        gather_ms=_GATHER.value,
    )  # fmt: skip
    print(bench.report(result))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
