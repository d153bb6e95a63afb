"""Load test: N concurrent streaming clients against the batching server, then against the same
server decoding one request at a time (``max_batch=1``), in alternating rounds of equal length.

Each client loops for the round's duration: a chat completion with an image, streamed (for the
time to the first token), counting the completion tokens the server reports. The figures of a
mode are requests/s, tokens/s, p50/p99 latency and time-to-first-token; the ratio of the
tokens/s of the two modes is measured in the same process on the same machine, so a shared or
busy CPU slows both. The clients run in a child process (they share the machine's cores with
the server, not its interpreter).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import multiprocessing
import os
import threading
import time
from typing import Any

import numpy as np

from vpgtrans_jax.serve.app import create_app
from vpgtrans_jax.serve.protocol import Limits, Message
from vpgtrans_jax.serve.served_model import ServedModel
from vpgtrans_jax.serve.server import BackgroundServer, make_engine
from vpgtrans_jax.tiny.prepare import ensure_synthetic
from vpgtrans_jax.train import presets

# Half descriptions (long answers), half questions (short ones), as in the tiny chat model's
# training data.
QUESTIONS = ("Describe this image in detail.", "what colour is the circle?",
             "Describe this image in detail.", "how many shapes are there?")  # fmt: skip


def image_urls(count: int = 64) -> list[str]:
    """Data URLs of the first ``count`` synthetic training images (the tiny models' world;
    generated once and cached)."""
    root = os.path.join(ensure_synthetic(presets.TINY_SYNTHETIC_DIR, 512, 64), "images", "train")
    urls = []
    for name in sorted(os.listdir(root))[:count]:
        with open(os.path.join(root, name), "rb") as f:
            kind = os.path.splitext(name)[1].lstrip(".").lower().replace("jpg", "jpeg")
            urls.append(f"data:image/{kind};base64," + base64.b64encode(f.read()).decode())
    return urls


@dataclasses.dataclass
class Sample:
    latency: float
    ttft: float
    tokens: int


def _one_request(conn: http.client.HTTPConnection, body: bytes) -> Sample:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, tokens = None, 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        if ttft is not None and b'"usage"' not in line and b'"error"' not in line:
            continue  # only the first content and the usage are read (the client is light)
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
            ttft = time.perf_counter() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    return Sample(latency, latency if ttft is None else ttft, tokens)


def run_load(
    url: str, model: str, clients: int, seconds: float, max_tokens: int, images: list[str]
) -> dict:
    """``clients`` threads send requests for ``seconds``; the figures of the run."""
    host, port = url.removeprefix("http://").split(":")
    samples: list[Sample] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        i = 0
        while time.perf_counter() < stop_at:
            image = images[(k * 7 + i) % len(images)]
            content = [{"type": "image_url", "image_url": {"url": image}},
                       {"type": "text", "text": QUESTIONS[(k + i) % len(QUESTIONS)]}]  # fmt: skip
            body = json.dumps({
                "model": model, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True},
            }).encode()  # fmt: skip
            try:
                s = _one_request(conn, body)
            except Exception as e:  # counted and reported, the client goes on
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=600)
                continue
            with lock:
                samples.append(s)
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array([s.latency for s in samples]) if samples else np.zeros(1)
    ttft = np.array([s.ttft for s in samples]) if samples else np.zeros(1)
    return {
        "requests": len(samples),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": elapsed,
        "requests_per_s": len(samples) / elapsed,
        "tokens_per_s": sum(s.tokens for s in samples) / elapsed,
        "p50_latency_s": float(np.percentile(lat, 50)),
        "p99_latency_s": float(np.percentile(lat, 99)),
        "p50_ttft_s": float(np.percentile(ttft, 50)),
        "p99_ttft_s": float(np.percentile(ttft, 99)),
    }


def bench_serve(
    served: ServedModel,
    *,
    clients: int = 32,
    seconds: float = 20.0,
    rounds: int = 1,
    max_tokens: int = 32,
    max_batch: int = 32,
    warm_up_seconds: float = 5.0,
    images: list[str] | None = None,
    gather_ms: float = 5.0,
) -> dict[str, Any]:
    """Alternating rounds of the batching server and the one-at-a-time server under the same
    load (``images``: data URLs, default ``image_urls()``). Returns the per-round figures and
    ``ratio`` (batched / one-at-a-time tokens/s over all rounds)."""
    modes = {"batched": max_batch, "one_at_a_time": 1}
    # The longest prompt of the load (its shape bucket is compiled before any request).
    longest = max(len(served.encode([Message("user", q)], np.zeros(0)).ids) for q in QUESTIONS)
    servers = {}
    for mode, batch in modes.items():
        engine = make_engine(
            served, max_batch=batch, max_queue=max(256, 4 * clients), gather_ms=gather_ms
        )
        engine.warm_up(longest, max_tokens)
        limits = Limits(max_n=min(Limits.max_n, batch))
        servers[mode] = BackgroundServer(create_app(served, engine, limits)).__enter__()
        servers[mode].engine = engine
    # The clients run in a child process, as real clients would: their parsing does not take
    # the server's interpreter lock.
    pool = multiprocessing.get_context("spawn").Pool(1)
    images = images or image_urls()
    try:
        for s in servers.values():  # the buckets this load reaches beyond warm_up's
            pool.apply(run_load, (s.url, served.name, clients, warm_up_seconds, max_tokens, images))
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode, s in servers.items():
                before = (s.engine.batches, s.engine.rows_decoded)
                args = (s.url, served.name, clients, seconds, max_tokens, images)
                r = pool.apply(run_load, args)
                batches = s.engine.batches - before[0]
                r["mean_batch"] = (s.engine.rows_decoded - before[1]) / max(batches, 1)
                results[mode].append(r)
    finally:
        pool.terminate()
        for s in servers.values():
            s.__exit__(None, None, None)
    total = {m: sum(r["tokens_per_s"] for r in rs) for m, rs in results.items()}
    return {
        "rounds": results,
        "ratio": total["batched"] / max(total["one_at_a_time"], 1e-9),
        "clients": clients,
        "seconds": seconds,
        "max_tokens": max_tokens,
        "gather_ms": gather_ms,
    }


def report(result: dict[str, Any]) -> str:
    """The figures as a table, one line per round and mode, then the ratio."""
    cols = ("requests_per_s", "tokens_per_s", "p50_latency_s", "p99_latency_s", "p50_ttft_s",
            "p99_ttft_s", "mean_batch")  # fmt: skip
    header = f"{'mode':<15}{'round':>6}" + "".join(f"{c:>16}" for c in cols) + f"{'errors':>8}"
    lines = [f"{result['clients']} clients, {result['seconds']:.0f} s per round, "
             f"max_tokens {result['max_tokens']}, temperature 0, gather_ms "
             f"{result['gather_ms']}", header]  # fmt: skip
    for mode, rounds in result["rounds"].items():
        for i, r in enumerate(rounds):
            lines.append(f"{mode:<15}{i:>6}" + "".join(f"{r[c]:>16.3f}" for c in cols)
                         + f"{r['errors']:>8}")  # fmt: skip
    lines.append(f"tokens/s ratio batched / one-at-a-time: {result['ratio']:.2f}x")
    return "\n".join(lines)
