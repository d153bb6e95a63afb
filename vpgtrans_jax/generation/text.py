"""Strings in, strings out: images + prompts + a Hugging Face tokenizer -> generated text.

End of sequence follows VPGTrans / LAVIS: generation stops at the token of ``"\\n"`` (the
training targets end with ``"\\n"``). For OPT that is the first id of ``tok("\\n")`` (50118); for
LLaMA's SentencePiece tokenizer ``"\\n"`` encodes as ``["▁", "<0x0A>"]`` and the *last* id is the
newline. Decoded outputs are cut at the first EOS, special tokens dropped, and stripped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vpgtrans_jax.generation.decode import generate

if TYPE_CHECKING:
    from vpgtrans_jax.models.vl_model import VLModel


def newline_eos_id(tokenizer: Any, llm_type: str) -> int:
    """The id VPGTrans stops at: OPT ``tok("\\n")[0]``, LLaMA ``tok("\\n")[-1]``."""
    ids = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} encodes '\\n' to no tokens")
    if llm_type == "opt":
        return int(ids[0])
    if llm_type == "llama":
        return int(ids[-1])
    raise ValueError(f"llm_type={llm_type!r}: expected 'opt' or 'llama'")


def decode_outputs(
    tokenizer: Any, tokens: Any, eos_token_ids: Sequence[int], pad_token_id: int
) -> list[str]:
    """int[N, M] generated ids -> N strings (cut at the first EOS, pads and specials dropped)."""
    out = []
    eos = set(int(e) for e in eos_token_ids)
    for row in np.asarray(tokens).tolist():
        kept = []
        for t in row:
            if t in eos:
                break
            if t != pad_token_id:
                kept.append(t)
        out.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return out


def _pixels(model: VLModel, images: Any) -> np.ndarray:
    """float[B, H, W, 3] arrays pass through; PIL images / paths / bytes get the eval transform."""
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        return np.asarray(images, np.float32)
    from vpgtrans_jax.data.processors import blip_image_eval

    size = model.config.vision.image_size
    return np.stack([blip_image_eval(im, size) for im in images])


def generate_text(
    model: VLModel,
    tokenizer: Any,
    images: Any,
    prompts: Sequence[str],
    *,
    max_prompt_len: int = 32,
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
      prompts: B strings, e.g. ``"Question: what is it? Answer:"`` or ``""`` for captions.
      max_prompt_len: prompts are cut to this many tokens (on the right, as LAVIS) and
        left-padded to the longest.
      eos_token_id: default: the ``"\\n"`` token for the model's LLM type.
      pad_token_id: default: the tokenizer's pad id, else its EOS id.
      **generate_kwargs: ``max_new_tokens``, ``num_beams``, ... (see ``generate``).
    """
    from vpgtrans_jax.data.text import generation_batch, pad_id

    pixels = _pixels(model, images)
    if len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {pixels.shape[0]} images")
    if eos_token_id is None:
        eos_token_id = newline_eos_id(tokenizer, model.config.llm_type)
    if pad_token_id is None:
        pad_token_id = pad_id(tokenizer)
    batch = generation_batch(tokenizer, list(prompts), max_prompt_len)
    longest = int(batch["attention_mask"].sum(axis=1).max()) if len(prompts) else 0
    ids = batch["input_ids"][:, max_prompt_len - longest :]
    mask = batch["attention_mask"][:, max_prompt_len - longest :]
    tokens = generate(
        model,
        pixels,
        ids,
        mask,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **generate_kwargs,
    )
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return decode_outputs(tokenizer, tokens, eos, pad_token_id)
