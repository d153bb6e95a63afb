"""Caption text → aligned (source token id, target token id) pairs for the word converter.

Two modes:

- ``same_length`` (the original VPGTrans recipe): each caption is tokenised by both tokenizers
  (no special tokens); when the two token sequences have the same length they are paired position
  by position, otherwise the caption is skipped.
- ``shared_tokens`` (LLMs with different vocabularies, the paper's "overlapping tokens"): a source
  token pairs with the target token whose surface string is the same after normalising the word
  markers ``▁`` (SentencePiece) and ``Ġ`` (byte-level BPE) to a space. Pairs are every token of the
  overlap once, plus one pair per occurrence of an overlapping source token in the text, so
  frequent words weigh more (as with ``same_length``) and rare ones are still covered.

Pairs come back as int32[N, 2], one row per occurrence (duplicates kept: they are the weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from vpgtrans_jax import paths as path_lib
from vpgtrans_jax.data.processors import blip_caption

ALIGN_MODES = ("same_length", "shared_tokens")

# Word-start markers: SentencePiece's "▁" (U+2581) and byte-level BPE's "Ġ" (U+0120, a space byte).
_MARKERS = {"\u2581": " ", "\u0120": " "}


def read_captions(paths: Sequence[str], *, process: bool = True) -> list[str]:
    """Captions from text files: ``.json`` = LAVIS caption list, anything else = one per line.

    A LAVIS file is a JSON list of objects with a ``"caption"`` field (a string or a list of
    strings). ``process`` applies LAVIS's ``blip_caption`` (lowercase, punctuation → space, at most
    50 words): the text the VL model is trained on. Empty captions are dropped.
    """
    out: list[str] = []
    for path in paths:
        for cap in _iter_file(path):
            cap = blip_caption(cap) if process else cap.strip()
            if cap:
                out.append(cap)
    if not out:
        raise ValueError(f"no captions found in {list(paths)}")
    return out


def _iter_file(path: str) -> Iterator[str]:
    if not path_lib.isfile(path):  # a file or a URL (gs://)
        raise FileNotFoundError(f"--text file {path!r} does not exist")
    if not path.endswith(".json"):
        yield from path_lib.read_text(path).splitlines()
        return
    try:
        data = json.loads(path_lib.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of {{'caption': ...}} objects, got {type(data).__name__}"
        )
    for i, item in enumerate(data):
        cap = item.get("caption") if isinstance(item, dict) else None
        caps = [cap] if isinstance(cap, str) else cap
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError(
                f"{path}: entry {i} needs a 'caption' string or list of strings, got {item!r:.200}"
            )
        yield from caps


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def same_length_pairs(
    captions: list[str], src_tok: Any, tgt_tok: Any
) -> tuple[np.ndarray, dict[str, int]]:
    """Position-by-position pairs from captions whose two tokenisations have equal length.

    Returns:
      (int32[N, 2] pairs, stats {"captions", "captions_used", "pairs"}).
    """
    src, tgt = _encode(src_tok, captions), _encode(tgt_tok, captions)
    rows = [(s, t) for a, b in zip(src, tgt) if len(a) == len(b) for s, t in zip(a, b)]
    used = sum(len(a) == len(b) and len(a) > 0 for a, b in zip(src, tgt))
    pairs = np.asarray(rows, np.int32).reshape(-1, 2)
    return pairs, {"captions": len(captions), "captions_used": used, "pairs": len(pairs)}


def normalize_token(token: str) -> str:
    """Surface form of a vocabulary entry: ``▁``/``Ġ`` word markers become a space."""
    for marker, repl in _MARKERS.items():
        token = token.replace(marker, repl)
    return token


def _surface_index(tokenizer: Any) -> dict[str, int]:
    """normalised surface → smallest id having it, special tokens excluded."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    index: dict[str, int] = {}
    for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if idx in special:
            continue
        index.setdefault(normalize_token(token), int(idx))
    return index


def shared_vocab(src_tok: Any, tgt_tok: Any) -> dict[int, int]:
    """source id → target id for tokens whose normalised surface strings coincide."""
    src, tgt = _surface_index(src_tok), _surface_index(tgt_tok)
    return {src[s]: tgt[s] for s in sorted(src.keys() & tgt.keys())}


def shared_token_pairs(
    captions: Iterable[str], src_tok: Any, tgt_tok: Any
) -> tuple[np.ndarray, dict[str, int]]:
    """Overlap pairs: each shared token once plus one per occurrence in the source tokenisation.

    Returns:
      (int32[N, 2] pairs, stats {"captions", "shared_vocab", "text_occurrences", "pairs"}).
    """
    mapping = shared_vocab(src_tok, tgt_tok)
    if not mapping:
        raise ValueError("the two tokenizers share no token surface strings")
    captions = list(captions)
    rows = list(mapping.items())
    occurrences = 0
    for ids in _encode(src_tok, captions):
        for s in ids:
            if s in mapping:
                rows.append((s, mapping[s]))
                occurrences += 1
    pairs = np.asarray(rows, np.int32).reshape(-1, 2)
    stats = {
        "captions": len(captions),
        "shared_vocab": len(mapping),
        "text_occurrences": occurrences,
        "pairs": len(pairs),
    }
    return pairs, stats


def align(
    mode: str, captions: list[str], src_tok: Any, tgt_tok: Any
) -> tuple[np.ndarray, dict[str, int]]:
    """Dispatches to ``same_length_pairs`` / ``shared_token_pairs``."""
    if mode == "same_length":
        return same_length_pairs(captions, src_tok, tgt_tok)
    if mode == "shared_tokens":
        return shared_token_pairs(captions, src_tok, tgt_tok)
    raise ValueError(f"align mode must be one of {ALIGN_MODES}, got {mode!r}")
