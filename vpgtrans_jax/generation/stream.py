"""Streaming generation: new tokens handed out as they are produced, then text increments.

``stream_tokens`` runs the same computation as ``generate`` (``decode.start`` for the prompt,
``greedy.choose`` per token) but one jitted step per token instead of one ``while_loop``, so a
caller sees each token as soon as it exists: greedy output equals ``generate``'s token for token,
and sampling with the same key draws the same tokens. Two programs are compiled per (model
structure, settings, prompt length, cache room): the prefill and the one-token step; a chat that
pads its prompts and its answer room to a few lengths compiles them once per length, never per
turn (``TRACES`` counts how often each was traced). Beam search needs every step before it knows
its best hypothesis: it runs ``generate``'s loop and hands the tokens out when it is done.

``TextStream`` turns a row's tokens into text increments for a terminal or a web page.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpgtrans_jax.generation.config import GenerationConfig
from vpgtrans_jax.generation.decode import _decode_jit, checked_inputs, start
from vpgtrans_jax.generation.greedy import choose
from vpgtrans_jax.models.vl_model import VLModel

# How many times each streaming program was traced (= compiled) in this process.
TRACES: collections.Counter[str] = collections.Counter()


def _prefill(
    model: VLModel,
    pixel_values: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    key: jax.Array,
    cfg: GenerationConfig,
    image_offsets: jax.Array | None,
) -> tuple[jax.Array, dict[str, Any]]:
    """The prompt into the cache and the first new token: (int32[N], the decoding state)."""
    TRACES["prefill"] += 1
    logits, cache, full_mask, positions, prompt_seen = start(
        model, pixel_values, input_ids, attention_mask, cfg, image_offsets
    )
    tokens = jnp.full((logits.shape[0], cfg.max_new_tokens), cfg.pad_token_id, jnp.int32)
    tok = choose(logits, cfg, jnp.int32(0), tokens, prompt_seen, key)
    state = {
        "cache": cache,
        "full_mask": full_mask,
        "positions": positions,
        "prompt_seen": prompt_seen,
        "tokens": tokens.at[:, 0].set(tok),
        "finished": jnp.isin(tok, jnp.asarray(cfg.eos_token_ids, jnp.int32)),
        "key": key,
    }
    return tok, state


def _step(
    model: VLModel, state: dict[str, Any], i: jax.Array, cfg: GenerationConfig
) -> tuple[jax.Array, dict[str, Any]]:
    """New token number ``i`` (int32 scalar, >= 1): feeds token ``i - 1`` back, as
    ``greedy_or_sample``'s loop body does. Returns (int32[N], the advanced state)."""
    TRACES["step"] += 1
    tokens = state["tokens"]
    logits, cache = model.decode_step(
        tokens[:, i - 1], state["cache"], state["full_mask"], state["positions"] + i - 1
    )
    tok = choose(logits, cfg, i, tokens, state["prompt_seen"], state["key"])
    tok = jnp.where(state["finished"], cfg.pad_token_id, tok)
    eos = jnp.asarray(cfg.eos_token_ids, jnp.int32)
    return tok, {
        **state,
        "cache": cache,
        "tokens": jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], i, axis=1),
        "finished": state["finished"] | jnp.isin(tok, eos),
    }


_prefill_jit = jax.jit(_prefill, static_argnames=("cfg",))
# The state (the KV cache above all) is donated: each step updates it in place.
_step_jit = jax.jit(_step, static_argnames=("cfg",), donate_argnames=("state",))


def stream_tokens(
    model: VLModel,
    pixel_values: Any,
    input_ids: Any,
    attention_mask: Any,
    cfg: GenerationConfig,
    key: jax.Array,
    *,
    image_offsets: Any = None,
    room: int | None = None,
) -> Iterator[np.ndarray]:
    """Yields the batch's new tokens one step at a time.

    Args:
      model, pixel_values, input_ids, attention_mask, image_offsets: as ``generate`` (float[B,
        H, W, 3] images, int[B, T] LEFT-padded prompts).
      cfg: the decoding settings; ``cfg.max_new_tokens`` steps at most.
      key: a ``jax.random.key`` (sampling only; the same key draws the same tokens).
      room: cache slots reserved for new tokens (default and minimum ``cfg.max_new_tokens``);
        a fixed room lets requests with different ``max_new_tokens`` share one compilation.
        Ignored by beam search, whose result depends on its maximum length.

    Yields:
      int32[B * expand] per step (numpy): token ``i`` of every row; ``pad_token_id`` for rows
      that already ended. Stops after the step in which the last row produced an EOS, or after
      ``max_new_tokens`` steps. Beam search yields its best sequences' steps all at the end.
    """
    pixels, ids, mask, offsets = checked_inputs(
        model, pixel_values, input_ids, attention_mask, cfg, image_offsets
    )
    if cfg.is_beam:
        yield from _columns(np.asarray(_decode_jit(model, pixels, ids, mask, key, cfg=cfg,
                                                   image_offsets=offsets)), cfg)  # fmt: skip
        return
    room = cfg.max_new_tokens if room is None else room
    if room < cfg.max_new_tokens:
        raise ValueError(f"room={room} is less than max_new_tokens={cfg.max_new_tokens}")
    compiled_cfg = dataclasses.replace(cfg, max_new_tokens=room)
    tok, state = _prefill_jit(model, pixels, ids, mask, key, cfg=compiled_cfg,
                              image_offsets=offsets)  # fmt: skip
    eos = np.asarray(cfg.eos_token_ids)
    tok = np.asarray(tok)
    finished = np.isin(tok, eos)
    yield tok
    for i in range(1, cfg.max_new_tokens):
        if finished.all():
            return
        tok, state = _step_jit(model, state, jnp.int32(i), cfg=compiled_cfg)
        tok = np.asarray(tok)
        finished |= np.isin(tok, eos)
        yield tok


def _columns(tokens: np.ndarray, cfg: GenerationConfig) -> Iterator[np.ndarray]:
    """int[N, M] finished sequences as steps, up to the step where the last row ended."""
    ended = np.isin(tokens, np.asarray(cfg.eos_token_ids))
    last = ended.argmax(axis=1)
    steps = int(last.max()) + 1 if ended.any(axis=1).all() else tokens.shape[1]
    for i in range(steps):
        yield tokens[:, i]


class TextStream:
    """One row's tokens -> text increments, as ``decode_outputs`` would decode the whole row.

    ``push(token)`` returns the text that became certain (possibly ""): text after an EOS,
    after the ``end`` string, or that may still turn into ``end`` (a trailing ``"#"`` when
    ``end="###"``) or into another character (an incomplete UTF-8 sequence) is held back.
    ``done`` turns true at an EOS or ``end``; the joined increments then equal ``text``, which
    equals ``decode_outputs`` of the same tokens.
    """

    def __init__(
        self, tokenizer: Any, eos_token_ids: Sequence[int], pad_token_id: int, end: str | None
    ):
        self._tokenizer = tokenizer
        self._eos = {int(e) for e in eos_token_ids}
        self._pad = int(pad_token_id)
        self._end = end or None
        self._ids: list[int] = []
        self._shown = ""
        self.done = False

    @property
    def text(self) -> str:
        """The whole answer so far, cut at ``end`` and stripped."""
        return self._decoded()[0].strip()

    def _decoded(self) -> tuple[str, bool]:
        """(the text of the tokens so far cut at ``end``, whether ``end`` was found)."""
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if self._end and self._end in text:
            return text.split(self._end, 1)[0], True
        return text, False

    def push(self, token: int) -> str:
        if self.done:
            return ""
        token = int(token)
        if token in self._eos:
            self.done = True
        elif token != self._pad:
            self._ids.append(token)
        text, hit_end = self._decoded()
        self.done |= hit_end
        return self._advance(text)

    def finish(self) -> str:
        """Ends the stream (e.g. at the token limit) and returns whatever was held back."""
        self.done = True
        return self._advance(self._decoded()[0])

    def _advance(self, text: str) -> str:
        text = text.lstrip()
        if self.done:
            text = text.rstrip()
        else:
            text = _certain_part(text, self._end)
        if not text.startswith(self._shown):
            return ""  # a decoding that rewrote shown text (rare): wait until it agrees again
        new, self._shown = text[len(self._shown) :], text
        return new


def _certain_part(text: str, end: str | None) -> str:
    """``text`` without its tail that may still change: a replacement character (bytes of an
    unfinished character), a start of ``end``, or trailing spaces (stripped at the end)."""
    text = text.rstrip("\ufffd")
    if end:
        for n in range(min(len(end) - 1, len(text)), 0, -1):
            if text.endswith(end[:n]):
                text = text[:-n]
                break
    return text.rstrip()


__all__ = ["stream_tokens", "TextStream", "TRACES"]
