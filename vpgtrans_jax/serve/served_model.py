"""The model behind the server: weights, tokenizer, chat template, and OpenAI messages -> prompt.

Messages become the turns of the model's chat template (``chat.Template``: the one its model
directory records, or ``blip2`` for stage-1/2 models): system messages go before the first user
message, consecutive user messages are joined by newlines, an assistant message is the answer
of the turn before it, and the last message must be the user's. The image (one per
conversation, wherever it was sent) goes where the template places it; a conversation without
one gets a blank image (the mean colour), since the model always reads a soft prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from vpgtrans_jax.chat.conversation import Template
from vpgtrans_jax.chat.session import ChatModel, prepare_image
from vpgtrans_jax.data.text import encode_generation, pad_id
from vpgtrans_jax.errors import ChatInputError
from vpgtrans_jax.generation.text import end_token_ids, text_end
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.serve.protocol import Limits, Message, RequestError


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A request's prompt: token ids (BOS included), where the soft prompt goes among them,
    and the image as float32[S, S, 3]."""

    ids: tuple[int, ...]
    image_at: int
    pixels: np.ndarray


@dataclasses.dataclass
class ServedModel:
    """What the server needs of a model (``name`` is what clients put in ``model``)."""

    name: str
    model: VLModel
    tokenizer: Any
    template: Template

    def __post_init__(self):
        cfg = self.model.config
        self.num_query_tokens = cfg.num_query_tokens
        self.image_size = cfg.vision.image_size
        self.context = int(cfg.llm.max_position_embeddings)
        self.eos_token_ids = end_token_ids(self.tokenizer, cfg.llm_type, self.template.end)
        self.pad_token_id = pad_id(self.tokenizer)
        self.text_end = text_end(self.template.end)

    @property
    def room(self) -> int:
        """Prompt + new tokens that fit beside the soft prompt."""
        return self.context - self.num_query_tokens

    def pixels(self, image: bytes | None) -> np.ndarray:
        """float32[S, S, 3] of an encoded image, with the chat's limits (a RequestError for one
        that is not an image, or is over ``chat.session.MAX_IMAGE_PIXELS``, read from its
        header); the blank image for None."""
        if image is None:
            return np.zeros((self.image_size, self.image_size, 3), np.float32)
        try:
            return prepare_image(image, self.image_size)[0]
        except ChatInputError as e:
            raise RequestError(str(e), param="messages", code="invalid_image") from None

    def turns(self, messages: Sequence[Message]) -> list[tuple[str, str | None]]:
        """The template's turns (message, answer or None for the one to answer)."""
        system = "\n".join(m.text for m in messages if m.role == "system")
        turns: list[tuple[str, str | None]] = []
        user: list[str] = []
        for m in messages:
            if m.role == "user":
                user.append(m.text)
            elif m.role == "assistant":
                if not user:
                    raise RequestError(
                        "an assistant message must follow a user message", param="messages"
                    )
                turns.append(("\n".join(user), m.text))
                user = []
        if not user:
            raise RequestError("the last message must be the user's", param="messages")
        turns.append(("\n".join(user), None))
        if system:
            turns[0] = (f"{system}\n{turns[0][0]}", turns[0][1])
        return turns

    def encode(self, messages: Sequence[Message], pixels: np.ndarray) -> Prompt:
        """The prompt of ``messages``; a RequestError if it leaves no room for an answer."""
        text = self.template.render(self.turns(messages))
        enc = encode_generation(self.tokenizer, text, self.room)
        n = int(enc["attention_mask"].sum())
        if n >= self.room:
            raise RequestError(
                f"the prompt is {'at least ' * (n == self.room)}{n} tokens (+ "
                f"{self.num_query_tokens} image tokens); the model's context is {self.context} "
                "tokens and the answer needs at least one",
                param="messages",
                code="context_length_exceeded",
            )
        ids = tuple(int(t) for t in enc["input_ids"][self.room - n :])
        offset = enc.get("image_offset")
        image_at = 0 if offset is None else int(offset) - (self.room - n)
        return Prompt(ids, image_at, pixels)

    def max_tokens(self, prompt: Prompt, asked: int | None, limits: Limits) -> int:
        """The request's new-token budget: ``asked``, or what fits (at most the limit)."""
        left = self.room - len(prompt.ids)
        if asked is None:
            return min(left, limits.max_tokens)
        if asked > left:
            raise RequestError(
                f"max_tokens={asked} does not fit: the prompt takes {len(prompt.ids)} + "
                f"{self.num_query_tokens} image tokens of the model's context of {self.context}, "
                f"leaving {left}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked


def from_chat_model(chat: ChatModel, name: str = "") -> ServedModel:
    """The model ``chat.session.ChatModel.load`` opened (tokenizer and template found as the
    chat finds them) under ``name`` (default: the chat's name for it)."""
    return ServedModel(name or chat.name, chat.model, chat.tokenizer, chat.template)
