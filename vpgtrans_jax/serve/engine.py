"""Dynamic batching: requests that arrive together are decoded together.

A worker thread takes queued requests, waits a few milliseconds for more (up to ``max_batch``
rows), and decodes them as one batch: one jitted prefill of every prompt, then one jitted step
per token for all rows, each row handing its tokens to its consumer as they come and stopping
at its own end (an end-of-answer token, its ``max_new_tokens``, or its consumer cancelling it
after a stop string). Shapes are padded to a few static buckets (rows: powers of two up to
``max_batch``; prompt columns and cache slots: powers of two up to the LLM's context), so a
server in steady state compiles nothing: ``TRACES`` counts the compilations.

Requests queued while a batch decodes wait for it to end (the KV cache is one block with one
write index, so a row cannot join a batch half-way).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vpgtrans_jax.data.text import bucket_length
from vpgtrans_jax.generation.config import GenerationConfig
from vpgtrans_jax.generation.decode import start
from vpgtrans_jax.generation.rows import choose_rows, row_keys
from vpgtrans_jax.models.vl_model import VLModel

log = logging.getLogger(__name__)

# How many times each program was traced (= compiled) in this process, by kind.
TRACES: collections.Counter[str] = collections.Counter()

STOP, LENGTH = "stop", "length"  # OpenAI's finish reasons
Event = int | str | Exception  # a token, a finish reason, or a failure


class QueueFull(RuntimeError):
    """The engine's queue holds ``max_queue`` rows: the caller should retry later."""


@dataclasses.dataclass(eq=False)
class Row:
    """One sequence to generate (a request with ``n`` choices is ``n`` rows).

    Attributes:
      prompt: the text prompt's token ids (the tokenizer's BOS included).
      image_at: the soft prompt goes after this many prompt tokens (0: before the text).
      pixels: float32[H, W, 3] normalised image.
      max_new_tokens: the row stops after this many new tokens.
      temperature: 0 = greedy; top_p: nucleus mass in (0, 1]; seed, stream: the row's random
        stream (``fold_in(key(seed), stream)``: the choices of a request share the seed).
      emit: called with each new token (an int), then once with the finish reason
        (``"stop"`` / ``"length"``) or an ``Exception`` if decoding failed; on the worker thread,
        or wherever the engine's ``deliver`` runs it.
      cancelled: set by the consumer (a stop string was reached, the client left): the row
        stops at the next step with reason ``"stop"``.
    """

    prompt: Sequence[int]
    image_at: int
    pixels: np.ndarray
    max_new_tokens: int
    emit: Callable[[Event], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stream: int = 0
    cancelled: bool = False


def powers_of_two(start: int, limit: int) -> tuple[int, ...]:
    """start, 2 start, 4 start, ... below ``limit``, then ``limit`` itself."""
    out = []
    b = start
    while b < limit:
        out.append(b)
        b *= 2
    return (*out, limit)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """A batch's static shapes: rows, prompt columns, cache slots (soft prompt + text + room)."""

    rows: int
    columns: int
    slots: int


class Engine:
    """Batches rows from many threads into jitted decoding on one worker thread.

    Args:
      model: the VL model (its parameters are split off once; the model is not changed).
      eos_token_ids: a row ends at any of these tokens (the chat template's end).
      pad_token_id: fills the prompt padding.
      max_batch: rows decoded together at most (a power of two keeps the buckets few).
      max_queue: rows waiting at most; ``submit`` raises ``QueueFull`` beyond.
      gather_ms: how long the worker waits for more requests after the first one.
      deliver: runs ``emit_all(events)`` for the events of one step (a list of (row, event));
        default: at once, on the worker thread. A server passes a function that hands them to
        its event loop in one wake-up per step instead of one per row.
    """

    def __init__(
        self,
        model: VLModel,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        max_batch: int = 32,
        max_queue: int = 256,
        gather_ms: float = 5.0,
        deliver: Callable[[list[tuple[Row, Event]]], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch} and max_queue={max_queue} must be >= 1")
        cfg = model.config
        self.num_query_tokens = cfg.num_query_tokens
        self.context = int(cfg.llm.max_position_embeddings)
        self.image_size = cfg.vision.image_size
        self.eos = frozenset(int(e) for e in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.gather_s = gather_ms / 1000.0
        self.room_limit = self.context - self.num_query_tokens  # prompt + new tokens
        if self.room_limit < 2:
            raise ValueError(
                f"the LLM's context ({self.context}) leaves no room beside the "
                f"{self.num_query_tokens} soft-prompt tokens"
            )
        self.row_buckets = powers_of_two(1, max_batch)
        self.column_buckets = powers_of_two(min(32, self.room_limit - 1), self.room_limit - 1)
        self.slot_buckets = powers_of_two(min(64, self.context), self.context)
        self.deliver = deliver or emit_all
        self.batches = self.rows_decoded = 0  # decoded by the worker, for a mean batch size
        self._graphdef, self._params = nnx.split(model)
        self._pending: collections.deque[list[Row]] = collections.deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._held = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, rows: Sequence[Row]) -> None:
        """Queues a request's rows (decoded in one batch). Raises ``QueueFull`` when the queue
        has no room, ValueError for a request that can never fit."""
        for r in rows:
            self.check_fits(len(r.prompt), r.max_new_tokens)
        if len(rows) > self.max_batch:
            raise ValueError(f"{len(rows)} choices > the batch size {self.max_batch}")
        with self._cond:
            if self._pending_rows + len(rows) > self.max_queue:
                raise QueueFull(f"the queue is full ({self._pending_rows} waiting sequences)")
            self._pending.append(list(rows))
            self._pending_rows += len(rows)
            self._cond.notify()

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """ValueError unless the soft prompt + ``prompt_tokens`` + ``max_new_tokens`` fit the
        LLM's context."""
        if prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                f"a row needs >= 1 prompt token and >= 1 new token, got {prompt_tokens} and "
                f"{max_new_tokens}"
            )
        if prompt_tokens + max_new_tokens > self.room_limit:
            raise ValueError(
                f"{prompt_tokens} prompt tokens + {max_new_tokens} new tokens + "
                f"{self.num_query_tokens} image tokens exceed the context of {self.context}"
            )

    @property
    def queued_rows(self) -> int:
        with self._cond:
            return self._pending_rows

    def start(self) -> None:
        """Starts the worker thread (idempotent)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="serve-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops the worker after its current batch; queued rows end with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            left, self._pending = list(self._pending), collections.deque()
            self._pending_rows = 0
        for rows in left:
            self.deliver([(r, RuntimeError("the server is shutting down")) for r in rows])

    def hold(self, held: bool) -> None:
        """While held, the worker starts no new batch (requests queue up); for maintenance
        windows and for tests of a full queue."""
        with self._cond:
            self._held = held
            self._cond.notify_all()

    def _take(self) -> list[Row] | None:
        """Waits for requests, then gathers until ``gather_ms`` pass without a new one (at
        most 8 ``gather_ms``: a burst of requests, parsed one after the other, makes one
        batch); None when stopping."""
        with self._cond:
            while not self._stopping and (self._held or not self._pending):
                self._cond.wait()
            if self._stopping:
                return None
            start = time.monotonic()
            deadline, seen = start + self.gather_s, self._pending_rows
            while self._pending_rows < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                if self._pending_rows > seen:
                    seen = self._pending_rows
                    deadline = min(time.monotonic() + self.gather_s, start + 8 * self.gather_s)
            batch: list[Row] = []
            while self._pending and len(batch) + len(self._pending[0]) <= self.max_batch:
                rows = self._pending.popleft()
                self._pending_rows -= len(rows)
                batch.extend(rows)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self.batches += 1
            self.rows_decoded += len(batch)
            try:
                self.run_batch(batch)
            except Exception as e:  # a failed batch fails its rows, never the server
                log.exception("decoding a batch of %d rows failed", len(batch))
                self.deliver([(r, e) for r in batch])

    # -- decoding -------------------------------------------------------------------------------

    def shapes(self, rows: Sequence[Row]) -> Shapes:
        """The static shapes a batch of ``rows`` is padded to."""
        longest = max(len(r.prompt) for r in rows)
        room = max(r.max_new_tokens for r in rows)
        q = self.num_query_tokens
        columns = bucket_length(longest, self.column_buckets)
        if q + columns + room > self.context:
            # The rounded-up prompt leaves too little room: the widest multiple of 8 that fits.
            fit = self.context - q - room
            columns = max(longest, fit - fit % 8)
        slots = bucket_length(q + columns + room, self.slot_buckets)
        return Shapes(bucket_length(len(rows), self.row_buckets), columns, slots)

    def warm_up(self, prompt_tokens: int = 16, max_new_tokens: int | None = None) -> None:
        """Compiles the prefill and the step of every row bucket for prompts of up to
        ``prompt_tokens`` tokens and answers of ``max_new_tokens`` (default: what fits)."""
        room = max_new_tokens or self.room_limit - prompt_tokens
        s = self.image_size
        for b in self.row_buckets:
            # Cancelled rows end after the first token: one prefill and one step are run.
            rows = [Row([self.pad_token_id] * prompt_tokens, 0, np.zeros((s, s, 3), np.float32),
                        room, lambda _: None, cancelled=True) for _ in range(b)]  # fmt: skip
            self.run_batch(rows)

    def _inputs(self, rows: Sequence[Row], shapes: Shapes) -> dict[str, np.ndarray]:
        """The padded host arrays of a batch; padding rows are one pad token, greedy."""
        b, t = shapes.rows, shapes.columns
        s = self.image_size
        ids = np.full((b, t), self.pad_token_id, np.int32)
        mask = np.zeros((b, t), np.int32)
        mask[:, -1] = 1
        out = {
            "pixels": np.zeros((b, s, s, 3), np.float32),
            "ids": ids,
            "mask": mask,
            "offsets": np.full((b,), t - 1, np.int32),
            "seeds": np.zeros((b,), np.uint32),
            "streams": np.zeros((b,), np.int32),
            "temperature": np.zeros((b,), np.float32),
            "top_p": np.ones((b,), np.float32),
        }
        for i, r in enumerate(rows):
            n = len(r.prompt)
            ids[i, t - n :] = r.prompt
            mask[i, : t - n] = 0
            mask[i, t - n :] = 1
            out["pixels"][i] = r.pixels
            out["offsets"][i] = t - n + r.image_at
            out["seeds"][i] = r.seed % 2**32
            out["streams"][i] = r.stream
            out["temperature"][i] = r.temperature
            out["top_p"][i] = r.top_p
        return out

    def run_batch(self, rows: Sequence[Row]) -> None:
        """Decodes ``rows`` together (on the calling thread), emitting as it goes."""
        shapes = self.shapes(rows)
        x = self._inputs(rows, shapes)
        room = shapes.slots - self.num_query_tokens - shapes.columns
        # Greedy settings: the rows' own sampling settings are arrays (``choose_rows``).
        cfg = GenerationConfig(room, tuple(sorted(self.eos)), self.pad_token_id)
        tok, state = _prefill_jit(self._graphdef, self._params, x, cfg=cfg)
        produced = np.zeros(len(rows), np.int32)
        done = np.zeros(len(rows), bool)
        steps = max(r.max_new_tokens for r in rows)
        for i in range(1, steps + 1):
            # Dispatch the next step before reading this one: the host's streaming work overlaps
            # the device's.
            nxt = (
                _step_jit(self._graphdef, self._params, state, jnp.int32(i)) if i < steps else None
            )
            self._hand_out(rows, np.asarray(tok), produced, done)
            if done.all():
                return
            tok, state = nxt

    def _hand_out(
        self, rows: Sequence[Row], tok: np.ndarray, produced: np.ndarray, done: np.ndarray
    ) -> None:
        events: list[tuple[Row, Event]] = []
        for n, r in enumerate(rows):
            if done[n]:
                continue
            if r.cancelled:
                done[n] = True
                events.append((r, STOP))
                continue
            t = int(tok[n])
            produced[n] += 1
            if t in self.eos:
                done[n] = True
                events.append((r, STOP))
                continue
            events.append((r, t))
            if produced[n] >= r.max_new_tokens:
                done[n] = True
                events.append((r, LENGTH))
        if events:
            self.deliver(events)


def emit_all(events: list[tuple[Row, Event]]) -> None:
    """Hands each event to its row's consumer."""
    for row, event in events:
        row.emit(event)


def _prefill(
    graphdef: nnx.GraphDef, params: nnx.State, x: dict[str, jax.Array], cfg: GenerationConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The prompts into a fresh cache with room for ``cfg.max_new_tokens`` and the first new
    token: (int32[B], decoding state)."""
    TRACES["prefill"] += 1
    model = nnx.merge(graphdef, params)
    logits, cache, full_mask, positions, _ = start(
        model, x["pixels"], x["ids"], x["mask"], cfg, x["offsets"]
    )
    keys = row_keys(x["seeds"], x["streams"])
    tok = choose_rows(logits, x["temperature"], x["top_p"], keys, jnp.int32(0))
    state = {
        "cache": cache,
        "full_mask": full_mask,
        "positions": positions,
        "keys": keys,
        "temperature": x["temperature"],
        "top_p": x["top_p"],
        "tok": tok,
    }
    return tok, state


def _step(
    graphdef: nnx.GraphDef, params: nnx.State, state: dict[str, jax.Array], i: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """New token number ``i`` (>= 1) of every row: feeds token ``i - 1`` back."""
    TRACES["step"] += 1
    model = nnx.merge(graphdef, params)
    logits, cache = model.decode_step(
        state["tok"], state["cache"], state["full_mask"], state["positions"] + i - 1
    )
    tok = choose_rows(logits, state["temperature"], state["top_p"], state["keys"], i)
    return tok, {**state, "cache": cache, "tok": tok}


_prefill_jit = jax.jit(_prefill, static_argnames=("graphdef", "cfg"))
# The state (the KV cache above all) is donated: each step updates it in place.
_step_jit = jax.jit(_step, static_argnames=("graphdef",), donate_argnames=("state",))
