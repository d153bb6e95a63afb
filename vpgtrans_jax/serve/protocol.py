"""OpenAI chat-completions requests: parsed and checked field by field, never trusted.

``parse_request`` turns the JSON body into a ``ChatRequest`` or raises ``RequestError`` naming
the parameter and what was expected (answered as HTTP 400 with OpenAI's error object). Images
come inline as ``data:image/...;base64,...`` URLs (the server fetches nothing); their bytes
are checked here for base64 and size, and decoded later (``ServedModel.encode``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any

from vpgtrans_jax.chat.session import MAX_IMAGE_BYTES
from vpgtrans_jax.errors import VPGTransError


class RequestError(VPGTransError, ValueError):
    """A request the server refuses (HTTP ``status``, OpenAI error ``type``/``param``/``code``)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = (
            message, param, code, status, type,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
      max_n: choices per request; max_tokens: new tokens per choice; max_stop: stop strings.
      max_image_bytes: an image's encoded size (checked before its base64 is decoded; the
        pixel limit is the chat's, ``chat.session.MAX_IMAGE_PIXELS``).
      max_text_chars: the characters of all messages together.
    """

    max_n: int = 4
    max_tokens: int = 256
    max_stop: int = 4
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_text_chars: int = 32_000


@dataclasses.dataclass(frozen=True)
class Message:
    """One message: its role, its text, and the encoded image it carries (or None)."""

    role: str
    text: str
    image: bytes | None = None


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


# Accepted and checked; anything else is refused by name (OpenAI does the same).
_KNOWN = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stop", "seed", "stream", "stream_options", "user", "frequency_penalty", "presence_penalty",
    "logprobs", "response_format",
}  # fmt: skip
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.I)


_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               type(None): "null", int: "an integer", float: "a number"}  # fmt: skip


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {_type_name(value)}", param=name)
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RequestError(f"{name}={value} is out of range: expected {limit}", param=name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a number, got {_type_name(value)}", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name}={value} is out of range: expected [{low}, {high}]", param=name)
    return float(value)


def _image(part: dict, where: str, limits: Limits) -> bytes:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise RequestError(
            f"{where}.image_url must be an object with a string url", param=f"{where}.image_url"
        )
    param = f"{where}.image_url.url"
    head = _DATA_URL.match(url)
    if head is None:
        if url.startswith(("http://", "https://")):
            raise RequestError(
                "remote image URLs are not fetched by this server; send the image inline as a "
                "data:image/<format>;base64,<data> URL",
                param=param,
                code="remote_image_not_supported",
            )
        raise RequestError(
            f"image URL must be data:image/<format>;base64,<data>, got {url[:40]!r}", param=param
        )
    data = url[head.end() :]
    if len(data) * 3 // 4 > limits.max_image_bytes + 2:  # checked before decoding
        raise RequestError(
            f"image is about {len(data) * 3 // 4 / 2**20:.1f} MB, more than the limit of "
            f"{limits.max_image_bytes / 2**20:.0f} MB",
            param=param,
            code="image_too_large",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            "image data is not valid base64", param=param, code="invalid_base64"
        ) from None
    if len(raw) > limits.max_image_bytes:
        raise RequestError(
            f"image is {len(raw) / 2**20:.1f} MB, more than the limit of "
            f"{limits.max_image_bytes / 2**20:.0f} MB",
            param=param,
            code="image_too_large",
        )
    if not raw:
        raise RequestError("image data is empty", param=param, code="invalid_image")
    return raw


def _message(i: int, m: Any, limits: Limits) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RequestError(f"{where} must be an object, got {_type_name(m)}", param=where)
    role = m.get("role")
    if role not in ("system", "user", "assistant"):
        raise RequestError(
            f"{where}.role must be 'system', 'user' or 'assistant', got {role!r}",
            param=f"{where}.role",
        )
    content = m.get("content")
    if isinstance(content, str):
        return Message(role, content)
    if not isinstance(content, list):
        raise RequestError(
            f"{where}.content must be a string or an array of parts, got {_type_name(content)}",
            param=f"{where}.content",
        )
    texts, image = [], None
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            if image is not None:
                raise RequestError(
                    "one image per conversation: the chat templates place a single image",
                    param=pw,
                )
            image = _image(part, pw, limits)
        else:
            raise RequestError(
                f"{pw} must be {{'type': 'text', 'text': str}}"
                + (
                    " or {'type': 'image_url', 'image_url': {'url': ...}}" if role == "user" else ""
                ),
                param=pw,
            )
    return Message(role, "\n".join(texts), image)


def parse_request(raw: bytes, limits: Limits) -> ChatRequest:
    """The JSON body of ``POST /v1/chat/completions`` as a checked ``ChatRequest``."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(
            f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_type_name(body)}")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise RequestError(f"unrecognized request argument: {unknown[0]}", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {_type_name(model)}", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array", param="messages")
    parsed = tuple(_message(i, m, limits) for i, m in enumerate(messages))
    if sum(m.image is not None for m in parsed) > 1:
        raise RequestError(
            "one image per conversation: the chat templates place a single image",
            param="messages",
        )
    if sum(len(m.text) for m in parsed) > limits.max_text_chars:
        raise RequestError(
            f"the messages are longer than {limits.max_text_chars} characters",
            param="messages",
            code="context_length_exceeded",
        )
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise RequestError(f"{name} is not supported (only 0)", param=name)
    if body.get("logprobs") not in (None, False):
        raise RequestError("logprobs are not supported", param="logprobs")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise RequestError("only response_format {'type': 'text'} is supported",
                           param="response_format")  # fmt: skip
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or an array of them", param="stop")
    if len(stop) > limits.max_stop:
        raise RequestError(f"at most {limits.max_stop} stop strings, got {len(stop)}",
                           param="stop")  # fmt: skip
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be a boolean, got {_type_name(stream)}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError("stream_options must be {'include_usage': bool}",
                           param="stream_options")  # fmt: skip
    return ChatRequest(
        model=model,
        messages=parsed,
        max_tokens=_integer(body, name, None, 1, limits.max_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-6,  # 0 keeps the top token only
        n=_integer(body, "n", 1, 1, limits.max_n),
        stop=tuple(stop),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )
