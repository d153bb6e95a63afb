"""``generate``: jitted KV-cache decoding for a ``VLModel`` (greedy, sampling, beam search).

One compiled program per (model structure, ``GenerationConfig``, input shapes): the prompt is
prefilled once per prompt (beam search then shares it between beams through a ``BeamKVCache``;
sampling repeats its rows per sample), and decoding runs in a ``lax.while_loop`` that exits as
soon as Hugging Face's ``generate`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpgtrans_jax.generation import processors
from vpgtrans_jax.generation.beam import beam_search
from vpgtrans_jax.generation.config import EarlyStopping, GenerationConfig
from vpgtrans_jax.generation.greedy import greedy_or_sample
from vpgtrans_jax.models.decoder import check_token_ids
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.nn.beam_cache import BeamKVCache
from vpgtrans_jax.nn.kv_cache import KVCache


def start(
    model: VLModel,
    pixel_values: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    cfg: GenerationConfig,
    image_offsets: jax.Array | None = None,
) -> tuple[jax.Array, Any, jax.Array, jax.Array, jax.Array | None]:
    """Prefills the prompt and lays out the rows every decoder (looped or streamed) steps from.

    Returns (float32[N, V] logits after the prompt, the cache with room for
    ``cfg.max_new_tokens``, int32[N, S] mask over its slots, int32[N] position of the first new
    token, bool[N, V] prompt tokens or None without a repetition penalty); ``N = B * expand``.
    """
    logits, cache, full_mask, positions = model.prefill(
        pixel_values, input_ids, attention_mask, cfg.max_new_tokens, image_offsets
    )
    r = cfg.expand
    if cfg.is_beam:
        # The prompt's keys/values once per prompt; beams share generated slots (no reorder).
        cache = BeamKVCache.from_prefill(cache, r, full_mask.shape[1] - cfg.max_new_tokens)
    elif r > 1:
        cache = cache.repeat_rows(r)
    if r > 1:
        logits = jnp.repeat(logits, r, axis=0)
        full_mask = jnp.repeat(full_mask, r, axis=0)
        positions = jnp.repeat(positions, r, axis=0)
    if not model.config.llm.scan_layers:
        # One buffer per layer, updated in place: no per-step slice/restack of a stacked cache.
        cache = cache.per_layer()
    prompt_seen = None
    if cfg.repetition_penalty != 1.0:
        ids = jnp.repeat(input_ids, r, axis=0)
        valid = jnp.repeat(attention_mask, r, axis=0)
        prompt_seen = processors.token_presence(ids, valid, logits.shape[-1])
    return logits, cache, full_mask, positions, prompt_seen


def decode(
    model: VLModel,
    pixel_values: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    key: jax.Array,
    cfg: GenerationConfig,
    image_offsets: jax.Array | None = None,
) -> jax.Array:
    """The traced body of ``generate`` (call it inside ``jit``); see ``generate`` for shapes."""
    logits, cache, full_mask, positions, prompt_seen = start(
        model, pixel_values, input_ids, attention_mask, cfg, image_offsets
    )

    def step_fn(tokens: jax.Array, cache: KVCache, i: jax.Array):
        return model.decode_step(tokens, cache, full_mask, positions + i)

    if cfg.is_beam:
        return beam_search(logits, cache, step_fn, cfg, key, prompt_seen)
    return greedy_or_sample(logits, cache, step_fn, cfg, key, prompt_seen)


# NNX modules are pytrees: jit flattens the model itself on every call (about 0.3 ms, against
# 2.7 ms for nnx.split of a small BLIP-2), so new parameter values and structure changes are
# always seen, and one compilation serves each (structure, config, shapes).
_decode_jit = jax.jit(decode, static_argnames=("cfg",))


def _check_inputs(
    pixel_values: Any, input_ids: Any, attention_mask: Any, image_offsets: Any = None
) -> None:
    if np.ndim(input_ids) != 2:
        raise ValueError(f"input_ids must be int[B, T], got shape {np.shape(input_ids)}")
    b, t = np.shape(input_ids)
    if image_offsets is not None:
        if np.shape(image_offsets) != (b,):
            raise ValueError(
                f"image_offsets must be int[B] with B = {b}, got shape {np.shape(image_offsets)}"
            )
        if not isinstance(image_offsets, jax.core.Tracer):
            offsets = np.asarray(image_offsets)
            if ((offsets < 0) | (offsets > t)).any():
                raise ValueError(
                    f"image_offsets {offsets.tolist()} must lie in [0, {t}] "
                    "(the number of input_ids columns before the soft prompt)"
                )
    if np.shape(attention_mask) != np.shape(input_ids):
        raise ValueError(
            f"attention_mask shape {np.shape(attention_mask)} must equal input_ids shape "
            f"{np.shape(input_ids)}"
        )
    if np.ndim(pixel_values) != 4 or np.shape(pixel_values)[0] != np.shape(input_ids)[0]:
        raise ValueError(
            f"pixel_values must be float[B, H, W, 3] with B = {np.shape(input_ids)[0]} "
            f"(the batch of input_ids), got shape {np.shape(pixel_values)}"
        )
    if isinstance(attention_mask, jax.core.Tracer) or np.shape(input_ids)[1] == 0:
        return
    mask = np.asarray(attention_mask).astype(bool)
    # Left padding: once a row's mask turns on it stays on, and the last slot is a real token.
    if np.any(mask[:, :-1] & ~mask[:, 1:]) or not mask[:, -1].all():
        bad = int(np.flatnonzero(np.any(mask[:, :-1] & ~mask[:, 1:], axis=1) | ~mask[:, -1])[0])
        raise ValueError(
            f"attention_mask row {bad} = {mask[bad].astype(int).tolist()} is not left-padded "
            "with at least one real token: generation needs prompts padded on the LEFT"
        )


def generate(
    model: VLModel,
    pixel_values: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    image_offsets: Any = None,
) -> jax.Array:
    """Generates continuations of image-conditioned prompts (Hugging Face ``generate`` semantics).

    Args:
      model: the VL model.
      pixel_values: float[B, H, W, 3] normalised images.
      input_ids: int[B, T] text prompts, LEFT-padded (``T`` may be 0: image-only prompt).
      attention_mask: int[B, T], 1 on real tokens; default all ones.
      max_new_tokens, min_new_tokens, num_beams, length_penalty, early_stopping, do_sample,
        temperature, top_p, top_k, repetition_penalty, num_return_sequences: as in HF.
      eos_token_id: one id or a list; ``pad_token_id`` fills each row after its EOS.
      seed: sampling seed (same seed, same samples).
      image_offsets: optional int[B]: place the soft prompt after that many columns of
        ``input_ids`` (padding included) instead of before the text, as the stage-3 template
        ``###Human: <Img><ImageHere></Img> ...`` does (``data.text.encode_generation`` computes
        them). HF's equivalent is ``num_query_tokens`` image tokens at that place in the ids.

    Returns:
      int32[B * num_return_sequences, max_new_tokens]: the new tokens only (prompt excluded);
      sequences of one prompt are adjacent (best first for beam search).
    """
    cfg = GenerationConfig.make(
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        length_penalty=float(length_penalty),
        early_stopping=early_stopping,
        do_sample=bool(do_sample),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=top_k,
        repetition_penalty=float(repetition_penalty),
        num_return_sequences=num_return_sequences,
    )
    return generate_with_config(
        model, pixel_values, input_ids, attention_mask, cfg, seed=seed, image_offsets=image_offsets
    )


def generate_with_config(
    model: VLModel,
    pixel_values: Any,
    input_ids: Any,
    attention_mask: Any,
    cfg: GenerationConfig,
    *,
    seed: int = 0,
    image_offsets: Any = None,
) -> jax.Array:
    """``generate`` with a ready ``GenerationConfig``."""
    arrays = checked_inputs(model, pixel_values, input_ids, attention_mask, cfg, image_offsets)
    return _decode_jit(model, *arrays[:3], jax.random.key(seed), cfg=cfg, image_offsets=arrays[3])


def checked_inputs(
    model: VLModel,
    pixel_values: Any,
    input_ids: Any,
    attention_mask: Any,
    cfg: GenerationConfig,
    image_offsets: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Validates a generation request (shapes, left padding, ids in the vocabulary) and returns
    (pixel_values, int32 input_ids, int32 attention_mask, int32 image_offsets or None)."""
    if attention_mask is None:
        attention_mask = jnp.ones(np.shape(input_ids), jnp.int32)
    _check_inputs(pixel_values, input_ids, attention_mask, image_offsets)
    if image_offsets is not None:
        image_offsets = jnp.asarray(image_offsets, jnp.int32)
    vocab = model.config.llm.vocab_size
    check_token_ids(input_ids, vocab)  # inside the jitted decoding they are traced, unchecked
    for name, value in (("eos_token_id", cfg.eos_token_ids), ("pad_token_id", (cfg.pad_token_id,))):
        if max(value) >= vocab:
            raise ValueError(f"{name}={list(value)} is outside the vocabulary (size {vocab})")
    return (
        jnp.asarray(pixel_values),
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        image_offsets,
    )
