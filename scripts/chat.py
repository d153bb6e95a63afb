"""Chats with a VL model about an image in the terminal; answers stream as they are generated.

  python scripts/chat.py                                   # the tiny demo chat model (built once)
  python scripts/chat.py --model DIR --image cat.jpg       # multi-turn; /image PATH, /reset, /quit
  python scripts/chat.py --model DIR --image cat.jpg --ask "what is it?" --ask "its colour?"

The chat template is the one the model directory records (stage-3 exports: vicuna_v0), else
BLIP-2's "Question: {} Answer:"; --template NAME overrides (docs/chat.md lists them).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.chat import terminal  # noqa: E402
from vpgtrans_jax.chat.session import ChatModel, ChatSettings  # noqa: E402
from vpgtrans_jax.tiny.chat_model import ensure_tiny_chat_model  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "model directory (default: the tiny demo model)")
flags.DEFINE_alias("checkpoint", "model")
_IMAGE = flags.DEFINE_string("image", None, "image file to start with")
_TOK = flags.DEFINE_string("tokenizer", "", "HF tokenizer directory (default: the model's)")
_TEMPLATE = flags.DEFINE_string("template", "", "chat template name (default: the model's)")
_ASK = flags.DEFINE_multi_string("ask", None, "message(s) to answer in one conversation, then exit")
_BEAMS = flags.DEFINE_integer("num_beams", 1, "beam size (> 1: the answer comes when done)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sampling")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (with --temperature > 0)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "longest answer")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype override, e.g. bfloat16")


def main(argv: list[str]) -> None:
    path = _MODEL.value or ensure_tiny_chat_model()
    chat = ChatModel.load(path, template=_TEMPLATE.value, tokenizer=_TOK.value, dtype=_DTYPE.value)
    settings = ChatSettings(
        max_new_tokens=_MAX_NEW.value, num_beams=_BEAMS.value, temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value, seed=_SEED.value,
    )  # fmt: skip
    settings.check()
    terminal.run(chat.session(), settings, image=_IMAGE.value, asks=_ASK.value)


if __name__ == "__main__":
    cli.run(main)
