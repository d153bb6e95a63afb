"""One chat completion in flight: engine rows in, OpenAI response objects and chunks out.

The engine's worker thread hands each row's tokens to the event loop (``call_soon_threadsafe``
into one queue per request); there a ``Choice`` per row turns tokens into text with the chat
template's end (``TextStream``) and the request's stop strings (``StopStrings``), and cancels
its row when either is reached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from vpgtrans_jax.generation.stream import TextStream
from vpgtrans_jax.serve.engine import STOP, Event, Row
from vpgtrans_jax.serve.protocol import ChatRequest
from vpgtrans_jax.serve.served_model import Prompt, ServedModel


class StopStrings:
    """Cuts text at the first of ``stops``; holds back a tail that may still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.held = ""
        self.done = False

    def push(self, text: str) -> str:
        """The part of ``text`` (after what was held) that is certainly output."""
        if self.done:
            return ""
        buf = self.held + text
        hits = [buf.find(s) for s in self.stops if s in buf]
        if hits:
            self.done, self.held = True, ""
            return buf[: min(hits)]
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.done else self.held), ""
        return out


@dataclasses.dataclass
class Choice:
    """The consumer side of one row."""

    index: int
    text: TextStream
    stops: StopStrings
    row: Row | None = None
    tokens: int = 0
    finish_reason: str | None = None
    content: str = ""

    def on_token(self, token: int) -> str:
        """A new token -> the text it makes certain ("" possibly); may finish the choice."""
        self.tokens += 1
        out = self.stops.push(self.text.push(token))
        if self.text.done or self.stops.done:
            out += self.stops.push(self.text.finish()) + self.stops.flush()
            self._finish(STOP)
        self.content += out
        return out

    def on_end(self, reason: str) -> str:
        """The engine ended the row (its end token or its max_tokens): the held-back text."""
        out = self.stops.push(self.text.finish())
        out += self.stops.flush()
        self._finish(STOP if self.stops.done else reason)
        self.content += out
        return out

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        if self.row is not None:
            self.row.cancelled = True  # the engine stops decoding it at its next step


class Completion:
    """The rows of one request, their consumers, and the response they add up to."""

    def __init__(
        self,
        served: ServedModel,
        request: ChatRequest,
        prompt: Prompt,
        max_tokens: int,
    ):
        self.served = served
        self.request = request
        self.prompt = prompt
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self._prefix: str | None = None
        self.created = int(time.time())
        self.events: asyncio.Queue[tuple[int, int | str | Exception]] = asyncio.Queue()
        seed = secrets.randbits(32) if request.seed is None else request.seed
        self.choices = []
        rows = []
        for i in range(request.n):
            choice = Choice(
                i,
                TextStream(served.tokenizer, served.eos_token_ids, served.pad_token_id,
                           served.text_end),
                StopStrings(request.stop),
            )  # fmt: skip

            def emit(event: Event, i: int = i) -> None:  # on the event loop (engine.deliver)
                self.events.put_nowait((i, event))

            choice.row = Row(
                prompt=prompt.ids,
                image_at=prompt.image_at,
                pixels=prompt.pixels,
                max_new_tokens=max_tokens,
                emit=emit,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed,
                stream=i,
            )
            self.choices.append(choice)
            rows.append(choice.row)
        self.rows = rows

    def cancel(self) -> None:
        for c in self.choices:
            if c.row is not None:
                c.row.cancelled = True

    async def deltas(self) -> AsyncIterator[list[tuple[int, str, str | None]]]:
        """Lists of (choice index, new text, finish reason or None): what arrived since the
        last list (at least one event), until every choice has finished. An engine failure is
        raised here."""
        left = len(self.choices)
        while left:
            events = [await self.events.get()]
            while not self.events.empty():
                events.append(self.events.get_nowait())
            out = []
            for i, event in events:
                c = self.choices[i]
                if c.finish_reason is not None:
                    continue  # events of a row after its consumer finished it
                if isinstance(event, Exception):
                    raise event
                text = c.on_end(event) if isinstance(event, str) else c.on_token(event)
                if c.finish_reason is not None:
                    left -= 1
                out.append((i, text, c.finish_reason))
            yield out

    def usage(self) -> dict[str, int]:
        prompt = len(self.prompt.ids) + self.served.num_query_tokens
        done = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": done,
                "total_tokens": prompt + done}  # fmt: skip

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.served.name, "system_fingerprint": None}  # fmt: skip

    async def response(self) -> dict[str, Any]:
        """The whole ``chat.completion`` object."""
        async for _ in self.deltas():
            pass
        choices = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.content},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in self.choices
        ]
        return {**self._head("chat.completion"), "choices": choices, "usage": self.usage()}

    def _content_chunk(self, i: int, text: str) -> str:
        """``_chunk([delta(i, {"content": text})])``, from a prefix serialised once (this is the
        event sent per token and per choice)."""
        if self._prefix is None:
            head = json.dumps(self._head("chat.completion.chunk"))[:-1]
            self._prefix = f'data: {head}, "choices": [{{"index": '
        return (f'{self._prefix}{i}, "delta": {{"content": {json.dumps(text)}}}, '
                '"logprobs": null, "finish_reason": null}]}\n\n')  # fmt: skip

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {**self._head("chat.completion.chunk"), "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""

        def delta(i: int, d: dict[str, str], reason: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": d, "logprobs": None, "finish_reason": reason}

        try:
            yield self._chunk([delta(c.index, {"role": "assistant", "content": ""})
                               for c in self.choices])  # fmt: skip
            try:
                async for events in self.deltas():
                    chunks = []  # sent together: one write for what arrived together
                    for i, text, reason in events:
                        if text:
                            chunks.append(self._content_chunk(i, text))
                        if reason is not None:
                            chunks.append(self._chunk([delta(i, {}, reason)]))
                    if chunks:
                        yield "".join(chunks)
            except Exception as e:  # the response has started: the error goes in the stream
                error = {"message": f"generation failed: {e}", "type": "server_error",
                         "param": None, "code": None}  # fmt: skip
                yield f"data: {json.dumps({'error': error})}\n\n"
            if self.request.include_usage:
                yield self._chunk([], usage=self.usage())
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # the client left early: free the rows
