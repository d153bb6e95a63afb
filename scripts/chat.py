"""Asks a VL model about an image from the terminal.

  python scripts/chat.py --checkpoint DIR --image cat.jpg                 # interactive
  python scripts/chat.py --checkpoint DIR --image cat.jpg --ask "what is on the table?"
  python scripts/chat.py --checkpoint DIR --image cat.jpg --ask ""        # a caption
  python scripts/chat.py --checkpoint VL_VICUNA_DIR --image cat.jpg --end "###" \\
      --template "###Human: <Img><ImageHere></Img> {} ###Assistant: "    # stage-3 chat model

Each question fills ``--template`` and is answered with beam search up to ``--end`` ("\\n";
"###" for stage-3 chat models). An empty question asks for a caption.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

import vpgtrans_jax  # noqa: E402
from vpgtrans_jax import cli  # noqa: E402
from vpgtrans_jax.checkpoint import hub  # noqa: E402
from vpgtrans_jax.data.text import load_tokenizer  # noqa: E402
from vpgtrans_jax.generation import answer_about_image  # noqa: E402

_CKPT = flags.DEFINE_string("checkpoint", None, "model directory or HF hub id (vpgtrans_jax.load)")
_IMAGE = flags.DEFINE_string("image", None, "image file (any format PIL reads)")
_TOK = flags.DEFINE_string("tokenizer", "", "HF tokenizer directory (default: --checkpoint)")
_TEMPLATE = flags.DEFINE_string("template", "Question: {} Answer:", "prompt for a question")
_END = flags.DEFINE_string("end", "\n", 'end of an answer: "\\n", or "###" (stage 3)')
_PROMPT_LEN = flags.DEFINE_integer(
    "max_prompt_len", 0, "prompt tokens kept (default: 160 with an <ImageHere> template, else 32)"
)
_ASK = flags.DEFINE_multi_string("ask", None, "question(s) to answer, then exit")
_BEAMS = flags.DEFINE_integer("num_beams", 5, "beam size")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 30, "longest answer")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype override, e.g. bfloat16")
flags.mark_flags_as_required(["checkpoint", "image"])


def main(argv: list[str]) -> None:
    if not os.path.isfile(_IMAGE.value):
        raise ValueError(f"--image {_IMAGE.value!r} is not a file")
    ckpt = hub.resolve(_CKPT.value)  # a hub id's snapshot serves the model and its tokenizer
    model = vpgtrans_jax.load(ckpt, **({"dtype": _DTYPE.value} if _DTYPE.value else {}))
    tokenizer = load_tokenizer(_TOK.value or ckpt)
    with open(_IMAGE.value, "rb") as f:
        image = f.read()
    template = _TEMPLATE.value
    end = "\n" if _END.value == "\\n" else _END.value  # a shell's '\n' is backslash + n
    prompt_len = _PROMPT_LEN.value or (160 if "<ImageHere>" in template else 32)

    def answer(question: str) -> str:
        return answer_about_image(
            model, tokenizer, image, question, template=template, end=end,
            num_beams=_BEAMS.value, max_new_tokens=_MAX_NEW.value, max_prompt_len=prompt_len,
        )  # fmt: skip

    if _ASK.value is not None:
        for q in _ASK.value:
            print(answer(q))
        return
    print("Ask about the image (empty line: caption; Ctrl-D to quit).")
    while True:
        try:
            q = input("> ")
        except EOFError:
            print()
            return
        print(answer(q))


if __name__ == "__main__":
    cli.run(main)
