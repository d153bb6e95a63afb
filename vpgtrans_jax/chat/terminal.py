"""The terminal chat behind ``scripts/chat.py``: answers stream as they are generated.

Commands: ``/image PATH`` (a new image, a new conversation), ``/reset`` (forget the
conversation, keep the image), ``/quit`` (or end of input). A refused input (a missing or huge
image, an empty or too long message) prints ``error: <reason>`` on stderr and the chat goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from vpgtrans_jax.chat.session import ChatSession, ChatSettings, limits_text
from vpgtrans_jax.errors import ChatInputError

HELP = "Commands: /image PATH (new image), /reset (forget the conversation), /quit."


def answer(session: ChatSession, message: str, settings: ChatSettings, out: TextIO) -> str:
    """Streams one answer to ``out`` (a notice first if the history was cut); returns it."""
    reply = session.ask(message, settings)
    if reply.notice:
        print(reply.notice, file=out, flush=True)
    for piece in reply:
        out.write(piece)
        out.flush()
    out.write("\n")
    return reply.text


def run(
    session: ChatSession,
    settings: ChatSettings,
    *,
    image: str | None = None,
    asks: Sequence[str] | None = None,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> None:
    """With ``asks``: answers each in turn (one conversation) and returns; a refused one
    raises. Otherwise reads messages and commands from ``stdin`` until ``/quit`` or its end."""
    if image:
        session.set_image(image)
    if asks is not None:
        for message in asks:
            answer(session, message, settings, out)
        return
    chat = session.chat
    print(f"Chat with {chat.name} (template {chat.template.name}). {HELP}", file=out)
    print(limits_text(), file=out)
    if session.pixels is None:
        print("Give an image first: /image PATH", file=out)
    while True:
        out.write("> ")
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return
        line = line.strip()
        try:
            if line == "/quit":
                return
            if line == "/reset":
                session.reset()
                print("(conversation cleared; same image)", file=out)
            elif line.startswith("/image"):
                path = line[len("/image") :].strip()
                if not path:
                    raise ChatInputError("/image needs a path: /image PATH")
                session.set_image(path)
                print(f"(new image {path}; new conversation)", file=out)
            elif line.startswith("/"):
                raise ChatInputError(f"unknown command {line.split()[0]!r}. {HELP}")
            else:
                answer(session, line, settings, out)
        except ChatInputError as e:
            out.flush()
            print(f"error: {' '.join(str(e).split())}", file=err, flush=True)


__all__ = ["run", "answer", "HELP"]
