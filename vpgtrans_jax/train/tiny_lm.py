"""A tiny *pretrained* frozen LLM for offline runs.

VPGTrans freezes a pretrained LLM; a randomly initialised one predicts a near-uniform distribution
whatever the soft prompt says, so nothing downstream could learn. Offline tiny runs therefore
first pretrain the tiny decoder as a plain causal LM on the synthetic captions (a few seconds on
CPU) and cache it next to the synthetic data; the stage then loads it as its frozen LLM. Real runs
never use this: their LLM comes from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vpgtrans_jax import weights
from vpgtrans_jax.models.vl_model import LLMConfig, VLModel, cross_entropy

log = logging.getLogger(__name__)


def _cache_dir(root: str, cfg: LLMConfig, steps: int, seed: int) -> str:
    arch = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("scan_layers", "remat_policy")
    }
    key = json.dumps(
        {"arch": arch, "type": type(cfg).__name__, "steps": steps, "seed": seed},
        sort_keys=True,
        default=str,
    )
    return os.path.join(root, "tiny_llm", hashlib.sha1(key.encode()).hexdigest()[:12])


def pretrain_llm(
    model: VLModel,
    captions: list[str],
    tokenizer_dir: str,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    max_len: int = 32,
    lr: float = 3e-3,
) -> float:
    """Trains ``model.llm`` in place as a causal LM on ``captions``; returns the final loss."""
    from vpgtrans_jax.data import text

    tok = text.load_tokenizer(tokenizer_dir)
    batch = text.train_batch(tok, captions, max_len)
    ids, mask, labels = (np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
    graphdef, params = nnx.split(model.llm, nnx.Param)
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
    nnx.update(model.llm, params)
    return float(loss)


def ensure_pretrained_tiny_llm(
    model: VLModel, synthetic_dir: str, tokenizer_dir: str, *, steps: int, seed: int
) -> str:
    """Loads the cached tiny LM into ``model.llm``, or pretrains and caches it; returns its path."""
    from vpgtrans_jax.train.export import export_trained_parts, read_export

    cache = _cache_dir(synthetic_dir, model.config.llm, steps, seed)
    if not os.path.exists(os.path.join(cache, "export.json")):
        with open(os.path.join(synthetic_dir, "annotations", "caption_train.json")) as f:
            captions = [e["caption"] for e in json.load(f)]
        loss = pretrain_llm(model, captions, tokenizer_dir, steps=steps, seed=seed)
        log.info("pretrained the tiny LLM for %d steps (final LM loss %.3f)", steps, loss)
        export_trained_parts(
            {"llm": nnx.state(model.llm, nnx.Param)},
            cache,
            {"kind": "tiny pretrained LLM", "steps": steps, "final_loss": loss},
        )
    _, parts = read_export(cache)
    filled = weights.fill_abstract(model.llm, parts["llm"], source=cache)
    nnx.update(model.llm, nnx.state(filled))
    return cache
