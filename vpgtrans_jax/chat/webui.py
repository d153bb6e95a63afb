"""The gradio web UI behind ``scripts/webui.py``: upload an image, chat, answers stream in.

One ``ChatSession`` per browser tab (gradio ``State``) on one shared ``ChatModel``; requests
run one at a time through gradio's queue, which holds at most ``max_queue`` waiting ones. The
upload is a plain file (gradio does not decode it), so the session's limits apply before any
pixel is decoded; a refused input shows its one-line reason in the page and the server goes on.
Binds 127.0.0.1 unless told otherwise; a public gradio link only with ``share=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from vpgtrans_jax.chat.session import (
    MAX_BEAMS,
    MAX_IMAGE_BYTES,
    ChatModel,
    ChatSession,
    ChatSettings,
    limits_text,
)
from vpgtrans_jax.data.processors import CLIP_MEAN, CLIP_STD
from vpgtrans_jax.errors import ChatInputError

MAX_QUEUE = 16


def _preview(pixels: np.ndarray) -> np.ndarray:
    """The model's view of the image (float32[1, S, S, 3], normalised) as uint8 RGB."""
    x = pixels[0] * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _refused(e: ChatInputError) -> str:
    return f"**Refused:** {' '.join(str(e).split())}"


def build(chat: ChatModel) -> Any:
    """The gradio Blocks app for ``chat`` (not launched)."""
    import gradio as gr  # lazy: the web UI's optional dependency (.[demo])

    def session_of(state: ChatSession | None) -> ChatSession:
        return state if state is not None else chat.session()

    def on_image(file: str | None, state: ChatSession | None):
        """Returns (state, preview, chat, status, upload box): the box is emptied for the next
        upload; a refused image changes nothing else."""
        session = session_of(state)
        if not file:
            return session, gr.update(), gr.update(), "", None
        try:
            session.set_image(file)
        except ChatInputError as e:
            return session, gr.update(), gr.update(), _refused(e), None
        name = os.path.basename(file)
        status = f"Image {name} ready: ask about it."
        return session, _preview(session.pixels), [], status, None

    def on_message(
        message: str, history: list, state: ChatSession | None, beams: float,
        temperature: float, top_p: float, max_new: float,
    ) -> Iterator[tuple]:  # fmt: skip
        session = session_of(state)
        history = list(history or [])
        settings = ChatSettings(max_new_tokens=int(max_new), num_beams=int(beams),
                                temperature=float(temperature), top_p=float(top_p))  # fmt: skip
        try:
            reply = session.ask(message, settings)
        except ChatInputError as e:
            yield message, history, session, _refused(e)
            return
        history += [{"role": "user", "content": message.strip()},
                    {"role": "assistant", "content": ""}]  # fmt: skip
        status = reply.notice or ""
        yield "", history, session, status
        for _ in reply:  # each increment re-renders the whole answer so far
            history[-1] = {"role": "assistant", "content": reply.text}
            yield "", history, session, status
        history[-1] = {"role": "assistant", "content": reply.text}
        yield "", history, session, status + (" " if status else "") + "(answer complete)"

    def on_clear(state: ChatSession | None):
        session = session_of(state)
        session.reset()
        return session, [], "", "Conversation cleared; the image stays."

    with gr.Blocks(title="VPGTrans chat") as demo:
        gr.Markdown(
            f"## VPGTrans chat: {chat.name}\nTemplate `{chat.template.name}`. Upload an image, "
            f"then ask about it. {limits_text()}"
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", file_types=["image"], type="filepath",
                                 elem_id="image-upload")  # fmt: skip
                preview = gr.Image(label="What the model sees", interactive=False, height=224)
                with gr.Accordion("Settings", open=False):
                    beams = gr.Slider(1, MAX_BEAMS, value=1, step=1, label="Beams")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05,
                                            label="Temperature (0 = greedy)")  # fmt: skip
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                    max_new = gr.Slider(8, 256, value=64, step=8, label="Max new tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420)
                status = gr.Markdown("", elem_id="status")
                with gr.Row():
                    message = gr.Textbox(placeholder="Ask about the image", show_label=False,
                                         elem_id="message", scale=4)  # fmt: skip
                    send = gr.Button("Send", elem_id="send", variant="primary", scale=1)
                clear = gr.Button("Clear conversation", elem_id="clear")
        upload.upload(on_image, [upload, state], [state, preview, chatbot, status, upload])
        inputs = [message, chatbot, state, beams, temperature, top_p, max_new]
        outputs = [message, chatbot, state, status]
        message.submit(on_message, inputs, outputs)
        send.click(on_message, inputs, outputs)
        clear.click(on_clear, [state], [state, chatbot, message, status])
    return demo


def serve(
    chat: ChatModel,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_queue: int = MAX_QUEUE,
) -> None:
    """Serves the web UI until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build(chat)
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    # Uploads over twice the image limit are cut off by gradio itself; smaller ones get our
    # one-line reason.
    demo.launch(server_name=host, server_port=port, share=share,
                max_file_size=2 * MAX_IMAGE_BYTES, show_error=True)  # fmt: skip


__all__ = ["build", "serve", "MAX_QUEUE"]
