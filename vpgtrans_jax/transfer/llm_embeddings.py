"""Input word embeddings of a Hugging Face LLM directory, read lazily from its safetensors.

Two spaces matter for VPGTrans:

- the **prompt space**: where token embeddings and our soft prompt live (``embed_tokens`` rows,
  width ``input_embed_dim``); the VL model's projector writes here.
- the **feature space**: what the first decoder layer receives from a token. It equals the prompt
  space except for OPT-350m style models, whose ``project_in`` (no bias) maps
  ``word_embed_proj_dim`` to ``hidden_size``. The original VPGTrans trains its converter on
  these features.

``LLMEmbeddings`` carries the prompt-space table and, where present, the ``project_in`` kernel so
callers can take either. Supported directories: OPT and LLaMA-family (``llama``, ``mistral``,
``qwen2``) causal LMs, and HF BLIP-2 directories (their ``text_config`` / ``language_model.*``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from vpgtrans_jax.checkpoint_io import CheckpointError, ShardedCheckpoint, read_json
from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig

_LLAMA_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LLMEmbeddings:
    """Token embeddings of one LLM.

    Attributes:
      path: the directory read.
      llm_type: ``"opt"`` or ``"llama"``.
      config: our ``OPTConfig`` / ``LlamaConfig`` built from the directory's config.
      table: float32[V, E] ``embed_tokens`` rows (prompt space, E = ``config.input_embed_dim``).
      project_in: float32[E, D] kernel of OPT's ``project_in`` (our [in, out] layout) or None.
    """

    path: str
    llm_type: str
    config: OPTConfig | LlamaConfig
    table: np.ndarray
    project_in: np.ndarray | None

    @property
    def vocab_size(self) -> int:
        return int(self.table.shape[0])

    @property
    def prompt_dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def feature_dim(self) -> int:
        return self.prompt_dim if self.project_in is None else int(self.project_in.shape[1])

    def features(self, ids: np.ndarray) -> np.ndarray:
        """int[N] token ids → float32[N, feature_dim]: rows after ``project_in`` where present."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"{self.path}: token ids must lie in [0, {self.vocab_size}), got range "
                f"[{ids.min()}, {ids.max()}]"
            )
        rows = self.table[ids]
        return rows if self.project_in is None else rows @ self.project_in


def llm_config_of(
    hf_config: dict[str, Any], where: str
) -> tuple[str, OPTConfig | LlamaConfig, str]:
    """(llm_type, our config, tensor key prefix) for an LLM or BLIP-2 ``config.json`` dict."""
    model_type = hf_config.get("model_type")
    prefix = ""
    if model_type in ("blip-2", "blip_2"):
        hf_config = hf_config.get("text_config") or {}
        model_type = hf_config.get("model_type", "opt")
        prefix = "language_model."
    try:
        if model_type == "opt":
            return "opt", OPTConfig.from_hf(hf_config), prefix
        if model_type in _LLAMA_TYPES:
            return "llama", LlamaConfig.from_hf(hf_config), prefix
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from e
    raise CheckpointError(
        f"{where}: model_type {model_type!r} is not supported for word embeddings; expected "
        f"'opt', one of {list(_LLAMA_TYPES)}, or a BLIP-2 directory with such a text model"
    )


def _find_one(keys: list[str], suffix: str, prefix: str, where: str) -> str | None:
    """The one key under ``prefix`` ending in ``suffix`` (None if absent), whatever the wrapper
    (``model.decoder.``, ``decoder.``, ``language_model.model.`` ...)."""
    hits = [k for k in keys if k.startswith(prefix) and k.endswith(suffix)]
    if len(hits) > 1:
        raise CheckpointError(f"{where}: several tensors end with {suffix!r}: {sorted(hits)}")
    return hits[0] if hits else None


def read_input_embeddings(path: str) -> LLMEmbeddings:
    """Reads ``embed_tokens`` (and OPT's ``project_in``) from a HF LLM or BLIP-2 directory.

    Only these tensors are read from disk (safetensors are memory-mapped), so a 7B checkpoint
    costs one vocabulary-sized table of memory.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face LLM directory)")
    config_path = os.path.join(path, "config.json")
    llm_type, cfg, prefix = llm_config_of(read_json(config_path), config_path)
    ckpt = ShardedCheckpoint(path)
    keys = list(ckpt)
    emb_key = _find_one(keys, "embed_tokens.weight", prefix, path)
    if emb_key is None:
        raise CheckpointError(
            f"{path}: no tensor ending in 'embed_tokens.weight'"
            f"{f' under {prefix!r}' if prefix else ''} (found e.g. {sorted(keys)[:8]})"
        )
    table = np.asarray(ckpt[emb_key], dtype=np.float32)
    want = (cfg.vocab_size, cfg.input_embed_dim)
    if table.shape != want:
        raise CheckpointError(
            f"{path}: {emb_key} has shape {table.shape}, config.json implies {want}"
        )
    project_in = None
    if isinstance(cfg, OPTConfig) and cfg.has_projection:
        pin_key = emb_key[: -len("embed_tokens.weight")] + "project_in.weight"
        if pin_key not in ckpt:
            raise CheckpointError(
                f"{path}: config has word_embed_proj_dim={cfg.word_embed_proj_dim} != "
                f"hidden_size={cfg.hidden_size} but tensor {pin_key!r} is missing"
            )
        # torch Linear weight is [out, in]; our kernel layout is [in, out].
        project_in = np.asarray(ckpt[pin_key], dtype=np.float32).T
    return LLMEmbeddings(path, llm_type, cfg, table, project_in)


def load_tokenizer(path: str) -> Any:
    """The directory's tokenizer via ``transformers.AutoTokenizer`` (offline)."""
    from vpgtrans_jax.data.text import load_tokenizer as _load

    try:
        return _load(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load a tokenizer from this directory ({e})") from e
