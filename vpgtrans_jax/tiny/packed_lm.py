"""Pretraining a micro LLM as a causal language model on *packed* text.

A VL model puts the soft prompt first and the text after it, so the frozen LLM reads caption
tokens at positions ``num_query_tokens`` and later (and, with OPT's learned positions, those
positions must have been trained). Padded one-caption batches only ever train the first
positions. Here every line of the corpus becomes ``<s> line \\n`` and all lines are concatenated
into one token stream; each training row is a window of ``seq_len + 1`` tokens at a random offset,
so every position sees every kind of token, and a line often follows the lines of the same image
(its captions, then its questions and answers), as a soft prompt is followed by the question.

``ensure_llm`` trains the LLM of one side (source or target) and writes it as a Hugging Face
causal-LM directory with its tokenizer (``checkpoint.convert.llm_to_hf``), as a real transfer's
LLMs come.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.convert import llm_to_hf
from vpgtrans_jax.checkpoint.fill import flat_params
from vpgtrans_jax.data import text
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.vl_model import cross_entropy
from vpgtrans_jax.train.config_base import arch_dict


def llm_config(side: str) -> ml_collections.ConfigDict:
    """``config.tiny.micro.{src,tgt}_llm``: the smaller OPT-style source (width 64, 2 layers) or
    the larger LLaMA-style target (width 96, 3 layers), and their pretraining runs."""
    if side == "src":
        family, arch = "opt", arch_dict(
            OPTConfig, vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128,
            max_position_embeddings=128, word_embed_proj_dim=64,
        )  # fmt: skip
    elif side == "tgt":
        family, arch = "llama", arch_dict(
            LlamaConfig, vocab_size=448, hidden_size=96, num_layers=3, num_heads=4,
            num_kv_heads=2, intermediate_size=192, max_position_embeddings=128,
        )  # fmt: skip
    else:
        raise ValueError(f"side must be 'src' or 'tgt', got {side!r}")
    return ml_collections.ConfigDict(
        {
            "type": family,
            "arch": arch,
            "steps": 400,
            "batch_size": 16,
            "seq_len": 96,
            "lr": 3e-3,
            "warmup_steps": 50,
            "seed": 0,
        }
    )


def token_stream(tokenizer: Any, corpus: list[list[str]], seed: int) -> np.ndarray:
    """``<s> line \\n`` for every line, image blocks in a seeded random order: int32[N]."""
    order = np.random.default_rng(seed).permutation(len(corpus))
    ids: list[int] = []
    for b in order:
        for line in corpus[b]:
            ids += list(tokenizer(line + "\n", add_special_tokens=True)["input_ids"])
    return np.asarray(ids, np.int32)


def pretrain_packed(
    llm: nnx.Module, stream: np.ndarray, lc: ml_collections.ConfigDict
) -> dict[str, Any]:
    """Trains ``llm`` in place on random windows of ``stream``; returns the loss curve."""
    graphdef, params = nnx.split(llm, nnx.Param)
    steps = int(lc.steps)
    warmup = min(lc.warmup_steps, max(steps - 1, 0))  # a short run keeps one decay step
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lc.lr, warmup, max(steps, warmup + 1), lc.lr * 0.05
    )
    tx = optax.adamw(sched, weight_decay=0.0)
    opt_state = tx.init(params)
    n = int(lc.seq_len)
    if len(stream) < n + 2:
        raise ValueError(f"the LM corpus has {len(stream)} tokens, fewer than seq_len={n} + 2")

    @jax.jit
    def step(params, opt_state, rows):
        def loss_fn(p):
            ids = rows[:, :-1]
            logits, _ = nnx.merge(graphdef, p)(ids, jnp.ones_like(ids))
            return cross_entropy(logits, rows[:, 1:])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(lc.seed)
    windows = np.arange(n + 1)[None, :]
    curve = []
    for i in range(steps):
        starts = rng.integers(0, len(stream) - n - 1, size=lc.batch_size)[:, None]
        params, opt_state, loss = step(params, opt_state, stream[starts + windows])
        if (i + 1) % max(1, steps // 10) == 0 or i + 1 == steps:
            curve.append([i + 1, float(loss)])
    nnx.update(llm, params)
    return {
        "loss_curve": curve,
        "final_loss": curve[-1][1],
        "tokens_seen": steps * lc.batch_size * n,
    }


def ensure_llm(
    out: str, lc: ml_collections.ConfigDict, tokenizer_dir: str, corpus: list[list[str]]
) -> dict[str, Any]:
    """The pretrained LLM of ``lc`` as a HF directory ``out`` (built on first use); its facts
    (``out/pretraining.json``)."""
    facts_path = os.path.join(out, "pretraining.json")
    if os.path.isfile(facts_path):
        with open(facts_path) as f:
            return json.load(f)
    t0, c0 = time.time(), time.process_time()
    family = registry.family(lc.type)
    cfg = family.config_cls(**lc.arch.to_dict())
    llm = family.model_cls(cfg, rngs=nnx.Rngs(params=jax.random.key(lc.seed)))
    tok = text.load_tokenizer(tokenizer_dir)
    if len(tok) > cfg.vocab_size:
        raise ValueError(
            f"the {lc.type} LLM has vocab_size={cfg.vocab_size} but its tokenizer "
            f"{tokenizer_dir} has {len(tok)} tokens"
        )
    stream = token_stream(tok, corpus, lc.seed)
    facts = pretrain_packed(llm, stream, lc)
    flat = {f"llm.{k}": v for k, v in flat_params(llm).items()}
    staging = out + ".model"
    shutil.rmtree(staging, ignore_errors=True)

    def write(w: model_dir.PartWriter) -> None:
        for k, v in flat.items():
            w.emit(k, v)

    model_dir.write_model_dir(
        staging, model_dir.ModelSpec.llm_only(cfg), write,
        info={"kind": "micro pretrained LLM", **facts}, created_by="vpgtrans_jax.tiny.packed_lm",
    )  # fmt: skip
    llm_to_hf(staging, out, tokenizer_dir=tokenizer_dir, overwrite=True)
    shutil.rmtree(staging, ignore_errors=True)
    facts.update(
        settings=json.loads(json.dumps(lc.to_dict())),
        type=lc.type,
        params=int(sum(np.prod(v.shape) for v in flat.values())),
        stream_tokens=len(stream),
        wall_time_s=time.time() - t0,
        cpu_time_s=time.process_time() - c0,
    )
    with open(facts_path, "w") as f:
        json.dump(facts, f, indent=1)
    return facts
