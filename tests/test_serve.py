"""The OpenAI-compatible server, driven by the official ``openai`` client on 127.0.0.1.

The chat tests' tiny random LLaMA-style model directory (synthetic tokenizer, ``vicuna_v0``
recorded) is served in-process (uvicorn in a thread) for the whole module; requests stay in
one bucket of prompt columns and cache slots, so the shapes compile once.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.chat_util import make_chat_model_dir
from tests.scripts_util import run_script
from vpgtrans_jax.chat.session import ChatModel
from vpgtrans_jax.generation import generate
from vpgtrans_jax.serve import bench
from vpgtrans_jax.serve import engine as engine_lib
from vpgtrans_jax.serve.app import create_app
from vpgtrans_jax.serve.protocol import Limits
from vpgtrans_jax.serve.served_model import from_chat_model
from vpgtrans_jax.serve.server import BackgroundServer, make_engine

LIMITS = Limits(max_n=2, max_tokens=24, max_image_bytes=100_000)
MAX_BATCH, MAX_QUEUE = 2, 4  # few row buckets: few compilations


def _png(size: tuple[int, int], colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's trick)."""
    data = bytearray(_png((8, 8)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # and its checksum
    return bytes(data)


def _data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path, _ = make_chat_model_dir(str(tmp_path_factory.mktemp("serve")))
    return from_chat_model(ChatModel.load(path), "tiny-test")


@pytest.fixture(scope="module")
def server(served):
    engine = make_engine(served, max_batch=MAX_BATCH, max_queue=MAX_QUEUE, gather_ms=20)
    engine.warm_up(prompt_tokens=32, max_new_tokens=LIMITS.max_tokens)
    with BackgroundServer(create_app(served, engine, LIMITS)) as s:
        s.engine = engine
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _ask(client, content="what is the colour of the circle?", **kw):
    kw = {"model": "tiny-test", "max_tokens": 6, "temperature": 0, **kw}
    messages = [{"role": "user", "content": content}]
    return client.chat.completions.create(messages=messages, **kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-test"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_plain_completion_is_greedy_and_counted(client):
    r = _ask(client)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens > 8  # the text plus the 8 image tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert _ask(client).choices[0].message.content == choice.message.content


def test_streamed_equals_whole(client):
    whole = _ask(client, "describe the image", max_tokens=8).choices[0].message.content
    chunks = list(_ask(client, "describe the image", max_tokens=8, stream=True,
                       stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_image_and_text(client):
    content = [{"type": "image_url", "image_url": {"url": _data_url(_png((40, 30)))}},
               {"type": "text", "text": "what is the colour?"}]  # fmt: skip
    r = _ask(client, content)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_n_choices_reproducible_with_seed(client):
    r = _ask(client, n=2, temperature=1.0, top_p=0.9, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    again = _ask(client, n=2, temperature=1.0, top_p=0.9, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_stop_string_cuts_the_answer(client):
    whole = _ask(client, "what is it", max_tokens=12).choices[0].message.content
    assert len(whole) >= 4, whole  # the fixed test model answers at length: something to cut
    stop = whole[2:4]
    r = _ask(client, "what is it", max_tokens=12, stop=[stop])
    assert r.choices[0].message.content == whole[: whole.find(stop)]
    assert r.choices[0].finish_reason == "stop"


BAD = {
    "invalid_json": (b'{"model": "tiny-test", "messages": [', "invalid_json", None),
    "messages_not_a_list": ({"messages": "hi"}, None, "messages"),
    "max_tokens_a_string": ({"max_tokens": "5"}, None, "max_tokens"),
    "temperature_a_string": ({"temperature": "hot"}, None, "temperature"),
    "bad_base64": ({"image": "data:image/png;base64,@@@not base64@@@"}, "invalid_base64", None),
    "not_an_image": ({"image": _data_url(b"just some text, not a picture")}, "invalid_image", None),
    "image_over_bytes": ({"image": _data_url(np.random.default_rng(0).bytes(150_000))},
                         "image_too_large", None),
    "image_over_pixels": ({"image": _data_url(_png_claiming(6000, 4000))}, "invalid_image", None),
    "remote_url": ({"image": "https://example.com/cat.png"}, "remote_image_not_supported", None),
    "unknown_model": ({"model": "gpt-4o"}, "model_not_found", "model"),
    "prompt_too_long": ({"text": "red blue green circle " * 60}, "context_length_exceeded", None),
    "n_over_limit": ({"n": 3}, None, "n"),
    "max_tokens_over_limit": ({"max_tokens": 1000}, None, "max_tokens"),
}  # fmt: skip


def _bad_body(spec) -> bytes:
    if isinstance(spec, bytes):
        return spec
    spec = dict(spec)
    content: list | str = spec.pop("text", "what is it?")
    if "image" in spec:
        content = [{"type": "image_url", "image_url": {"url": spec.pop("image")}},
                   {"type": "text", "text": content}]  # fmt: skip
    body = {"model": "tiny-test", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, **spec}  # fmt: skip
    return json.dumps(body).encode()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_request_is_400_and_the_next_is_served(server, client, name):
    spec, code, param = BAD[name]
    r = httpx.post(server.url + "/v1/chat/completions", content=_bad_body(spec),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if code:
        assert error["code"] == code, error
    if param:
        assert error["param"] == param, error
    assert _ask(client, max_tokens=2).choices[0].message is not None


def test_openai_client_sees_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, model="no-such-model")
    assert e.value.body["code"] == "model_not_found"


def test_full_queue_is_503_with_retry_after(server, client):
    engine = server.engine
    engine.hold(True)  # nothing is decoded: requests stay queued
    results = []
    waiting = [threading.Thread(target=lambda: results.append(_ask(client, n=2)))
               for _ in range(MAX_QUEUE // 2)]  # fmt: skip
    try:
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 60
        while engine.queued_rows < MAX_QUEUE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.queued_rows == MAX_QUEUE
        with pytest.raises(openai.APIStatusError) as e:
            _ask(client)
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "queue_full"
    finally:
        engine.hold(False)
        for t in waiting:
            t.join(timeout=120)
    assert len(results) == len(waiting) and all(len(r.choices) == 2 for r in results)


def test_steady_state_compiles_nothing(server, client):
    """After warm-up, concurrent requests of other lengths, settings and batch sizes reuse the
    compiled programs."""
    before = dict(engine_lib.TRACES)
    prompts = ["what", "what is the colour of the square on the left", "describe the image"]
    done = []
    ask = lambda *a, **kw: done.append(_ask(*a, **kw))
    threads = [  # 4 sequences: the queue's size
        threading.Thread(target=ask, args=(client, prompts[i]),
                         kwargs={"max_tokens": 3 + 5 * i, "temperature": 0.5 * i, "n": 1 + i % 2})
        for i in range(3)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 3
    assert dict(engine_lib.TRACES) == before


def test_batched_greedy_equals_generate_alone(served):
    """Rows of different prompts, images and lengths decoded in one batch give each the tokens
    ``generate`` gives it alone."""
    engine = make_engine(served, max_batch=MAX_BATCH)
    rng = np.random.default_rng(0)
    rows, outputs = [], []
    for n, image_at, new in ((5, 2, 6), (17, 0, 9)):
        out: list = []
        outputs.append(out)
        rows.append(engine_lib.Row(
            rng.integers(3, 256, n).tolist(), image_at,
            rng.normal(size=(64, 64, 3)).astype(np.float32), new, out.append,
        ))  # fmt: skip
    engine.run_batch(rows)
    for row, out in zip(rows, outputs, strict=True):
        # Alone, padded on the left to one width (one compilation of ``generate`` serves both).
        pad = 17 - len(row.prompt)
        alone = generate(
            served.model, row.pixels[None], np.asarray([[0] * pad + row.prompt]),
            np.asarray([[0] * pad + [1] * len(row.prompt)]), max_new_tokens=9,
            eos_token_id=served.eos_token_ids, pad_token_id=served.pad_token_id,
            image_offsets=np.asarray([pad + row.image_at]),
        )  # fmt: skip
        tokens = [t for t in out if isinstance(t, int)]
        expect = [int(t) for t in np.asarray(alone)[0]][: row.max_new_tokens]
        end = next((i for i, t in enumerate(expect) if t in served.eos_token_ids), len(expect))
        assert tokens == expect[:end]
        assert out[-1] == ("stop" if end < len(expect) else "length")


def test_bench_reports_both_modes_and_their_ratio(served, server):
    """A short run of the load test (the shapes are the module server's, compiled already)."""
    result = bench.bench_serve(
        served, clients=2, seconds=1.0, max_tokens=LIMITS.max_tokens, max_batch=MAX_BATCH,
        warm_up_seconds=0.2, images=[_data_url(_png((32, 32)))],
    )  # fmt: skip
    for mode in ("batched", "one_at_a_time"):
        (r,) = result["rounds"][mode]
        assert r["errors"] == 0 and r["requests"] >= 1 and r["tokens_per_s"] > 0
        assert 0 < r["p50_ttft_s"] <= r["p99_latency_s"] and r["mean_batch"] >= 1
    assert result["ratio"] > 0
    assert "tokens/s ratio batched / one-at-a-time" in bench.report(result)


def test_serve_script_binds_localhost_and_reports_a_missing_model(tmp_path):
    r = run_script("scripts/serve.py", "--help", timeout=120)
    assert r.returncode == 0 and "--host: address to bind" in r.stdout
    assert "(default: '127.0.0.1')" in r.stdout.split("--host:", 1)[1].split("--", 1)[0]
    r = run_script("scripts/serve.py", f"--model={tmp_path / 'nothing'}", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:")
