"""A tiny byte-level BPE tokenizer trained offline, saved as a Hugging Face tokenizer directory.

Mirrors what the real LLM tokenizers offer the pipeline: ``<s>`` prepended as BOS (as OPT and
LLaMA do), ``</s>`` EOS, ``<pad>`` padding, and ``"\\n"`` as one real token (the generation end
symbol of VPGTrans). Byte-level, so every string is encodable.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3 in this order


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 512) -> int:
    """Trains on ``texts`` and saves a ``PreTrainedTokenizerFast`` to ``out_dir``.

    Training sees the texts in the given order (sorted unique lines, so duplicates and order
    of generation do not matter) and is deterministic. Returns the vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = sorted(set(texts))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
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
