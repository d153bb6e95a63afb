"""Tokenisation: right-padded training batches with loss masks, left-padded generation batches."""

from __future__ import annotations

import numpy as np
import pytest

from vpgtrans_jax.data import text
from vpgtrans_jax.tiny.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    corpus = ["a red circle", "two blue squares", "Question: Answer:", "###Human: ###Assistant:"]
    train_tokenizer(corpus * 3, path, vocab_size=300)
    return text.load_tokenizer(path)


def _ids(tok, s):
    return tok(s, add_special_tokens=False).input_ids


def test_train_batch_right_padded_with_masks(tok):
    nl = _ids(tok, "\n")
    b = text.train_batch(tok, ["a red circle", "two blue squares and more"], max_len=12)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        k: ((2, 12), np.int32) for k in ("input_ids", "attention_mask", "labels")
    }
    row = [tok.bos_token_id] + _ids(tok, "a red circle") + nl
    n = len(row)
    assert b["input_ids"][0, :n].tolist() == row
    assert b["input_ids"][0, n:].tolist() == [tok.pad_token_id] * (12 - n)
    assert b["attention_mask"][0].tolist() == [1] * n + [0] * (12 - n)
    assert b["labels"][0].tolist() == row + [-100] * (12 - n)  # BOS is a target without prompt
    # Long text: truncated on the right at max_len (so the "\n" is cut off, as in LAVIS).
    long_ids = [tok.bos_token_id] + _ids(tok, "two blue squares and more")
    assert b["input_ids"][1].tolist() == (long_ids + nl)[:12]
    assert b["attention_mask"][1].sum() == min(12, len(long_ids) + 1)


def test_prompt_tokens_are_masked(tok):
    prompt = "###Human: "
    b = text.train_batch(tok, ["a red circle"], max_len=20, prompt=prompt)
    p = len(tok(prompt).input_ids)  # includes BOS, like LAVIS's prompt_length
    ids = tok(prompt + "a red circle\n").input_ids
    assert b["input_ids"][0, : len(ids)].tolist() == ids
    assert b["labels"][0].tolist() == [-100] * p + ids[p:] + [-100] * (20 - len(ids))


def test_generation_batch_left_padded(tok):
    prompts = ["Question: a red circle Answer:", ""]
    b = text.generation_batch(tok, prompts, max_len=16)
    ids0 = tok(prompts[0]).input_ids
    assert b["input_ids"][0].tolist() == [tok.pad_token_id] * (16 - len(ids0)) + ids0
    assert b["attention_mask"][0].tolist() == [0] * (16 - len(ids0)) + [1] * len(ids0)
    assert b["input_ids"][1, -1] == tok.bos_token_id and b["attention_mask"][1].sum() == 1
    assert "labels" not in b


def test_buckets_fix_shapes(tok):
    short = text.train_batch(tok, ["a red circle"], max_len=32, buckets=(8, 16, 32))
    assert short["input_ids"].shape == (1, 8)
    mixed = text.train_batch(
        tok, ["a red circle", "two blue squares " * 2], 32, buckets=(8, 16, 32)
    )
    assert mixed["input_ids"].shape == (2, 16)
    full = text.train_batch(tok, ["a red circle", "two blue squares " * 2], 32)
    np.testing.assert_array_equal(mixed["labels"], full["labels"][:, :16])
    assert (full["attention_mask"][:, 16:] == 0).all()
    gen = text.generation_batch(tok, ["Question: Answer:"], 32, buckets=(8, 32))
    assert gen["input_ids"].shape == (1, 8) and gen["attention_mask"][0, -1] == 1
    with pytest.raises(ValueError, match="bucket length 64 exceeds the padded length 32"):
        text.train_batch(tok, ["a red circle " * 10], 32, buckets=(64,))


def test_pad_falls_back_to_eos_and_errors():
    class NoPad:
        pad_token_id, eos_token_id = None, 7

    class Nothing:
        pad_token_id = eos_token_id = None

    assert text.pad_id(NoPad()) == 7
    with pytest.raises(ValueError, match="neither pad_token nor eos_token"):
        text.pad_id(Nothing())
    with pytest.raises(ValueError, match="example 1 has keys"):
        text.collate([{"a": np.zeros(2)}, {"b": np.zeros(2)}])


def test_image_placeholder_prompt_splits_like_minigpt4(tmp_path):
    from vpgtrans_jax.tiny import tokenizer as local_tokenizer

    local_tokenizer.train_tokenizer(
        ["a red circle", "###Human: <Img></Img> describe ###Assistant:"] * 20, str(tmp_path), 300
    )
    tok = text.load_tokenizer(str(tmp_path))
    prompt = "###Human: <Img><ImageHere></Img> describe ###Assistant: "
    row = text.encode_train(tok, "a red circle", 48, prompt, "###")
    head = tok("###Human: <Img>", add_special_tokens=True)["input_ids"]
    after = tok("</Img> describe ###Assistant: ", add_special_tokens=False)["input_ids"]
    target = tok("a red circle###", add_special_tokens=False)["input_ids"]
    n = len(head) + len(after) + len(target)
    assert int(row["image_offset"]) == len(head)
    assert list(row["input_ids"][:n]) == head + after + target
    assert (row["labels"][: len(head) + len(after)] == text.IGNORE_INDEX).all()
    assert list(row["labels"][len(head) + len(after) : n]) == target


def test_generation_prompt_with_image_placeholder(tok):
    """<ImageHere> prompts: tokenised like training (BOS before, none after), offset in columns."""
    before, after = "###Human: <Img>", "</Img> a red circle ###Assistant: "
    prompts = [before + text.IMAGE_PLACEHOLDER + after, "Question: Answer:"]
    b = text.generation_batch(tok, prompts, max_len=40)
    head = [tok.bos_token_id] + _ids(tok, before)
    ids = head + _ids(tok, after)
    n = len(ids)
    assert b["input_ids"][0, -n:].tolist() == ids
    assert b["attention_mask"][0].tolist() == [0] * (40 - n) + [1] * n
    assert b["image_offset"].tolist() == [40 - n + len(head), 0]  # no placeholder: image first
    # Buckets drop leading all-padding columns; the offset moves with them.
    cut = text.generation_batch(tok, prompts, max_len=40, buckets=(n, 40))
    assert cut["input_ids"].shape == (2, n)
    assert cut["image_offset"].tolist() == [len(head), 0]
    np.testing.assert_array_equal(cut["input_ids"], b["input_ids"][:, -n:])
    # Without any placeholder the batch keeps its usual keys.
    assert "image_offset" not in text.generation_batch(tok, ["Question: Answer:"], 16)
