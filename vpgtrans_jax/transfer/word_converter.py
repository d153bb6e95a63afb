"""The VPGTrans word converter g(x) = W_w x + b_w: source-LLM → target-LLM word embeddings.

Training (``build_word_converter``): captions are tokenised by both LLMs' tokenizers and aligned
into (source id, target id) pairs (``alignment``); source rows are the source LLM's input
features (after OPT's ``project_in`` where present, as in the original), target rows the target's
token embeddings (the space our projector writes); the map is fitted with ``linear_map``.

The saved converter always acts on **prompt spaces** (token-embedding width of each LLM, where the
VL model's projector writes): a source ``project_in`` is folded into the kernel, so the projector
merge needs nothing but the converter. A target ``project_in`` is never applied: our VL model feeds
the soft prompt through it together with the text embeddings.

Directory format (``--out DIR``):
  ``converter.npz``: ``kernel`` float32[E_src, E_tgt] (our Dense [in, out] layout, i.e. W_wᵀ) and
    ``bias`` float32[E_tgt];
  ``converter.json``: ``{"format": "vpgtrans_jax.word_converter", "version": 1, "src_llm",
    "tgt_llm", "src_dim", "tgt_dim", "src_project_in_folded", "align", "align_stats",
    "fit" (FitConfig), "metrics" (train/held-out cosine, ...), "text_files"}``.
The directory is written whole and renamed into place (``vpgtrans_jax.outputs.atomic_output``):
an existing non-empty one is replaced only with ``overwrite`` and only when it is an earlier
converter (or another output of this project's tools) holding nothing else.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vpgtrans_jax import paths
from vpgtrans_jax.outputs import atomic_output, check_replaceable, check_separate
from vpgtrans_jax.transfer import alignment
from vpgtrans_jax.transfer.linear_map import FitConfig, fit_linear_map
from vpgtrans_jax.transfer.llm_embeddings import load_tokenizer, read_input_embeddings

FORMAT = "vpgtrans_jax.word_converter"
VERSION = 1
WEIGHTS_FILE = "converter.npz"
META_FILE = "converter.json"


@dataclasses.dataclass(frozen=True)
class WordConverter:
    """kernel float32[E_src, E_tgt], bias float32[E_tgt]; ``meta`` as in ``converter.json``."""

    kernel: np.ndarray
    bias: np.ndarray
    meta: dict[str, Any]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float[..., E_src] source prompt-space vectors → float[..., E_tgt]."""
        return np.asarray(x) @ self.kernel + self.bias

    @property
    def src_dim(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def tgt_dim(self) -> int:
        return int(self.kernel.shape[1])

    def save(self, out_dir: str, *, overwrite: bool = False) -> None:
        """Writes the converter directory (module docstring) whole."""
        with atomic_output(out_dir, overwrite=overwrite, kind="word converter",
                           created_by="vpgtrans_jax.transfer.word_converter",
                           also_ours=_is_converter_dir) as tmp:  # fmt: skip
            np.savez(os.path.join(tmp, WEIGHTS_FILE), kernel=self.kernel, bias=self.bias)
            meta = {"format": FORMAT, "version": VERSION, **self.meta}
            meta.update(src_dim=self.src_dim, tgt_dim=self.tgt_dim)
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=2)


def _is_converter_dir(path: str) -> bool:
    """A converter directory written before outputs carried a marker: its two files only."""
    entries = set(paths.listdir(path))
    return META_FILE in entries and entries <= {META_FILE, WEIGHTS_FILE}


def load_converter(path: str) -> WordConverter:
    """Reads a converter directory written by ``WordConverter.save``; checks shapes and format."""
    meta_path, weights_path = paths.join(path, META_FILE), paths.join(path, WEIGHTS_FILE)
    for p in (meta_path, weights_path):
        if not paths.isfile(p):
            raise FileNotFoundError(f"{path}: not a word converter directory ({p} is missing)")
    meta = json.loads(paths.read_text(meta_path))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: version {meta.get('version')!r}, expected {VERSION}")
    with np.load(io.BytesIO(paths.read_bytes(weights_path))) as z:
        if set(z.files) != {"kernel", "bias"}:
            raise ValueError(f"{weights_path}: expected arrays kernel, bias; found {z.files}")
        kernel, bias = z["kernel"].astype(np.float32), z["bias"].astype(np.float32)
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
        raise ValueError(
            f"{weights_path}: kernel {kernel.shape} and bias {bias.shape} do not form a map "
            "[E_src, E_tgt] + [E_tgt]"
        )
    want = (meta.get("src_dim"), meta.get("tgt_dim"))
    if kernel.shape != want:
        raise ValueError(f"{path}: kernel shape {kernel.shape} != (src_dim, tgt_dim) {want}")
    return WordConverter(kernel, bias, meta)


def build_word_converter(
    src_llm: str,
    tgt_llm: str,
    text_files: Sequence[str],
    out_dir: str | None = None,
    *,
    align: str = "same_length",
    fit: FitConfig | None = None,
    process_captions: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> WordConverter:
    """Trains the converter from ``src_llm`` to ``tgt_llm`` on ``text_files``; saves to ``out_dir``.

    Args:
      src_llm, tgt_llm: Hugging Face LLM (or BLIP-2) directories with a tokenizer.
      text_files: caption files (plain text one per line, or LAVIS caption JSON lists).
      align: ``"same_length"`` or ``"shared_tokens"`` (see ``alignment``).
      fit: optimisation settings (None: the original recipe).
      process_captions: apply LAVIS ``blip_caption`` first.
      overwrite: replace an existing ``out_dir`` (only an earlier output of ours; module
        docstring). Checked, like ``out_dir`` against the inputs, before the fit.

    Returns:
      the prompt-space ``WordConverter`` (``meta["metrics"]["heldout_cosine"]`` is the report).
    """
    fit = fit or FitConfig()
    if align not in alignment.ALIGN_MODES:
        raise ValueError(f"align must be one of {alignment.ALIGN_MODES}, got {align!r}")
    if out_dir is not None:
        inputs = {"--src_llm": src_llm, "--tgt_llm": tgt_llm, "--text": list(text_files)}
        check_separate(out_dir, inputs)
    say = log or (lambda _: None)
    src, tgt = read_input_embeddings(src_llm), read_input_embeddings(tgt_llm)
    src_tok, tgt_tok = load_tokenizer(src_llm), load_tokenizer(tgt_llm)
    captions = alignment.read_captions(text_files, process=process_captions)
    if out_dir is not None:  # before the fit; the inputs' own errors come first
        check_replaceable(out_dir, overwrite=overwrite, also_ours=_is_converter_dir)
    pairs, stats = alignment.align(align, captions, src_tok, tgt_tok)
    say(f"{align}: {stats}")
    if len(pairs) == 0:
        raise ValueError(
            f"{align} alignment produced no token pairs from {stats['captions']} captions; "
            + (
                "the tokenizers never give equal lengths, try --align shared_tokens"
                if align == "same_length"
                else "the text has no tokens in the vocabulary overlap"
            )
        )
    for col, emb, tok_dir in ((0, src, src_llm), (1, tgt, tgt_llm)):
        if pairs[:, col].max() >= emb.vocab_size:
            raise ValueError(
                f"{tok_dir}: tokenizer produced id {pairs[:, col].max()} but the embedding table "
                f"has only {emb.vocab_size} rows"
            )
    # Compact tables of the ids in use, so the fit never holds a full vocabulary on device.
    src_ids, src_col = np.unique(pairs[:, 0], return_inverse=True)
    tgt_ids, tgt_col = np.unique(pairs[:, 1], return_inverse=True)
    local = np.stack([src_col.reshape(-1), tgt_col.reshape(-1)], axis=1)
    result = fit_linear_map(src.features(src_ids), tgt.table[tgt_ids], local, fit, log=say)
    kernel = result.kernel if src.project_in is None else src.project_in @ result.kernel
    m = result.metrics
    held = m["heldout_cosine"]
    held_text = "n/a" if held is None else f"{held:.4f} over {m['heldout_pairs']} distinct pairs"
    say(f"train cosine {m['train_cosine']:.4f}, held-out cosine {held_text}")
    meta = {
        "src_llm": paths.abspath(src_llm),
        "tgt_llm": paths.abspath(tgt_llm),
        "src_llm_type": src.llm_type,
        "tgt_llm_type": tgt.llm_type,
        "src_project_in_folded": src.project_in is not None,
        "align": align,
        "align_stats": stats,
        "fit": dataclasses.asdict(fit),
        "metrics": result.metrics,
        "text_files": [paths.abspath(p) for p in text_files],
        "process_captions": process_captions,
    }
    conv = WordConverter(kernel.astype(np.float32), result.bias.astype(np.float32), meta)
    if out_dir is not None:
        conv.save(out_dir, overwrite=overwrite)
    return conv
