"""Asks a VL model about an image from the terminal.

  python scripts/chat.py --checkpoint DIR --image cat.jpg                 # interactive
  python scripts/chat.py --checkpoint DIR --image cat.jpg --ask "what is on the table?"
  python scripts/chat.py --checkpoint DIR --image cat.jpg --ask ""        # a caption
  python scripts/chat.py --checkpoint VL_VICUNA_DIR --image cat.jpg --end "###" \\
      --template "###Human: <Img><ImageHere></Img> {} ###Assistant: "    # stage-3 chat model

Each question becomes ``--template`` (VPGTrans VQA prompt by default) and is answered with beam
search; generation stops at ``--end``, the VPGTrans end of sequence ("\\n"; "###" for stage-3
chat models, whose template puts the image where ``<ImageHere>`` stands). An empty question
asks for a caption with the captioning settings (with a stage-3 template: the instruction
"Describe this image in detail."). ``--checkpoint`` takes anything ``vpgtrans_jax.load``
accepts; ``--tokenizer`` defaults to the checkpoint directory.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (vpgtrans_jax.load)")
    parser.add_argument("--image", required=True, help="image file (any format PIL reads)")
    parser.add_argument(
        "--tokenizer", default="", help="HF tokenizer directory (default: checkpoint)"
    )
    parser.add_argument("--template", default="Question: {} Answer:", help="prompt for a question")
    parser.add_argument("--end", default="\n", help='end of an answer: "\\n", or "###" (stage 3)')
    parser.add_argument(
        "--max_prompt_len",
        type=int,
        default=0,
        help="prompt tokens kept (default: 160 with an <ImageHere> template, else 32)",
    )
    parser.add_argument("--ask", action="append", help="question(s) to answer, then exit")
    parser.add_argument("--num_beams", type=int, default=5, help="beam size")
    parser.add_argument("--max_new_tokens", type=int, default=30, help="longest answer")
    parser.add_argument("--dtype", default="", help="compute dtype override, e.g. bfloat16")
    args = parser.parse_args(argv)
    if not os.path.exists(args.image):
        parser.error(f"--image {args.image!r} does not exist")

    import vpgtrans_jax
    from vpgtrans_jax.data.text import IMAGE_PLACEHOLDER, load_tokenizer
    from vpgtrans_jax.generation import generate_text

    if args.end == "\\n":  # a shell's '\n' is backslash + n
        args.end = "\n"
    instruct = IMAGE_PLACEHOLDER in args.template
    max_prompt_len = args.max_prompt_len or (160 if instruct else 32)

    overrides = {"dtype": args.dtype} if args.dtype else {}
    model = vpgtrans_jax.load(args.checkpoint, **overrides)
    tokenizer = load_tokenizer(args.tokenizer or args.checkpoint)
    with open(args.image, "rb") as f:
        image = f.read()

    def answer(question: str) -> str:
        question = question.strip()
        caption = not question
        if caption and instruct:
            prompt = args.template.format("Describe this image in detail.")
        else:
            prompt = "" if caption else args.template.format(question)
        # Protocol of the paper: captions 8..30 tokens, length_penalty 1; VQA 1..10, -1.
        settings = (
            dict(min_new_tokens=8, length_penalty=1.0)
            if caption
            else dict(min_new_tokens=1, length_penalty=-1.0)
        )
        return generate_text(
            model,
            tokenizer,
            [image],
            [prompt],
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            max_prompt_len=max_prompt_len,
            end=args.end,
            **settings,
        )[0]

    if args.ask is not None:
        for q in args.ask:
            print(answer(q))
        return 0
    print("Ask about the image (empty line: caption; Ctrl-D to quit).")
    while True:
        try:
            q = input("> ")
        except EOFError:
            print()
            return 0
        print(answer(q))


if __name__ == "__main__":
    sys.exit(main())
