"""Serves a VL model behind an OpenAI-compatible API (docs/serving.md).

  python scripts/serve.py                                  # the tiny chat model (built once)
  python scripts/serve.py --model DIR                      # http://127.0.0.1:8000/v1
  python scripts/serve.py --model DIR --host 0.0.0.0 --port 9000 --max_batch 16

``POST /v1/chat/completions`` (text and data:image URLs, streaming), ``GET /v1/models``,
``GET /health``. Concurrent requests are decoded together (dynamic batching).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.serve import server  # noqa: E402
from vpgtrans_jax.serve.protocol import Limits  # noqa: E402

_MODEL = flags.DEFINE_string("model", "", "model directory (default: the tiny chat model)")
_TOK = flags.DEFINE_string("tokenizer", "", "HF tokenizer directory (default: the model's)")
_NAME = flags.DEFINE_string("name", "", "model name clients use (default: the directory's name)")
_TEMPLATE = flags.DEFINE_string("template", "", "chat template (default: the model's own)")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "address to bind (0.0.0.0: every interface)")
_PORT = flags.DEFINE_integer("port", 8000, "port")
_BATCH = flags.DEFINE_integer("max_batch", 32, "sequences decoded together at most")
_QUEUE = flags.DEFINE_integer("max_queue", 256, "sequences waiting at most (then 503)")
_GATHER = flags.DEFINE_float("gather_ms", 5.0, "how long a batch waits for more requests")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 512, "new tokens per answer at most")
_MAX_N = flags.DEFINE_integer("max_n", 4, "choices per request at most")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype override, e.g. bfloat16")
_WARM = flags.DEFINE_boolean("warm_up", True, "compile the common shapes before serving")


def main(argv: list[str]) -> None:
    served = server.load_served(_MODEL.value, name=_NAME.value, template=_TEMPLATE.value,
                                tokenizer=_TOK.value, dtype=_DTYPE.value)  # fmt: skip
    limits = Limits(max_n=_MAX_N.value, max_tokens=_MAX_TOKENS.value)
    server.serve(
        served, host=_HOST.value, port=_PORT.value, limits=limits, warm_up=_WARM.value,
        max_batch=_BATCH.value, max_queue=_QUEUE.value, gather_ms=_GATHER.value,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
