"""Strings in, strings out: images + prompts + a Hugging Face tokenizer -> generated text.

End of sequence follows VPGTrans / LAVIS: generation stops at the token of ``"\\n"`` (the
training targets end with ``"\\n"``). For OPT that is the first id of ``tok("\\n")`` (50118); for
LLaMA's SentencePiece tokenizer ``"\\n"`` encodes as ``["▁", "<0x0A>"]`` and the *last* id is the
newline. Decoded outputs are cut at the first EOS, special tokens dropped, and stripped.

Stage-3 chat models (VL-Vicuna) end their answers with ``"###"`` instead and take prompts like
``"###Human: <Img><ImageHere></Img> {question} ###Assistant: "``: ``end="###"`` stops at the
token ``"###"`` encodes to (when it is one token) and cuts every output at its first ``"###"``
(which also catches the multi-token spellings, as MiniGPT-4's stopping criteria do), and the
soft prompt goes where ``<ImageHere>`` stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vpgtrans_jax.data.processors import blip_image_eval
from vpgtrans_jax.data.text import (
    check_tokenizer_fits,
    generation_batch,
    keep_last_columns,
    pad_id,
)
from vpgtrans_jax.generation.decode import generate
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.vl_model import VLModel


def newline_eos_id(tokenizer: Any, llm_type: str) -> int:
    """The id VPGTrans stops at: OPT ``tok("\\n")[0]``, LLaMA ``tok("\\n")[-1]`` (the family's
    ``newline_index``)."""
    ids = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} encodes '\\n' to no tokens")
    return int(ids[registry.family(llm_type).newline_index])


def end_token_ids(tokenizer: Any, llm_type: str, end: str) -> list[int]:
    """Token-level stop ids for the end-of-answer string ``end``.

    ``"\\n"``: ``newline_eos_id``. Another string: its id when it encodes to one token, else the
    tokenizer's EOS (the text is then cut at ``end`` after decoding).
    """
    if end == "\n":
        return [newline_eos_id(tokenizer, llm_type)]
    ids = list(tokenizer(end, add_special_tokens=False)["input_ids"])
    if len(ids) == 1:
        return ids
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"end={end!r} encodes to {len(ids)} tokens and the tokenizer has no EOS token to "
            "stop at; pass eos_token_id"
        )
    return [int(tokenizer.eos_token_id)]


def text_end(end: str) -> str | None:
    """The string to cut decoded outputs at: None for ``"\\n"`` (LAVIS stops at the token only,
    so a ``"\\n\\n"`` token stays in the text), else ``end`` (MiniGPT-4 cuts at ``"###"``)."""
    return None if end == "\n" else end


def decode_outputs(
    tokenizer: Any,
    tokens: Any,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    end: str | None = None,
) -> list[str]:
    """int[N, M] generated ids -> N strings (cut at the first EOS and at the first ``end``
    string when given; pads and special tokens dropped; stripped)."""
    out = []
    eos = set(int(e) for e in eos_token_ids)
    for row in np.asarray(tokens).tolist():
        kept = []
        for t in row:
            if t in eos:
                break
            if t != pad_token_id:
                kept.append(t)
        text = tokenizer.decode(kept, skip_special_tokens=True)
        if end:
            text = text.split(end, 1)[0]
        out.append(text.strip())
    return out


def _pixels(model: VLModel, images: Any) -> np.ndarray:
    """float[B, H, W, 3] arrays pass through; PIL images / paths / bytes get the eval transform."""
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        return np.asarray(images, np.float32)
    size = model.config.vision.image_size
    return np.stack([blip_image_eval(im, size) for im in images])


def generate_text(
    model: VLModel,
    tokenizer: Any,
    images: Any,
    prompts: Sequence[str],
    *,
    max_prompt_len: int = 32,
    end: str = "\n",
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Generates one string per prompt (``num_return_sequences`` strings with that option).

    Args:
      model: the VL model.
      tokenizer: the LLM's Hugging Face tokenizer (it adds BOS, as the original does).
      images: float[B, H, W, 3] normalised pixels, or B PIL images / paths / encoded bytes
        (resized to the model's image size with ``blip_image_eval``).
      prompts: B strings, e.g. ``"Question: what is it? Answer:"`` or ``""`` for captions; a
        prompt with ``<ImageHere>`` gets the soft prompt at that place instead of first.
      max_prompt_len: prompts are cut to this many tokens (on the right, as LAVIS) and
        left-padded to the longest.
      end: the end-of-answer string: ``"\\n"`` (VPGTrans stages 1-2) or ``"###"`` (stage 3).
      eos_token_id: default: ``end_token_ids(tokenizer, llm_type, end)``.
      pad_token_id: default: the tokenizer's pad id, else its EOS id.
      **generate_kwargs: ``max_new_tokens``, ``num_beams``, ... (see ``generate``).
    """
    check_tokenizer_fits(tokenizer, model.config.llm.vocab_size)
    pixels = _pixels(model, images)
    if len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {pixels.shape[0]} images")
    if eos_token_id is None:
        eos_token_id = end_token_ids(tokenizer, model.config.llm_type, end)
    if pad_token_id is None:
        pad_token_id = pad_id(tokenizer)
    batch = generation_batch(tokenizer, list(prompts), max_prompt_len)
    longest = int(batch["attention_mask"].sum(axis=1).max()) if len(prompts) else 0
    batch = keep_last_columns(batch, longest)  # the others are padding in every row
    tokens = generate(
        model,
        pixels,
        batch["input_ids"],
        batch["attention_mask"],
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        image_offsets=batch.get("image_offset"),
        **generate_kwargs,
    )
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return decode_outputs(tokenizer, tokens, eos, pad_token_id, text_end(end))
