"""Word converter: alignment modes, recovery of a known affine map, save/load, CLI, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers as T

from tests.scripts_util import run_script
from vpgtrans_jax.checkpoint.safetensors import CheckpointError
from vpgtrans_jax.tiny.tokenizer import train_tokenizer
from vpgtrans_jax.transfer import alignment
from vpgtrans_jax.transfer.linear_map import FitConfig, fit_linear_map, split_pairs
from vpgtrans_jax.transfer.llm_embeddings import read_input_embeddings
from vpgtrans_jax.transfer.word_converter import build_word_converter, load_converter

_WORDS = (
    "a man woman dog cat sitting standing on the table with red blue green plate of food "
    "next to two people riding horse bike street city near water boat large small white black "
    "in front building tree grass field playing ball child young old holding umbrella"
).split()
FAST = FitConfig(batch_size=128, epochs=40, heldout_fraction=0.1)


def _captions(n: int = 300, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=rng.integers(4, 10))) for _ in range(n)]


def _metaspace_tokenizer(texts: list[str], out_dir: str, vocab_size: int) -> None:
    """A SentencePiece-style (▁ marker) BPE tokenizer, unlike the byte-level (Ġ) one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    fast = T.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)


def _save_opt(out_dir: str, vocab: int, seed: int, proj_dim: int | None) -> None:
    """Tiny random OPT (with project_in when ``proj_dim``), unit-scale embeddings."""
    torch.manual_seed(seed)
    cfg = T.OPTConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=proj_dim or 16,
        do_layer_norm_before=proj_dim is None,
    )
    model = T.OPTForCausalLM(cfg)
    with torch.no_grad():
        dec = model.model.decoder
        dec.embed_tokens.weight.normal_()
        if dec.project_in is not None:
            dec.project_in.weight.normal_(std=proj_dim**-0.5)
    model.save_pretrained(out_dir)


def _save_llama(out_dir: str, table: np.ndarray) -> None:
    """Tiny random LLaMA whose input embedding table is ``table`` float[V, E]."""
    vocab, dim = table.shape
    cfg = T.LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    model = T.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(table))
    model.save_pretrained(out_dir)


def _affine(dim_in: int, dim_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim_in, dim_out)) / 4, rng.standard_normal(dim_out) * 0.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Caption files and two tokenizers with different vocabularies and word markers."""
    root = tmp_path_factory.mktemp("corpus")
    caps = _captions()
    txt = root / "caps.txt"
    txt.write_text("\n".join(caps[:200]) + "\n")
    js = root / "caps.json"
    js.write_text(
        json.dumps([{"image": f"{i}.jpg", "caption": c} for i, c in enumerate(caps[200:])])
    )
    tok_a, tok_b = str(root / "tok_a"), str(root / "tok_b")
    n_a = train_tokenizer(caps, tok_a, vocab_size=400)  # byte-level BPE, "Ġ" marker
    _metaspace_tokenizer(caps, tok_b, vocab_size=200)  # BPE with "▁" marker
    return {"root": root, "files": [str(txt), str(js)], "tok_a": tok_a, "tok_b": tok_b, "n_a": n_a}


def _with_tokenizer(tok_dir: str, model_dir: str) -> None:
    T.AutoTokenizer.from_pretrained(tok_dir).save_pretrained(model_dir)


def test_recovers_known_affine_map_through_project_in(corpus, tmp_path):
    """Target rows = affine(source features after project_in): held-out cosine >= 0.99."""
    src, tgt = str(tmp_path / "src"), str(tmp_path / "tgt")
    _save_opt(src, corpus["n_a"], seed=0, proj_dim=8)
    _with_tokenizer(corpus["tok_a"], src)
    emb = read_input_embeddings(src)
    assert emb.project_in is not None and emb.feature_dim == 16 and emb.prompt_dim == 8
    a, c = _affine(16, 24, seed=1)
    _save_llama(tgt, (emb.features(np.arange(emb.vocab_size)) @ a + c).astype(np.float32))
    _with_tokenizer(corpus["tok_a"], tgt)

    out = str(tmp_path / "conv")
    conv = build_word_converter(src, tgt, corpus["files"], out, fit=FAST, log=None)
    metrics = conv.meta["metrics"]
    assert metrics["heldout_pairs"] > 0
    assert metrics["heldout_cosine"] >= 0.99, metrics
    # Saved map acts on the source prompt space (project_in folded in).
    loaded = load_converter(out)
    assert loaded.kernel.shape == (8, 24) and loaded.meta["src_project_in_folded"]
    np.testing.assert_array_equal(loaded.kernel, conv.kernel)
    ids = np.arange(4, emb.vocab_size)
    pred, want = loaded(emb.table[ids]), read_input_embeddings(tgt).table[ids]
    cos = np.sum(pred * want, 1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(want, axis=1)
    assert np.median(cos) >= 0.99


def test_same_length_pairs_align_equal_length_captions(corpus):
    tok_a = T.AutoTokenizer.from_pretrained(corpus["tok_a"])
    tok_b = T.AutoTokenizer.from_pretrained(corpus["tok_b"])
    caps = alignment.read_captions(corpus["files"])
    pairs, stats = alignment.same_length_pairs(caps, tok_a, tok_b)
    expected = []
    for cap in caps:
        a = tok_a(cap, add_special_tokens=False)["input_ids"]
        b = tok_b(cap, add_special_tokens=False)["input_ids"]
        if len(a) == len(b):
            expected += list(zip(a, b))
    assert 0 < stats["captions_used"] < stats["captions"] == len(caps)
    np.testing.assert_array_equal(pairs, np.asarray(expected))


def test_shared_tokens_match_surface_strings(corpus, tmp_path):
    tok_a = T.AutoTokenizer.from_pretrained(corpus["tok_a"])
    tok_b = T.AutoTokenizer.from_pretrained(corpus["tok_b"])
    mapping = alignment.shared_vocab(tok_a, tok_b)
    assert len(mapping) > 20
    assert any(s != t for s, t in mapping.items())  # different vocabularies
    for s, t in mapping.items():
        sa, sb = tok_a.convert_ids_to_tokens(s), tok_b.convert_ids_to_tokens(t)
        assert alignment.normalize_token(sa) == alignment.normalize_token(sb)
    assert mapping[tok_a.convert_tokens_to_ids("Ġman")] == tok_b.convert_tokens_to_ids("▁man")
    special = set(tok_a.all_special_ids)
    assert not special & set(mapping)

    # Target rows for shared tokens = affine(source rows): the converter must find the map.
    src, tgt = str(tmp_path / "src"), str(tmp_path / "tgt")
    _save_opt(src, corpus["n_a"], seed=2, proj_dim=None)
    _with_tokenizer(corpus["tok_a"], src)
    emb = read_input_embeddings(src)
    a, c = _affine(16, 12, seed=3)
    table = np.random.default_rng(4).standard_normal((len(tok_b), 12)).astype(np.float32)
    for s, t in mapping.items():
        table[t] = emb.table[s] @ a + c
    _save_llama(tgt, table)
    _with_tokenizer(corpus["tok_b"], tgt)
    conv = build_word_converter(
        src, tgt, corpus["files"], None, align="shared_tokens", fit=FAST, log=None
    )
    stats = conv.meta["align_stats"]
    assert stats["shared_vocab"] == len(mapping) and stats["text_occurrences"] > 0
    assert conv.meta["metrics"]["heldout_cosine"] >= 0.99


def test_split_holds_out_whole_distinct_pairs():
    pairs = np.random.default_rng(0).integers(0, 30, size=(2000, 2))
    train, held = split_pairs(pairs, 0.2, seed=0)
    distinct = np.unique(pairs, axis=0)
    assert len(held) == round(0.2 * len(distinct))
    assert not {tuple(p) for p in train} & {tuple(p) for p in held}
    assert len(train) + sum((pairs == h).all(1).sum() for h in held) == len(pairs)


def test_mse_loss_recovers_exact_affine_map():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((64, 6)).astype(np.float32)
    a, c = _affine(6, 5, seed=1)
    tgt = (src @ a + c).astype(np.float32)
    pairs = np.stack([np.arange(64), np.arange(64)], 1)
    cfg = FitConfig(loss="mse", lr=2.0, batch_size=16, epochs=200, heldout_fraction=0.1)
    res = fit_linear_map(src, tgt, pairs, cfg)
    np.testing.assert_allclose(res.kernel, a, atol=1e-3)
    np.testing.assert_allclose(res.bias, c, atol=1e-3)
    assert res.metrics["heldout_cosine"] > 0.9999


def test_read_captions_formats_and_errors(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"caption": "A Dog."}, {"caption": ["two  cats!", ""]}]))
    txt = tmp_path / "c.txt"
    txt.write_text("A red bus\n\n")
    assert alignment.read_captions([str(js), str(txt)]) == ["a dog", "two cats", "a red bus"]
    assert alignment.read_captions([str(txt)], process=False) == ["A red bus"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "no caption key"}]))
    with pytest.raises(ValueError, match="entry 0 needs a 'caption'"):
        alignment.read_captions([str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        alignment.read_captions([str(tmp_path / "missing.txt")])


def test_bad_inputs_are_named(corpus, tmp_path):
    with pytest.raises(ValueError, match="lr must be positive"):
        FitConfig(lr=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        FitConfig(loss="l1")
    with pytest.raises(CheckpointError, match="not a directory"):
        read_input_embeddings(str(tmp_path / "nope"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert' is not supported"):
        read_input_embeddings(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="align must be one of"):
        build_word_converter("x", "y", corpus["files"], None, align="nope", log=None)


def test_cli_writes_converter_and_reports_errors(corpus, tmp_path):
    llm = str(tmp_path / "llm")
    _save_opt(llm, corpus["n_a"], seed=5, proj_dim=None)
    _with_tokenizer(corpus["tok_a"], llm)
    out = str(tmp_path / "conv")
    texts = [a for f in corpus["files"] for a in ("--text", f)]
    args = ["--src_llm", llm, "--tgt_llm", llm, *texts, "--out", out]
    done = run_script("scripts/word_converter.py", *args, "--epochs", "2", "--batch_size", "64",
                      "--loss", "mse")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "held-out cosine" in done.stdout
    meta = json.loads(open(os.path.join(out, "converter.json")).read())
    assert meta["fit"]["loss"] == "mse" and meta["align"] == "same_length"
    assert load_converter(out).kernel.shape == (16, 16)
    missing = str(tmp_path / "missing.txt")
    done = run_script("scripts/word_converter.py", *args[:4], "--text", missing, "--out", out)
    assert (
        done.returncode == 2 and done.stderr.startswith("error:") and "missing.txt" in done.stderr
    )
