"""A multi-turn conversation about one image, rendered with a named chat template.

The image comes once, at the start of the first user message that is still in the history
(``<Img><ImageHere></Img>``: the soft prompt goes where ``<ImageHere>`` stands; BLIP-2's plain
prompt has no placeholder, so the soft prompt comes first). Each earlier turn is rendered with
its answer, the current one ends where the model is to write: the template's assistant prefix.

Templates (``TEMPLATES``):

- ``vicuna_v0``: ``###Human: <Img><ImageHere></Img> q1 ###Assistant: a1###Human: q2
  ###Assistant: `` (VPGTrans's VL-Vicuna / MiniGPT-4 stage 3; answers end at ``###``);
- ``vicuna_v1.1``: ``SYSTEM USER: <Img><ImageHere></Img> q1 ASSISTANT: a1</s>USER: q2
  ASSISTANT:`` (answers end at ``</s>``);
- ``llama2``: ``[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\n<Img><ImageHere></Img> q1 [/INST] a1
  </s><s>[INST] q2 [/INST]`` (answers end at ``</s>``);
- ``llama3``: header tokens ``<|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>``
  (answers end at ``<|eot_id|>``; the tokenizer adds ``<|begin_of_text|>``);
- ``blip2``: ``Question: q1 Answer: a1\\nQuestion: q2 Answer:`` (stage-1/2 models; the soft
  prompt first; answers end at a newline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from vpgtrans_jax.errors import ChatInputError

IMAGE = "<Img><ImageHere></Img> "
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)
VISION_SYSTEM = "You are a helpful assistant. Answer the user's questions about the image."


@dataclasses.dataclass(frozen=True)
class Template:
    """How a conversation becomes one prompt string.

    Attributes:
      name: the name ``--template`` and a model directory's ``info.chat_template`` use.
      preamble: text before the first turn (a system prompt).
      first: text put before the first user message in the history (the image, and for
        LLaMA-2 its system block).
      user: a user message; ``{}`` is the message.
      assistant: what precedes an answer; the prompt to generate from ends with it.
      answer: a finished answer in the history; ``{}`` is the answer.
      end: where an answer ends: generation stops there (``"\\n"``: at the newline token).
    """

    name: str
    preamble: str
    first: str
    user: str
    assistant: str
    answer: str
    end: str

    def render(self, turns: Sequence[tuple[str, str | None]]) -> str:
        """The prompt of ``turns`` (message, answer or None for the one being answered)."""
        parts = [self.preamble]
        for i, (message, answer) in enumerate(turns):
            parts.append(self.user.format((self.first if i == 0 else "") + message))
            parts.append(self.assistant)
            if answer is not None:
                parts.append(self.answer.format(answer))
        return "".join(parts)


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("vicuna_v0", "", IMAGE, "###Human: {} ", "###Assistant: ", "{}", "###"),
        Template("vicuna_v1.1", VICUNA_SYSTEM + " ", IMAGE, "USER: {} ", "ASSISTANT:",
                 " {}</s>", "</s>"),
        Template("llama2", "", f"<<SYS>>\n{VISION_SYSTEM}\n<</SYS>>\n\n{IMAGE}",
                 "[INST] {} [/INST]", "", " {} </s><s>", "</s>"),
        Template("llama3",
                 f"<|start_header_id|>system<|end_header_id|>\n\n{VISION_SYSTEM}<|eot_id|>",
                 IMAGE, "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
                 "<|start_header_id|>assistant<|end_header_id|>\n\n", "{}<|eot_id|>",
                 "<|eot_id|>"),
        Template("blip2", "", "", "Question: {} ", "Answer:", " {}\n", "\n"),
    )
}  # fmt: skip
DEFAULT_TEMPLATE = "blip2"  # models without a recorded template: stage-1/2 exports, HF BLIP-2


def get_template(name: str) -> Template:
    """The template called ``name``; a ChatInputError lists the known names."""
    if name not in TEMPLATES:
        raise ChatInputError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclasses.dataclass
class Conversation:
    """The turns so far (oldest first); the last one may be waiting for its answer."""

    template: Template
    turns: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)

    def ask(self, message: str) -> None:
        """Starts a turn; an unanswered last turn (a stopped reply) is replaced."""
        if self.turns and self.turns[-1][1] is None:
            self.turns.pop()
        self.turns.append((message, None))

    def answer(self, text: str) -> None:
        if not self.turns or self.turns[-1][1] is not None:
            raise ValueError("no question is waiting for an answer")
        self.turns[-1] = (self.turns[-1][0], text)

    def reset(self) -> None:
        self.turns.clear()

    def prompt(self) -> str:
        return self.template.render(self.turns)

    def fit(self, count_tokens: Callable[[str], int], budget: int) -> int:
        """Drops the oldest turns until the prompt has at most ``budget`` tokens.

        Returns how many were dropped (0: nothing changed). The last turn is never dropped: if
        it does not fit alone, a ChatInputError says by how much (the turns stay as they were).
        """
        dropped = 0
        while count_tokens(self.template.render(self.turns[dropped:])) > budget:
            if dropped == len(self.turns) - 1:
                need = count_tokens(self.template.render(self.turns[-1:]))
                raise ChatInputError(
                    f"message too long for the model's context: with the template it is {need} "
                    f"tokens, and {budget} fit beside the image and the room for the answer; "
                    "shorten it (or lower max new tokens)"
                )
            dropped += 1
        del self.turns[:dropped]
        return dropped


def truncation_notice(dropped: int) -> str:
    """The line a user sees when the history was cut."""
    turns = "turn" if dropped == 1 else f"{dropped} turns"
    return (
        f"(the conversation outgrew the model's context: dropped the oldest {turns}; the image "
        "stays)"
    )


__all__ = [
    "Template",
    "TEMPLATES",
    "DEFAULT_TEMPLATE",
    "get_template",
    "Conversation",
    "truncation_notice",
]
