"""A tiny BPE tokenizer trained offline, saved as a Hugging Face tokenizer directory.

Mirrors what the real LLM tokenizers offer the pipeline: ``<s>`` prepended as BOS (as OPT and
LLaMA do), ``</s>`` EOS, ``<pad>`` padding, and ``"\\n"`` as one real token (the generation end
symbol of VPGTrans). Two styles:

- ``"bytelevel"`` (OPT / GPT-2 style, the default): byte-level BPE, words start with ``Ġ``;
  every string is encodable.
- ``"metaspace"`` (LLaMA / SentencePiece style): words start with ``▁``, ``"\\n"`` encodes as
  ``["▁", "\\n"]`` (the newline is the *last* id, as LLaMA's); printable ASCII plus ``"\\n"``
  is the alphabet, anything else is ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3 in this order


STYLES = ("bytelevel", "metaspace")


def train_tokenizer(
    texts: Iterable[str], out_dir: str, vocab_size: int = 512, style: str = "bytelevel"
) -> int:
    """Trains on ``texts`` and saves a ``PreTrainedTokenizerFast`` to ``out_dir``.

    Training sees the texts in the given order (sorted unique lines, so duplicates and order
    of generation do not matter) and is deterministic. Returns the vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in STYLES:
        raise ValueError(f"tokenizer style must be one of {STYLES}, got {style!r}")
    corpus = sorted(set(texts))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = [chr(i) for i in range(32, 127)] + ["\n", "\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )
    fast.save_pretrained(out_dir)
    return tok.get_vocab_size()
