"""Serves a gradio web chat with a VL model: image upload, streaming answers, settings.

  python scripts/webui.py                              # the tiny demo chat model (built once)
  python scripts/webui.py --model DIR [--port 7860] [--host 127.0.0.1] [--template NAME]

Binds 127.0.0.1 unless --host says otherwise; a public gradio link only with --share. Needs the
demo extra: pip install -e ".[demo]". docs/chat.md describes the page, templates and limits.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.chat import webui  # noqa: E402
from vpgtrans_jax.chat.session import ChatModel  # noqa: E402
from vpgtrans_jax.tiny.chat_model import ensure_tiny_chat_model  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "model directory (default: the tiny demo model)")
_TOK = flags.DEFINE_string("tokenizer", "", "HF tokenizer directory (default: the model's)")
_TEMPLATE = flags.DEFINE_string("template", "", "chat template name (default: the model's)")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "address to bind (0.0.0.0: every interface)")
_PORT = flags.DEFINE_integer("port", 7860, "port to serve on")
_SHARE = flags.DEFINE_bool("share", False, "also open a public gradio.live link")
_QUEUE = flags.DEFINE_integer("max_queue", webui.MAX_QUEUE, "requests that may wait")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype override, e.g. bfloat16")


def main(argv: list[str]) -> None:
    path = _MODEL.value or ensure_tiny_chat_model()
    chat = ChatModel.load(path, template=_TEMPLATE.value, tokenizer=_TOK.value, dtype=_DTYPE.value)
    webui.serve(chat, host=_HOST.value, port=_PORT.value, share=_SHARE.value,
                max_queue=_QUEUE.value)  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
