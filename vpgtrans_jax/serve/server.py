"""Running the application with uvicorn: in the foreground (``scripts/serve.py``) or in a
background thread of this process (tests, ``bench``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import vpgtrans_jax
from vpgtrans_jax.chat.conversation import DEFAULT_TEMPLATE, get_template
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.data.text import load_tokenizer
from vpgtrans_jax.serve.app import create_app
from vpgtrans_jax.serve.engine import Engine
from vpgtrans_jax.serve.protocol import Limits
from vpgtrans_jax.serve.served_model import ServedModel, model_name

log = logging.getLogger(__name__)


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


def load_served(path: str, *, name: str = "", template: str = "", tokenizer: str = "",
                **load_kw: Any) -> ServedModel:  # fmt: skip
    """A model directory (or HF BLIP-2 directory) ready to serve: its tokenizer (``tokenizer``
    or the directory itself) and its chat template (``template``, else the one it records,
    else ``blip2``)."""
    model = vpgtrans_jax.load(path, **load_kw)
    tok = load_tokenizer(tokenizer or path)
    chosen = template or recorded_template(path) or DEFAULT_TEMPLATE
    return ServedModel(name or model_name(path), model, tok, get_template(chosen))


def recorded_template(path: str) -> str | None:
    """The chat template a model directory's manifest records (``info.chat_template``)."""
    if not model_dir.is_model_dir(path):
        return None
    return (model_dir.read_manifest(path).get("info") or {}).get("chat_template")
