"""Chat latency: time to the first token and tokens/s of streamed answers (scripts/bench_chat.py).

One chat turn's request (the template's prompt, left-padded to its bucket, the cache room of the
session) is answered ``reps`` times in three ways, all ``max_new_tokens`` long (EOS forbidden
until then, so every run does the same work):

- streamed, as the chat does it (``stream_tokens``): the first token's latency and tokens/s;
- the first streamed run of the process, compilation included (what the first question costs);
- ``generate``'s single ``while_loop`` on the same request: the peer the streamed tokens/s is
  compared with (the price of one host round trip per token).

Times are medians; the ratios are what to compare across machines.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np

from vpgtrans_jax.chat.session import ChatModel, ChatSettings
from vpgtrans_jax.data.text import encode_generation
from vpgtrans_jax.generation import GenerationConfig, generate_with_config
from vpgtrans_jax.generation.stream import stream_tokens
from vpgtrans_jax.tiny import scenes


@dataclasses.dataclass(frozen=True)
class Options:
    max_new_tokens: int = 32
    reps: int = 5
    question: str = "What color is the circle?"


def demo_image(seed: int = 0) -> bytes:
    """A synthetic scene (the tiny models' kind of image), JPEG-encoded."""
    rng = np.random.default_rng(seed)
    return scenes.encode_jpeg(scenes.render(scenes.sample_scene(rng), 64, rng))


def run(chat: ChatModel, opts: Options, image: bytes | str | None = None) -> dict[str, Any]:
    session = chat.session()
    session.set_image(image if image is not None else demo_image())
    n = opts.max_new_tokens
    session.conversation.ask(opts.question)
    session.conversation.fit(chat.count_tokens, chat.prompt_budget(ChatSettings(max_new_tokens=n)))
    prompt = session.conversation.prompt()
    list(chat.stream(session.pixels, prompt, ChatSettings(max_new_tokens=n)))  # sets the buckets
    t, room = chat.last_shape
    enc = encode_generation(chat.tokenizer, prompt, t)
    args = (chat.model, session.pixels, enc["input_ids"][None], enc["attention_mask"][None])
    offsets = enc["image_offset"][None] if "image_offset" in enc else None
    cfg = GenerationConfig.make(eos_token_id=chat.eos, pad_token_id=chat.pad, max_new_tokens=n,
                                min_new_tokens=n)  # fmt: skip

    def streamed() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        first, steps = None, 0
        for _ in stream_tokens(*args, cfg, jax.random.key(0), image_offsets=offsets, room=room):
            steps += 1
            first = first if first is not None else time.perf_counter() - t0
        return first, time.perf_counter() - t0, steps

    cold_first, cold_total, _ = streamed()
    runs = [streamed() for _ in range(opts.reps)]
    generate_with_config(*args, cfg, image_offsets=offsets).block_until_ready()  # compile
    looped = []
    for _ in range(opts.reps):
        t0 = time.perf_counter()
        generate_with_config(*args, cfg, image_offsets=offsets).block_until_ready()
        looped.append(time.perf_counter() - t0)
    first = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    steps = runs[0][2]
    result = {
        "model": chat.name,
        "template": chat.template.name,
        "prompt_columns": t,
        "room": room,
        "new_tokens": steps,
        "first_token_s": first,
        "first_token_cold_s": cold_first,
        "stream_tokens_per_s": (steps - 1) / max(total - first, 1e-9),
        "generate_tokens_per_s": steps / statistics.median(looped),
    }
    result["stream_vs_generate"] = result["stream_tokens_per_s"] / result["generate_tokens_per_s"]
    _print(result, opts)
    return result


def _print(r: dict[str, Any], opts: Options) -> None:
    print(f"chat bench: {r['model']} ({r['template']}), prompt {r['prompt_columns']} columns, "
          f"{r['new_tokens']} new tokens, median of {opts.reps}")  # fmt: skip
    print(f"  time to first token      {r['first_token_s'] * 1e3:9.1f} ms")
    print(f"  ... first run (compiles) {r['first_token_cold_s'] * 1e3:9.1f} ms")
    print(f"  streamed                 {r['stream_tokens_per_s']:9.1f} tokens/s")
    print(f"  generate (one loop)      {r['generate_tokens_per_s']:9.1f} tokens/s")
    print(f"  streamed / generate      {r['stream_vs_generate']:9.2f}x")


__all__ = ["Options", "run", "demo_image"]
