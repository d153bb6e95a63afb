"""Running the application with uvicorn: in the foreground (``scripts/serve.py``) or in a
background thread of this process (tests, ``bench``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vpgtrans_jax.chat.session import ChatModel
from vpgtrans_jax.serve.app import create_app
from vpgtrans_jax.serve.engine import Engine
from vpgtrans_jax.serve.protocol import Limits
from vpgtrans_jax.serve.served_model import ServedModel, from_chat_model
from vpgtrans_jax.tiny.chat_model import ensure_tiny_chat_model

log = logging.getLogger(__name__)

TINY_NAME = "tiny-chat"  # what clients call the default model


def make_engine(served: ServedModel, **kw: Any) -> Engine:
    """An engine for ``served`` (``max_batch``, ``max_queue``, ``gather_ms`` as ``Engine``)."""
    return Engine(served.model, eos_token_ids=served.eos_token_ids,
                  pad_token_id=served.pad_token_id, **kw)  # fmt: skip


def serve(
    served: ServedModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    warm_up: bool = True,
    **engine_kw: Any,
) -> None:
    """Serves until interrupted (Ctrl-C stops uvicorn, then the engine)."""
    import uvicorn  # lazy: the serve extra

    engine = make_engine(served, **engine_kw)
    if warm_up:
        t = time.perf_counter()
        engine.warm_up()
        log.info("compiled the common shapes in %.1f s", time.perf_counter() - t)
    app = create_app(served, engine, limits)
    log.info("serving %s on http://%s:%d/v1", served.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


class BackgroundServer:
    """``with BackgroundServer(app) as s:`` serves ``app`` on ``s.url`` from a daemon thread
    (port 0: a free port), and shuts it down (engine included) on exit."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn  # lazy: the serve extra

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)


def load_served(path: str = "", *, name: str = "", template: str = "", tokenizer: str = "",
                dtype: str = "") -> ServedModel:  # fmt: skip
    """The model at ``path`` as the chat opens it (``ChatModel.load``: tokenizer and template
    from its directory unless given); without ``path``, the tiny chat model (trained once and
    cached, ``tiny.chat_model``) named ``tiny-chat``."""
    if not path:
        path, name = ensure_tiny_chat_model(), name or TINY_NAME
    chat = ChatModel.load(path, template=template, tokenizer=tokenizer, dtype=dtype)
    return from_chat_model(chat, name)
