"""Tiny random Hugging Face BLIP-2 models in PyTorch: the numerical references for the tests,
`scripts/check_parity.py` and `scripts/bench_generate.py`. Needs torch (the `test` extra); the
package never imports it.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np
import torch
import transformers as T

from vpgtrans_jax.checkpoint.load import load

NUM_QUERY = 4
IMAGE_TOKEN = 3  # an ordinary vocab id reserved as the BLIP-2 image placeholder


def tiny_blip2(text: str = "opt", seed: int = 0, **text_kw) -> T.Blip2ForConditionalGeneration:
    """A random fp32 BLIP-2 with a tiny ViT, Q-Former and an OPT or LLaMA text model."""
    torch.manual_seed(seed)
    vision = T.Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        layer_norm_eps=1e-6,
    )
    qformer = T.Blip2QFormerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=32,
        cross_attention_frequency=2,
    )
    if text == "opt":
        kw = dict(
            vocab_size=96,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
        kw.update(text_kw)
        text_cfg = T.OPTConfig(**kw)
    elif text == "llama":
        kw = dict(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 50000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
        kw.update(text_kw)
        text_cfg = T.LlamaConfig(**kw)
    else:
        raise ValueError(text)
    cfg = T.Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text_cfg.to_dict(),
        num_query_tokens=NUM_QUERY,
        image_token_index=IMAGE_TOKEN,
    )
    model = T.Blip2ForConditionalGeneration(cfg).eval()
    # HF initialises some tensors to exact constants (zeros/ones); randomise every float tensor so
    # parity tests exercise each weight, then restore the structural zero of the ViT's k bias.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = "norm" in name.lower() and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if is_norm_scale else 0.0))
        dim = vision.hidden_size
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[dim : 2 * dim] = 0.0
    return model


def inputs(
    batch: int = 2,
    text_len: int = 7,
    vocab: int = 96,
    image: int = 28,
    seed: int = 1,
    avoid: int = IMAGE_TOKEN,
):
    """Random NHWC pixels, text ids (never ids < 4 nor ``avoid``), and a right-padded mask."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, image, image, 3)).astype(np.float32)
    ids = rng.integers(4, vocab, size=(batch, text_len)).astype(np.int32)
    ids = np.where(ids == avoid, 4, ids).astype(np.int32)
    mask = np.ones((batch, text_len), np.int32)
    if batch > 1:
        mask[1, text_len - 2 :] = 0
    return pixels, ids, mask


def torch_logits(model, pixels, ids, mask) -> np.ndarray:
    """Full PyTorch logits float[B, Q + T, V] with Q image placeholders before the text."""
    b = ids.shape[0]
    q = model.config.num_query_tokens
    pt_ids = torch.cat(
        [torch.full((b, q), model.config.image_token_index), torch.from_numpy(ids).long()], 1
    )
    pt_mask = torch.cat([torch.ones(b, q, dtype=torch.long), torch.from_numpy(mask).long()], 1)
    pt_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(pixel_values=pt_pixels, input_ids=pt_ids, attention_mask=pt_mask)
    return out.logits.numpy()


def check_parity(
    hf_dir: str | None = None,
    llms: tuple[str, ...] = ("opt", "llama"),
    *,
    batch: int = 2,
    text_len: int = 8,
    scan_layers: bool = False,
    tolerance: float = 1e-4,
) -> bool:
    """Compares ``vpgtrans_jax.load`` logits with ``Blip2ForConditionalGeneration`` in fp32.

    With ``hf_dir`` that directory is checked; otherwise tiny random BLIP-2s with the ``llms``
    text models are built, saved and checked. Prints one line per model; True when all pass.
    """
    jax.config.update("jax_default_matmul_precision", "highest")
    cases = []
    if hf_dir:
        pt = T.Blip2ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
        cases.append((hf_dir, pt.eval(), hf_dir))
    else:
        tmp = tempfile.mkdtemp(prefix="vpgtrans_parity_")
        for llm in llms:
            pt = tiny_blip2(llm)
            path = os.path.join(tmp, llm)
            pt.save_pretrained(path)
            cases.append((f"tiny random BLIP-2 ({llm})", pt, path))
    ok = True
    for name, pt, path in cases:
        t0 = time.perf_counter()
        model = load(path, scan_layers=scan_layers)
        t_load = time.perf_counter() - t0
        pixels, ids, mask = inputs(
            batch=batch,
            text_len=text_len,
            vocab=pt.config.text_config.vocab_size,
            image=pt.config.vision_config.image_size,
            avoid=pt.config.image_token_index,
        )
        ours = np.asarray(model(pixels, ids, mask))
        theirs = torch_logits(pt, pixels, ids, mask)[:, pt.config.num_query_tokens :]
        diff = float(np.abs(ours - theirs).max())
        passed = diff <= tolerance
        ok &= passed
        print(
            f"{name}: logits {ours.shape}, max |jax - torch| = {diff:.2e} "
            f"({'OK' if passed else 'FAIL'}), load {t_load:.1f}s"
        )
    return ok


def blip2_from_config(hf_config: dict, seed: int = 0) -> T.Blip2ForConditionalGeneration:
    """A random fp32 BLIP-2 from a ``config.json`` dict (HF's own initialisation, dropout off):
    the PyTorch side of ``scripts/bench_train.py``."""
    torch.manual_seed(seed)
    cfg = T.Blip2Config(**hf_config)
    cfg.vision_config.attention_dropout = 0.0
    cfg.qformer_config.attention_probs_dropout_prob = 0.0
    cfg.qformer_config.hidden_dropout_prob = 0.0
    for name in ("dropout", "attention_dropout"):
        if hasattr(cfg.text_config, name):
            setattr(cfg.text_config, name, 0.0)
    return T.Blip2ForConditionalGeneration(cfg).eval()
