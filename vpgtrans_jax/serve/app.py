"""The FastAPI application: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Every refusal is an OpenAI error object (``{"error": {"message", "type", "param", "code"}}``):
400 for a bad request (the next one is served as usual), 503 with ``Retry-After`` when the
engine's queue is full. The engine's worker starts and stops with the application.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from vpgtrans_jax.serve.completions import Completion
from vpgtrans_jax.serve.engine import Engine, QueueFull, emit_all
from vpgtrans_jax.serve.protocol import Limits, RequestError, parse_request
from vpgtrans_jax.serve.served_model import ServedModel

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


def _error(status: int, message: str, type: str, code: str | None, **headers: str) -> Any:
    from fastapi.responses import JSONResponse  # lazy: the serve extra

    err = RequestError(message, code=code, status=status, type=type)
    return JSONResponse(err.body(), status_code=status, headers=headers or None)


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                f"the request body is larger than {limit / 2**20:.1f} MB",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(served: ServedModel, engine: Engine, limits: Limits | None = None) -> Any:
    """The application serving ``served`` through ``engine`` (started on startup)."""
    from fastapi import FastAPI, Request  # lazy: the serve extra
    from fastapi.responses import JSONResponse, StreamingResponse  # lazy: the serve extra

    limits = limits or Limits()
    if limits.max_n > engine.max_batch:
        raise ValueError(
            f"max_n={limits.max_n} must be <= max_batch={engine.max_batch}: the choices of a "
            "request are decoded in one batch"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # One wake-up of the event loop per decoding step, whatever the batch size.
        engine.deliver = lambda events: loop.call_soon_threadsafe(emit_all, events)
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="vpgtrans-jax", lifespan=lifespan)
    created = int(time.time())
    # A base64 image is 4/3 of its bytes; the rest is text and JSON.
    body_limit = limits.max_image_bytes * 4 // 3 + 4 * limits.max_text_chars + 2**16

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> Any:
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "queued": engine.queued_rows}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": served.name, "object": "model", "created": created,
                 "owned_by": "vpgtrans-jax"}  # fmt: skip
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = parse_request(await _read_body(request, body_limit), limits)
        if req.model != served.name:
            raise RequestError(
                f"the model {req.model!r} is not served here; this server serves "
                f"{served.name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        image = await asyncio.to_thread(served.pixels, _image_of(req))
        prompt = served.encode(req.messages, image)
        max_tokens = served.max_tokens(prompt, req.max_tokens, limits)
        completion = Completion(served, req, prompt, max_tokens)
        try:
            engine.submit(completion.rows)
        except QueueFull as e:
            return _error(503, f"{e}; retry in {RETRY_AFTER_S} s", "server_error", "queue_full",
                          **{"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        if req.stream:
            return StreamingResponse(completion.sse(), media_type="text/event-stream")
        try:
            return await completion.response()
        except Exception as e:
            log.exception("a completion failed")
            return _error(500, f"generation failed: {e}", "server_error", None)
        finally:
            completion.cancel()

    return app


def _image_of(req: Any) -> bytes | None:
    for m in req.messages:
        if m.image is not None:
            return m.image
    return None
