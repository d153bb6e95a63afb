"""Chat latency on a chat model: time to the first token and tokens/s of streamed answers,
against generate's single loop on the same request (method: vpgtrans_jax/chat/bench.py).

    python scripts/bench_chat.py                        # the tiny demo chat model
    python scripts/bench_chat.py --model DIR --image cat.jpg --max_new_tokens 64
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.chat.bench import Options, run  # noqa: E402
from vpgtrans_jax.chat.session import ChatModel  # noqa: E402
from vpgtrans_jax.tiny.chat_model import ensure_tiny_chat_model  # noqa: E402

_D = Options()
_MODEL = flags.DEFINE_string("model", None, "model directory (default: the tiny demo model)")
_IMAGE = flags.DEFINE_string("image", None, "image file (default: a synthetic scene)")
_TEMPLATE = flags.DEFINE_string("template", "", "chat template name (default: the model's)")
_NEW = flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "tokens per answer")
_REPS = flags.DEFINE_integer("reps", _D.reps, "timed runs per side")


def main(argv: list[str]) -> None:
    chat = ChatModel.load(_MODEL.value or ensure_tiny_chat_model(), template=_TEMPLATE.value)
    run(chat, Options(max_new_tokens=_NEW.value, reps=_REPS.value), _IMAGE.value)


if __name__ == "__main__":
    cli.run(main)
