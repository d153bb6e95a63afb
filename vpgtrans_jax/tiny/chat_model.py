"""The embedded demo chat model: ``configs/tiny_instruct.py`` trained once and cached.

``python scripts/chat.py`` and ``scripts/webui.py`` without ``--model`` talk to it, so a new user
sees the chat work offline in about a minute: the synthetic data and a tiny LLM pretrained on its
captions and chat-format conversations (both cached, shared with the other tiny runs), then
stage 3 on the synthetic instruction data (descriptions and questions about the shapes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import ml_collections

from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.tiny.chat_corpus import DIRNAME
from vpgtrans_jax.tiny.prepare import prepare
from vpgtrans_jax.train import config_base, presets
from vpgtrans_jax.train.config_base import SYNTHETIC_PLACEHOLDER
from vpgtrans_jax.train.loop import train
from vpgtrans_jax.train.workdir import flat_config

log = logging.getLogger(__name__)

CACHE_ROOT = "~/.cache/vpgtrans-jax/tiny_chat"


def tiny_instruct_config(llm_type: str = "llama") -> ml_collections.ConfigDict:
    """Stage 3 of a tiny LLaMA-style model: descriptions and questions about the synthetic
    shapes in the vicuna_v0 template, on a tiny LLM that was pretrained on that template."""
    c = config_base.base_config()
    presets.tiny(c, llm_type=llm_type)
    presets.instruct_stage(c)
    c.model.tiny_llm_corpus = "chat"
    c.model.tiny_llm_steps = 400
    c.data.sources = {
        "cc_sbu_align": presets.source(
            "cc_sbu_align", 0.3, root=f"{SYNTHETIC_PLACEHOLDER}/cc_sbu_align"
        ),
        DIRNAME: presets.source("cc_sbu_align", 0.7, root=f"{SYNTHETIC_PLACEHOLDER}/{DIRNAME}"),
    }
    c.data.max_len = 96
    c.batch_size = 16
    c.optim.init_lr = 2e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 5
    c.num_steps = 150
    c.checkpoint_every = 1000  # one checkpoint at the end: the build is short
    return c


def ensure_tiny_chat_model(root: str = CACHE_ROOT, progress: bool = True) -> str:
    """The export of ``tiny_instruct_config()`` under ``root`` (trained on first use); a config
    change gets its own directory."""
    c = tiny_instruct_config()
    key = hashlib.sha1(json.dumps(flat_config(c), sort_keys=True, default=str).encode())
    workdir = os.path.join(os.path.expanduser(root), key.hexdigest()[:12])
    export = os.path.join(workdir, "export")
    if not model_dir.is_model_dir(export):
        log.info("training the tiny chat model once (about a minute) into %s", workdir)
        train(prepare(c), workdir, progress=progress)
    return export


__all__ = ["tiny_instruct_config", "ensure_tiny_chat_model", "CACHE_ROOT"]
