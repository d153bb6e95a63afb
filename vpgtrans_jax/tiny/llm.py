"""A tiny *pretrained* frozen LLM for offline runs.

VPGTrans freezes a pretrained LLM; a randomly initialised one predicts a near-uniform distribution
whatever the soft prompt says, so nothing downstream could learn. Offline tiny runs therefore
first pretrain the tiny decoder as a plain causal LM on the synthetic captions (a few seconds on
CPU) and cache it next to the synthetic data as a model directory holding only an LLM; the stage
then loads it as its frozen LLM (``config.model.llm_init``). Real runs never use this: their LLM
comes from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.fill import flat_params
from vpgtrans_jax.data import text
from vpgtrans_jax.models.decoder import CausalLM
from vpgtrans_jax.models.parts import RUNTIME_FIELDS
from vpgtrans_jax.models.registry import LLMConfig
from vpgtrans_jax.models.vl_model import VLModel, cross_entropy
from vpgtrans_jax.tiny.chat_corpus import chat_texts
from vpgtrans_jax.train.builder import random_model_config

log = logging.getLogger(__name__)


def cache_dir(root: str, cfg: LLMConfig, steps: int, seed: int, corpus: str = "captions") -> str:
    """Where the tiny LLM of this architecture / schedule / corpus is cached under ``root``."""
    arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    facts = {"arch": arch, "type": type(cfg).__name__, "steps": steps, "seed": seed}
    if corpus != "captions":  # the captions-only LLMs keep the key they were cached under
        facts["corpus"] = corpus
    key = json.dumps(
        facts,
        sort_keys=True,
        default=str,
    )
    return os.path.join(root, "tiny_llm", hashlib.sha1(key.encode()).hexdigest()[:12])


def pretrain_llm(
    llm: CausalLM,
    captions: list[str],
    tokenizer_dir: str,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    max_len: int = 32,
    lr: float = 3e-3,
) -> float:
    """Trains ``llm`` in place as a causal LM on ``captions``; returns the final loss."""
    tok = text.load_tokenizer(tokenizer_dir)
    batch = text.train_batch(tok, captions, max_len)
    ids, mask, labels = (np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
    graphdef, params = nnx.split(llm, nnx.Param)
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps, 0.1), weight_decay=0.0)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, ids, mask, labels):
        def loss_fn(p):
            logits, _ = nnx.merge(graphdef, p)(ids, mask)
            # Next-token prediction inside the text: logits[t] predicts labels[t + 1].
            return cross_entropy(logits[:, :-1], labels[:, 1:])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    loss = jnp.zeros(())
    for _ in range(steps):
        idx = rng.integers(0, len(ids), size=batch_size)
        params, opt_state, loss = step(params, opt_state, ids[idx], mask[idx], labels[idx])
    nnx.update(llm, params)
    return float(loss)


def ensure_tiny_llm(c: ml_collections.ConfigDict, synthetic_dir: str, tokenizer_dir: str) -> str:
    """The cached pretrained LLM of a random-init tiny stage config ``c`` (pretrained and cached
    on first use); returns its model directory, for ``config.model.llm_init``."""
    model = VLModel(random_model_config(c), rngs=nnx.Rngs(params=jax.random.key(c.seed)))
    steps = c.model.tiny_llm_steps
    corpus = c.model.tiny_llm_corpus
    out = cache_dir(synthetic_dir, model.config.llm, steps, c.seed, corpus)
    if model_dir.is_model_dir(out):
        return out
    with open(os.path.join(synthetic_dir, "annotations", "caption_train.json")) as f:
        texts = [e["caption"] for e in json.load(f)]
    max_len = 32
    if corpus == "chat":  # conversations are longer: as long as the chat's context allows
        texts += chat_texts(synthetic_dir, c.seed)
        max_len = min(128, c.model.arch.llm.get("max_position_embeddings", 128))
    loss = pretrain_llm(model.llm, texts, tokenizer_dir, steps=steps, seed=c.seed, max_len=max_len)
    log.info("pretrained the tiny LLM for %d steps (final LM loss %.3f)", steps, loss)
    flat = {f"llm.{k}": v for k, v in flat_params(model.llm).items()}

    def write(w: model_dir.PartWriter) -> None:
        for k, v in flat.items():
            w.emit(k, v)

    try:
        model_dir.write_model_dir(
            out, model_dir.ModelSpec.llm_only(model.config.llm), write,
            info={"kind": "tiny pretrained LLM", "steps": steps, "corpus": corpus,
                  "final_loss": loss},
            created_by="vpgtrans_jax.tiny.llm",
        )  # fmt: skip
    except FileExistsError:
        if not model_dir.is_model_dir(out):  # not another process's identical copy
            raise
    return out
