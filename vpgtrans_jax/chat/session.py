"""A chat with a VL model: the model, its tokenizer and template, one conversation per user.

``ChatModel.load(path)`` opens a model (anything ``vpgtrans_jax.load`` reads) with its tokenizer
and chat template; ``model.session()`` starts a conversation; ``session.set_image(...)`` and
``session.ask(message)`` return a ``Reply`` whose iteration streams the answer's text.

Limits, each refused with a one-line ``ChatInputError`` before any work is done (the chat goes
on): an image over ``MAX_IMAGE_BYTES`` or ``MAX_IMAGE_PIXELS`` (read from its header, before
decoding: decompression bombs), a file that is not an image, an empty message or one over
``MAX_MESSAGE_CHARS``, a model directory without a tokenizer, settings out of range.

Prompts are left-padded to a few lengths (powers of two) and the answer's cache room too, so
``generation.stream`` compiles each program once per length, not once per turn.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

import vpgtrans_jax
from vpgtrans_jax.chat.conversation import (
    DEFAULT_TEMPLATE,
    Conversation,
    Template,
    get_template,
    truncation_notice,
)
from vpgtrans_jax.checkpoint.model_dir import is_model_dir, read_manifest
from vpgtrans_jax.data.processors import blip_image_eval
from vpgtrans_jax.data.text import (
    check_tokenizer_fits,
    encode_generation,
    load_tokenizer,
    pad_id,
)
from vpgtrans_jax.errors import ChatInputError, DataError
from vpgtrans_jax.generation import GenerationConfig, end_token_ids
from vpgtrans_jax.generation.stream import TextStream, stream_tokens
from vpgtrans_jax.generation.text import text_end
from vpgtrans_jax.models.vl_model import VLModel

MAX_IMAGE_BYTES = 10 * 2**20
MAX_IMAGE_PIXELS = 20_000_000
MAX_MESSAGE_CHARS = 2000
MAX_NEW_TOKENS = 1024
MAX_BEAMS = 10
DEFAULT_CONTEXT = 2048  # for LLMs whose config names no maximum length
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def limits_text() -> str:
    """The limits as one line, for a page or a banner."""
    return (
        f"Images up to {MAX_IMAGE_BYTES // 2**20} MB and {MAX_IMAGE_PIXELS // 10**6} megapixels; "
        f"messages up to {MAX_MESSAGE_CHARS} characters."
    )


@dataclasses.dataclass(frozen=True)
class ChatSettings:
    """How answers are generated: ``temperature`` 0 is greedy, above 0 samples (with
    ``top_p``); ``num_beams`` > 1 is beam search (the answer arrives when it is done)."""

    max_new_tokens: int = 64
    num_beams: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        def bad(what: str) -> ChatInputError:
            return ChatInputError(f"setting {what}")

        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS:
            raise bad(f"max_new_tokens={self.max_new_tokens}: expected 1..{MAX_NEW_TOKENS}")
        if not 1 <= int(self.num_beams) <= MAX_BEAMS:
            raise bad(f"num_beams={self.num_beams}: expected 1..{MAX_BEAMS}")
        if not (0.0 <= self.temperature <= 5.0):
            raise bad(f"temperature={self.temperature}: expected 0 (greedy) to 5")
        if not (0.0 < self.top_p <= 1.0):
            raise bad(f"top_p={self.top_p}: expected a number in (0, 1]")


def read_image(image: bytes | str) -> bytes:
    """The encoded bytes of an image file or upload, refused over ``MAX_IMAGE_BYTES``."""
    if isinstance(image, str):
        if not os.path.isfile(image):
            raise ChatInputError(f"image {image!r} is not a file")
        size = os.path.getsize(image)
        if size > MAX_IMAGE_BYTES:
            raise ChatInputError(_too_big(size, f"image {os.path.basename(image)} "))
        with open(image, "rb") as f:
            return f.read()
    if len(image) > MAX_IMAGE_BYTES:
        raise ChatInputError(_too_big(len(image), "image "))
    return bytes(image)


def _too_big(size: int, what: str) -> str:
    return f"{what}is {size / 2**20:.1f} MB, more than the {MAX_IMAGE_BYTES // 2**20} MB limit"


def prepare_image(image: bytes | str, size: int) -> np.ndarray:
    """An image file or upload -> float32[1, size, size, 3] for the model (limits checked)."""
    data = read_image(image)
    try:
        pixels = blip_image_eval(data, size, max_pixels=MAX_IMAGE_PIXELS)
    except DataError as e:  # over the pixel limit, from the header
        raise ChatInputError(str(e).replace("max_image_pixels=", "the limit of ")) from None
    except Exception as e:  # noqa: BLE001 - whatever PIL raises for bytes that are no image
        raise ChatInputError(f"not an image that can be read ({type(e).__name__}: {e})") from None
    return pixels[None]


def check_message(message: str) -> str:
    message = message.strip()
    if not message:
        raise ChatInputError("empty message: type a question or an instruction")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ChatInputError(
            f"message is {len(message)} characters, more than the {MAX_MESSAGE_CHARS} allowed"
        )
    return message


def _bucket(n: int, smallest: int) -> int:
    """The smallest power of two >= max(n, smallest)."""
    b = smallest
    while b < n:
        b *= 2
    return b


def find_tokenizer(path: str, info: dict[str, Any]) -> str:
    """The model's tokenizer directory: ``path`` itself when it holds one, else the one its
    manifest records (``info.tokenizer``, written by training exports)."""
    if any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return path
    recorded = info.get("tokenizer")
    if recorded and os.path.isdir(recorded):
        return recorded
    hint = f" (its manifest names {recorded}, which does not exist)" if recorded else ""
    raise ChatInputError(
        f"model directory {path} has no tokenizer{hint}; pass the LLM's tokenizer directory "
        "with --tokenizer"
    )


class ChatModel:
    """A VL model ready to chat: tokenizer, template, end-of-answer ids, context length."""

    def __init__(self, model: VLModel, tokenizer: Any, template: Template, name: str = ""):
        check_tokenizer_fits(tokenizer, model.config.llm.vocab_size)
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.name = name or "model"
        self.eos = end_token_ids(tokenizer, model.config.llm_type, template.end)
        self.pad = pad_id(tokenizer)
        self.context = getattr(model.config.llm, "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.last_shape: tuple[int, int] | None = None  # (prompt columns, cache room) last used

    @classmethod
    def load(
        cls,
        path: str,
        *,
        template: str = "",
        tokenizer: str = "",
        dtype: str = "",
    ) -> ChatModel:
        """Opens ``path``; the template is ``template``, else the one the model directory
        records (``info.chat_template``, stage-3 exports), else ``blip2``."""
        if not os.path.exists(path):
            raise ChatInputError(f"model {path!r} does not exist")
        info = read_manifest(path).get("info", {}) if is_model_dir(path) else {}
        tok_dir = tokenizer or find_tokenizer(path, info)
        chosen = get_template(template or info.get("chat_template") or DEFAULT_TEMPLATE)
        model = vpgtrans_jax.load(path, **({"dtype": dtype} if dtype else {}))
        parent, name = os.path.split(os.path.abspath(path))
        if name == "export":  # a training workdir's export: the workdir names it
            name = os.path.join(os.path.basename(parent), name)
        return cls(model, load_tokenizer(tok_dir), chosen, name=name)

    def session(self) -> ChatSession:
        return ChatSession(self)

    def count_tokens(self, prompt: str) -> int:
        return int(encode_generation(self.tokenizer, prompt, 1 << 16)["attention_mask"].sum())

    def prompt_budget(self, settings: ChatSettings) -> int:
        """Prompt tokens that fit beside the soft prompt and the room for the answer."""
        budget = self.context - self.model.config.num_query_tokens - settings.max_new_tokens
        if budget < 8:
            raise ChatInputError(
                f"setting max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in "
                f"this model's context of {self.context} positions"
            )
        return budget

    def stream(self, pixels: np.ndarray, prompt: str, settings: ChatSettings) -> Iterator[str]:
        """Text increments of the answer to ``prompt`` (which must fit ``prompt_budget``)."""
        q = self.model.config.num_query_tokens
        n = settings.max_new_tokens
        t = min(_bucket(self.count_tokens(prompt), 32), self.context - q - n)
        room = min(_bucket(n, 16), self.context - q - t)
        self.last_shape = (t, room)
        enc = encode_generation(self.tokenizer, prompt, t)
        offsets = enc["image_offset"][None] if "image_offset" in enc else None
        sampling = settings.temperature > 0
        cfg = GenerationConfig.make(
            eos_token_id=self.eos, pad_token_id=self.pad, max_new_tokens=n,
            num_beams=settings.num_beams, do_sample=sampling,
            temperature=settings.temperature if sampling else 1.0,
            top_p=settings.top_p if sampling else 1.0,
        )  # fmt: skip
        text = TextStream(self.tokenizer, self.eos, self.pad, text_end(self.template.end))
        steps = stream_tokens(
            self.model, pixels, enc["input_ids"][None], enc["attention_mask"][None], cfg,
            jax.random.key(settings.seed), image_offsets=offsets, room=room,
        )  # fmt: skip
        for step in steps:
            piece = text.push(int(step[0]))
            if piece:
                yield piece
            if text.done:
                return
        rest = text.finish()
        if rest:
            yield rest


class Reply:
    """One answer: ``notice`` (the history was cut, or None) is known at once; iterating
    streams the text; the answer joins the conversation as far as it was read."""

    def __init__(self, notice: str | None, pieces: Iterator[str], conversation: Conversation):
        self.notice = notice
        self.text = ""
        self._pieces = pieces
        self._conversation = conversation

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                self.text += piece
                yield piece
        finally:
            turns = self._conversation.turns
            if turns and turns[-1][1] is None:  # not reset or replaced meanwhile
                self._conversation.answer(self.text)

    def read(self) -> str:
        for _ in self:
            pass
        return self.text


class ChatSession:
    """One user's conversation about one image."""

    def __init__(self, chat: ChatModel):
        self.chat = chat
        self.conversation = Conversation(chat.template)
        self.pixels: np.ndarray | None = None

    def set_image(self, image: bytes | str) -> None:
        """A new image (a path or encoded bytes) starts a new conversation; a refused one
        changes nothing."""
        self.pixels = prepare_image(image, self.chat.model.config.vision.image_size)
        self.conversation.reset()

    def reset(self) -> None:
        """Forgets the conversation, keeps the image."""
        self.conversation.reset()

    def ask(self, message: str, settings: ChatSettings | None = None) -> Reply:
        settings = settings or ChatSettings()
        settings.check()
        message = check_message(message)
        if self.pixels is None:
            raise ChatInputError("no image yet: give one first (/image PATH, or upload it)")
        budget = self.chat.prompt_budget(settings)
        self.conversation.ask(message)
        try:
            dropped = self.conversation.fit(self.chat.count_tokens, budget)
        except ChatInputError:
            self.conversation.turns.pop()
            raise
        notice = truncation_notice(dropped) if dropped else None
        pieces = self.chat.stream(self.pixels, self.conversation.prompt(), settings)
        return Reply(notice, pieces, self.conversation)


__all__ = [
    "ChatModel",
    "ChatSession",
    "ChatSettings",
    "Reply",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_MESSAGE_CHARS",
    "limits_text",
    "prepare_image",
    "find_tokenizer",
]
